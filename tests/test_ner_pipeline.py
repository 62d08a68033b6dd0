"""Named-entity recognition through `dvc repro` in a temp repo: tiny models from config on the first
real CoNLL-2003 sentences, a transformer and a BiLSTM-tagger student, every stage, and a report
whose tables are the metrics JSON's figures, which are conlleval's scores of the written tags."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from attnkd.tasks.ner.conll import entities, f1_of, span_counts
from conftest import repro_copy, sh, shared_data, tiny_params

CONLL = shared_data("conll2003/train.txt") / "conll2003"
METHODS = {"ce": {"ce": 1.0}, "kd_hid": {"ce": 0.5, "kd": 0.5, "hidden_mse": 1.0}}  # KD alone: tests/test_ner.py


def first_lines(path, sentences: int) -> str:
    """The file up to the end of its `sentences`-th sentence (its DOCSTART lines kept)."""
    out, seen = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        out.append(line)
        if not line.strip() and out[-2:-1] and out[-2].strip() and not out[-2].startswith("-DOCSTART-"):
            seen += 1
            if seen == sentences:
                break
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def ner_repo(tmp_path_factory, tiny_model_dir):
    params = tiny_params(tiny_model_dir, methods=METHODS)
    params["task"] = "ner"
    params["data"] |= {"source": "files", "dir": "data/conll", "splits": {"train": "train.txt", "validation": "valid.txt", "test": "test.txt"},
                       "max_length": 24}
    params["students"]["tagger"] = {"family": "lstm", "num_layers": 1, "hidden_size": 16, "embedding_size": 32, "init": "embeddings",
                                    "train_embeddings": True, "hidden_dropout": 0.1}
    params["distill"] |= {"students": ["small", "tagger"]}
    params["evaluate"]["agreement_examples"] = 6
    params["report"] |= {"heatmap_examples": 1}
    files = {f"data/conll/{name}.txt": first_lines(CONLL / f"{name}.txt", n) for name, n in (("train", 120), ("valid", 30), ("test", 40))}
    return repro_copy(tmp_path_factory.mktemp("ner") / "repo", params, files)


def test_every_stage_runs_and_nothing_is_left_stale(ner_repo):
    root, env, log = ner_repo
    for stage in ("prepare", "teacher", "plan", "extract", "distill@small-kd_hid-2", "distill@tagger-kd_hid-1", "evaluate", "report"):
        assert f"'{stage}'" in log, stage
    assert "Data and pipelines are up to date" in sh(["dvc", "status"], root, env)
    report = json.loads((root / "reports/data.json").read_text())
    assert [report["splits"][s]["sentences"] for s in ("train", "validation", "test")] == [120, 30, 40]
    assert report["splits"]["train"]["sentences_in_several_windows"] > 0  # 24-position windows over real sentences
    manifest = json.loads((root / "data/signals/manifest.json").read_text())
    assert manifest["token_classes"] == ["logits"] and manifest["tensors"] == {"hidden": [2]}
    assert "hidden_mse" in (root / "reports/curves/tagger-kd_hid-s1.tsv").read_text()  # the tagger's states learned the teacher's


def test_the_metrics_are_conllevals_scores_of_the_written_tags(ner_repo):
    root, _, _ = ner_repo
    test = (CONLL / "test.txt").read_text(encoding="utf-8")
    for name in ("teacher", "small-ce-s1", "tagger-kd_hid-s2"):
        metrics = json.loads((root / f"reports/metrics/{name}.json").read_text())
        frame = pd.read_csv(root / f"reports/predictions/{name}.csv", keep_default_na=False)
        gold, predicted = frame["gold"].str.split().tolist(), frame["predicted"].str.split().tolist()
        assert len(frame) == metrics["sentences"] == 40 and all(len(g) == len(p) for g, p in zip(gold, predicted))
        assert frame["words"].iloc[0] in test.replace("\n", " ") or frame["words"].iloc[0].split()[0] in test
        counts = np.array([span_counts(g, p) for g, p in zip(gold, predicted)]).sum(0)
        assert metrics["f1"] == pytest.approx(float(f1_of(counts)), abs=1e-6)
        assert metrics["entities"] == sum(len(entities(g)) for g in gold)
        from seqeval.metrics import f1_score

        assert metrics["f1"] == pytest.approx(f1_score(gold, predicted), abs=1e-6)
        assert ("attention_js" in metrics) == name.startswith("small")  # a BiLSTM tagger has no attention


def test_the_reports_tables_equal_the_metrics_json(ner_repo):
    from test_squad_pipeline import cells

    root, _, _ = ner_repo
    report = (root / "reports/report.md").read_text()
    table = cells(report, "Quality on the test split")
    assert table["_header"][:5] == ["seeds", "entity F1", "P", "R", "token acc"]
    metric = {f"{s}-{m}-s{k}": json.loads((root / f"reports/metrics/{s}-{m}-s{k}.json").read_text()) for s in ("small", "tagger") for m in METHODS for k in (1, 2)}
    for student in ("small", "tagger"):
        for method in METHODS:
            values = [metric[f"{student}-{method}-s{k}"]["f1"] for k in (1, 2)]
            assert table[f"{student} {method}"][1] == f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"
    headline = json.loads((root / "reports/headline.json").read_text())
    assert table["tagger kd_hid"][6].startswith(f"{headline['tagger kd_hid']['delta']:+.1f} [")
    per_type = cells(report, "Per entity type (F1, mean over seeds; precision and recall per type are in reports/metrics/)")
    assert per_type["_header"] == ["LOC", "MISC", "ORG", "PER"]
    teacher = json.loads((root / "reports/metrics/teacher.json").read_text())
    assert per_type["teacher"] == [f"{teacher['per_class'][t]['f1']:.3f}" for t in ("LOC", "MISC", "ORG", "PER")]
    examples = cells(report, "Example predictions")
    assert examples["_header"] == ["teacher", *(f"{s} {m}" for s in ("small", "tagger") for m in METHODS)]
    assert all(g.count("[") >= 3 for g in examples if g != "_header")  # the gold column: sentences of three entities or more, bracketed
    assert "test: data/conll/test.txt" in report and "validation: data/conll/valid.txt" in report
    assert list((root / "reports/figures").glob("attention_*.png"))
