import numpy as np
import pandas as pd
import pytest

from attnkd import data
from attnkd.errors import UserError


def test_bbc_news_reads_five_topics_with_original_label_names():
    df, stats = data.read_bbc_news(data.bbc_news_dir(), "utf8_or_cp1252")
    assert stats["files_read"] == 2225
    assert sorted(df["label_name"].unique()) == ["business", "entertainment", "politics", "sport", "tech"]
    assert stats["decoded_as_cp1252"] == ["sports/199.txt"]
    text = df.loc[df["source"] == "sports/199.txt", "text"].item()
    assert "£" in text


def test_strict_decoding_names_the_file():
    with pytest.raises(UserError, match=r"sports/199.txt: not valid UTF-8 at byte 257"):
        data.read_bbc_news(data.bbc_news_dir(), "strict")


def test_clean_drops_empty_and_duplicate_texts():
    df = pd.DataFrame({"text": ["a  b", "a b", "   ", "c"], "label_name": ["x", "x", "y", "y"]})
    out, stats = data.clean(df)
    assert out["text"].tolist() == ["a b", "c"]
    assert stats == {"dropped_empty": 1, "dropped_duplicates": 1}


def test_split_is_stratified_disjoint_and_fixed_by_seed():
    df = pd.DataFrame({"text": [f"t{i}" for i in range(200)], "label": [i % 4 for i in range(200)]})
    a = data.stratified_split(df, 0.1, 0.2, seed=1)
    b = data.stratified_split(df, 0.1, 0.2, seed=1)
    assert {k: len(v) for k, v in a.items()} == {"train": 140, "validation": 20, "test": 40}
    assert all(a[k].equals(b[k]) for k in a)
    assert a["test"]["label"].value_counts().tolist() == [10, 10, 10, 10]
    assert not set(a["train"]["text"]) & set(a["test"]["text"])


def test_length_batches_cover_every_index_once_and_cut_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 100, size=500)
    bucketed = data.length_batches(lengths, 16, np.random.default_rng(1))
    assert sorted(np.concatenate(bucketed).tolist()) == list(range(500))
    shuffled = np.random.default_rng(1).permutation(500)
    plain = [shuffled[i : i + 16] for i in range(0, 500, 16)]
    assert data.padded_fraction(lengths, bucketed) < data.padded_fraction(lengths, plain) / 3


def test_collate_pads_and_masks():
    split = data.Split([[101, 7, 102], [101, 102]], np.array([1, 0]))
    b = data.collate(split, np.array([0, 1]), pad_id=0)
    assert b["input_ids"].tolist() == [[101, 7, 102], [101, 102, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert b["labels"].tolist() == [1, 0]
