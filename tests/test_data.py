import numpy as np
import pandas as pd
import pytest

from attnkd import data, sources
from attnkd.errors import UserError


def test_bbc_news_reads_five_topics_with_original_label_names():
    raw = sources.read_bbc_news(sources.bbc_news_dir(), "utf8_or_cp1252")["train"]
    df = raw.frame
    assert len(df) == 2225
    assert sorted(df["label"].unique()) == ["business", "entertainment", "politics", "sport", "tech"]
    assert len(raw.decoded_as_cp1252) == 1
    assert "£" in df.loc[df["row"] == raw.decoded_as_cp1252[0], "text"].item()


def test_strict_decoding_names_the_file():
    with pytest.raises(UserError, match=r"sports/199.txt: not valid UTF-8 at byte 257"):
        sources.read_bbc_news(sources.bbc_news_dir(), "strict")


def test_clean_drops_empty_unlabelled_and_duplicate_rows():
    df = pd.DataFrame({"text": ["a  b", "a b", "   ", "c", "d", "a b"], "text_pair": ["", "", "", "", "", "x"], "label": ["x", "x", "y", "y", " ", "y"], "row": range(1, 7)})
    out, stats = data.clean(df, pair=False)
    assert out["text"].tolist() == ["a b", "c", "a b"]  # the last differs by its pair text
    assert stats == {"rows_read": 6, "dropped_empty_text": 1, "dropped_missing_label": 1, "dropped_duplicates": 1}


def test_label_maps_keep_integer_ids_with_names_and_sort_strings():
    assert data.label_names_for(pd.Series(["1", "0", "1"]), ["neg", "pos"], None) == (["neg", "pos"], {"0": 0, "1": 1})
    assert data.label_names_for(pd.Series(["5", "10", "7"]), [], None) == (["5", "7", "10"], {"5": 0, "7": 1, "10": 2})
    assert data.label_names_for(pd.Series(["b", "a"]), [], None) == (["a", "b"], {"a": 0, "b": 1})
    assert data.label_names_for(pd.Series(["b", "a"]), ["b", "a"], None)[1] == {"b": 0, "a": 1}
    with pytest.raises(UserError, match=r"data.label_names: 2 names, but the training data has integer label 2"):
        data.label_names_for(pd.Series(["0", "2"]), ["neg", "pos"], None)


def test_carving_fills_only_the_missing_splits():
    df = pd.DataFrame({"text": [f"t{i}" for i in range(100)], "text_pair": "", "label": [i % 2 for i in range(100)]})
    given_test = df.iloc[:10]
    out = data.complete_splits({"train": df.iloc[10:], "test": given_test}, 0.1, 0.2, 0, "x")
    assert out["test"].equals(given_test.reset_index(drop=True))
    assert (len(out["train"]), len(out["validation"])) == (81, 9)


def test_split_is_stratified_disjoint_and_fixed_by_seed():
    df = pd.DataFrame({"text": [f"t{i}" for i in range(200)], "label": [i % 4 for i in range(200)]})
    a = data.complete_splits({"train": df}, 0.1, 0.2, 1, "x")
    b = data.complete_splits({"train": df}, 0.1, 0.2, 1, "x")
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
