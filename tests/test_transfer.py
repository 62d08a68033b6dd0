"""Few labels and the transfer set: augmentation rules on real sentences, and the chain that labels
unlabelled rows with the teacher and trains students on them (hard labels on gold rows only)."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml

from attnkd import augment, data
from attnkd.models import load_tokenizer, resolve_init
from attnkd.params import AugmentParams, PACKAGED_MODEL
from conftest import REPO, run_pipeline, shared_data, tiny_params


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    """The first 400 SST-2 training phrases of 4 or more words (real text, lower-cased by GLUE)."""
    frame = pd.read_csv(shared_data("sst2/train.tsv") / "sst2/train.tsv", sep="\t", quoting=3)
    return [s.strip() for s in frame["sentence"] if len(s.split()) >= 4][:400]


@pytest.fixture(scope="module")
def teacher_words():
    from safetensors.torch import load_file

    init = resolve_init(PACKAGED_MODEL)
    table = next(v for k, v in load_file(str(init / "model.safetensors")).items() if k.endswith("word_embeddings.weight"))
    return load_tokenizer(init), table


def test_augmentation_is_fixed_by_the_seed(sentences):
    ap = AugmentParams(copies=2)
    subs = {"film": "movie", "movie": "film"}
    a, b, c = (augment.transfer_texts(sentences[:50], None, ap, seed, subs)[0] for seed in (1, 1, 2))
    assert a == b and a != c


def test_each_rule_keeps_its_rate_on_real_sentences(sentences, teacher_words):
    tokenizer, table = teacher_words
    subs = augment.neighbours(tokenizer, table, sentences)
    assert len(subs) > 500 and all(w != n and n.isalpha() for w, n in subs.items())
    words = [w for s in sentences for w in s.split()]
    covered = np.mean([w.lower() in subs for w in words])  # only these can be substituted
    ap = AugmentParams(copies=3, mask_p=0.2, substitute_p=0.3, ngram_p=0.0)
    out, _, source, counts = augment.transfer_texts(sentences, None, ap, 0, subs)
    masked = substituted = total = 0
    for text, i in zip(out, source):
        for new, old in zip(text.split(), sentences[i].split()):  # no n-gram cut: word for word
            total += 1
            masked += new == augment.MASK
            substituted += new not in (old, augment.MASK)
    assert masked / total == pytest.approx(0.2, abs=0.02)
    assert substituted / total == pytest.approx(0.3 * covered, abs=0.02)
    assert counts.masked / counts.words == pytest.approx(0.2, abs=0.02)
    cut = augment.transfer_texts(sentences, None, AugmentParams(copies=3, mask_p=0.0, substitute_p=0.0, ngram_p=0.5, ngram_max=3), 0, {})
    assert cut[3].ngrams / cut[3].variants == pytest.approx(0.5, abs=0.04)
    for text, i in zip(cut[0], cut[2]):  # a variant is its source or a contiguous n-gram of it
        assert len(text.split()) <= 3 and f" {text} " in f" {sentences[i]} "


def test_the_nearest_neighbour_is_the_closest_other_whole_word(teacher_words):
    import torch

    tokenizer, table = teacher_words
    subs = augment.neighbours(tokenizer, table, ["The film was good"])
    words, ids = augment.whole_words(tokenizer)
    for word in ("film", "good"):
        vec = table[tokenizer.convert_tokens_to_ids(word)]
        sims = torch.nn.functional.cosine_similarity(table[torch.from_numpy(ids)], vec[None], dim=-1)
        sims[words.index(word)] = -2
        assert subs[word] == words[int(sims.argmax())]
    assert "was" in subs and "The" not in subs and "the" in subs  # keyed lower-case, like the uncased vocabulary


def test_few_labels_keep_a_share_of_each_class():
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(40)], "label": [0] * 30 + [1] * 10})
    kept = data.keep_labels(frame, 0.1, seed=3)
    assert (kept["label"] == 0).sum() == 3 and (kept["label"] == 1).sum() == 1 and (kept["label"] == data.UNLABELLED).sum() == 36
    assert kept["text"].tolist() == frame["text"].tolist()
    assert data.keep_labels(frame, 0.1, seed=3).equals(kept) and not data.keep_labels(frame, 0.1, seed=4).equals(kept)


# ---- the chain with few labels and a transfer set --------------------------------------------


@pytest.fixture(scope="module")
def few(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("few-labels")
    doc = tiny_params(tiny_model_dir, methods={"ce": {"ce": 1.0}, "kd": {"ce": 0.5, "kd": 0.5}})
    doc["data"]["labelled_fraction"] = 0.25
    doc["augment"] = doc["augment"] | {"copies": 2}
    doc["distill"]["gold_steps"] = "matched"
    doc["student_seeds"] = [1]
    (root / "params.yaml").write_text(yaml.safe_dump(doc))
    run_pipeline(root, root / "params.yaml")
    return root


def test_few_labels_and_the_transfer_set_reach_every_stage(few):
    train = data.load_split(few / "prepared", "train")
    gold = int(train.labelled.sum())
    assert 0 < gold < len(train) / 3
    report = json.loads((few / "data.json").read_text())["splits"]["train"]
    assert report["unlabelled"] == len(train) - gold and sum(report["class_counts"].values()) == gold
    meta = json.loads((few / "transfer/transfer.json").read_text())
    rows = data.load_training(few / "prepared", few / "transfer")
    assert meta["rows"] == len(rows) - len(train) > len(train)  # about 2 variants per text
    assert np.all(rows.labels[len(train):] == data.UNLABELLED)  # no gold label reaches a transfer row
    assert json.loads((few / "models/teacher/attnkd.json").read_text())["examples"] == {"labelled": gold, "unlabelled": 0}
    assert json.loads((few / "signals/manifest.json").read_text())["num_examples"] == len(rows)  # the teacher labelled every row
    seen = {m: json.loads((few / f"students/small-{m}-s1/attnkd.json").read_text())["examples"] for m in ("ce", "kd")}
    # ce reads no teacher: gold rows only, for as many batches as kd takes over every row (gold_steps: matched)
    epochs = math.ceil(math.ceil(len(rows) / 8) / math.ceil(gold / 8))  # batch_size 8
    assert epochs > 1
    assert seen["ce"] == {"labelled": gold, "unlabelled": 0, "epochs": epochs}
    assert seen["kd"] == {"labelled": gold, "unlabelled": len(rows) - gold, "epochs": 1}
    curves = {m: pd.read_csv(few / f"curves/small-{m}-s1.tsv", sep="\t") for m in ("ce", "kd")}
    assert len(curves["ce"]) == epochs and len(curves["kd"]) == 1
    text = (few / "report.md").read_text()
    assert "25% of the training rows keep their gold label" in text and "a transfer set of 2 variant(s) per training text" in text
    assert f"ce {gold:,} + 0 x {epochs} epochs; kd {gold:,} + {len(rows) - gold:,} x 1 epoch" in text


def test_an_unlabelled_text_file_joins_the_training_split(tmp_path, tiny_model_dir):
    from test_sources import glue_slice, params_with, prepare, read

    src = glue_slice(tmp_path, "sst2", 60)
    train_texts = [line.split("\t")[0] for line in (src / "train.tsv").read_text().splitlines()[1:]]
    (src / "unlabelled.txt").write_text(f"a fresh  unlabelled review\n\n{train_texts[3]}\nanother one\nanother one\n")
    profile = yaml.safe_load((REPO / "profiles/sst2.yaml").read_text())["data"]
    doc = params_with(tiny_model_dir, profile | {"dir": str(src), "val_fraction": 0.2, "unlabelled": "unlabelled.txt"})
    rc, prepared = prepare(tmp_path, doc)
    assert rc == 0
    train = read(prepared, "train")
    extra = train[train["label"] == data.UNLABELLED]
    assert extra["text"].tolist() == ["a fresh unlabelled review", "another one"]  # squashed; a training text and a repeat dropped
    note = json.loads((tmp_path / "data.json").read_text())["unlabelled_file"]
    assert (note["lines"], note["added"], note["dropped_seen_or_repeated"]) == (4, 2, 2)
    (src / "unlabelled.txt").unlink()
    (tmp_path / "again").mkdir()
    assert prepare(tmp_path / "again", doc)[0] == 2  # a missing file stops prepare with one line
