"""Extractive QA through `dvc repro` in a temp repo: tiny models from config on a few real SQuAD
paragraphs, every stage, and a report whose QA tables are the metrics JSON's figures, which are
the official scores of the predicted answers."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from attnkd.tasks.squad.reading import exact_match, f1
from conftest import repro_copy, sh, shared_data, tiny_params

SQUAD = shared_data("squad_v1.1/dev-v1.1.json.zip") / "squad_v1.1"


def excerpt(path: Path, articles: int, paragraphs: int) -> dict:
    """The first `paragraphs` paragraphs of the first `articles` articles of a real SQuAD file."""
    with zipfile.ZipFile(path) as z:
        doc = json.loads(z.read(z.namelist()[0]))
    return {"version": doc.get("version", "1.1"), "data": [a | {"paragraphs": a["paragraphs"][:paragraphs]} for a in doc["data"][:articles]]}


@pytest.fixture(scope="module")
def qa_repo(tmp_path_factory, tiny_model_dir):
    params = tiny_params(tiny_model_dir, methods={"ce": {"ce": 1.0}, "kd_at": {"ce": 0.5, "kd": 0.5, "attn_kl": 1.0}})
    params["task"] = "squad"
    params["data"] |= {"source": "files", "dir": "data/squad", "splits": {"train": "train.json", "validation": "", "test": "dev.json"},
                       "max_length": 64, "doc_stride": 16, "test_questions": 8, "validation_questions": 8, "train_questions": 40}
    params["evaluate"]["agreement_examples"] = 6
    params["extract"]["max_gb"] = 1e-9  # 1 byte: the attention kd_at reads is left to the teacher in distill
    files = {"data/squad/train.json": json.dumps(excerpt(SQUAD / "train-v1.1-prefix.json.zip", 2, 3)),
             "data/squad/dev.json": json.dumps(excerpt(SQUAD / "dev-v1.1.json.zip", 4, 2))}
    return repro_copy(tmp_path_factory.mktemp("qa") / "repo", params, files)


def test_every_stage_runs_and_nothing_is_left_stale(qa_repo):
    root, env, log = qa_repo
    for stage in ("prepare", "teacher", "plan", "extract", "distill@small-kd_at-2", "evaluate", "report"):
        assert f"'{stage}'" in log, stage
    assert "Data and pipelines are up to date" in sh(["dvc", "status"], root, env)
    data = json.loads((root / "reports/data.json").read_text())
    assert data["splits"]["train"]["questions"] == 40 and data["splits"]["test"]["questions"] >= 8
    assert data["splits"]["train"]["questions_with_several_windows"] > 0  # 64-token windows over real paragraphs
    assert not set(data["splits"]["test"]["article_titles"]) & set(data["splits"]["validation"]["article_titles"])
    manifest = json.loads((root / "data/signals/manifest.json").read_text())
    assert manifest["tensors"] == {} and manifest["online"] == {"attn": [2]}  # over the store's budget: left to distill
    assert "computed by the teacher on every distill batch: attn of layers [2]" in (root / "reports/report.md").read_text()
    assert "attn" in (root / "reports/curves/small-kd_at-s1.tsv").read_text()  # the attention term was trained on


def test_the_metrics_are_the_official_scores_of_the_predicted_answers(qa_repo):
    root, _, _ = qa_repo
    for name in ("teacher", "small-ce-s1", "small-kd_at-s2"):
        metrics = json.loads((root / f"reports/metrics/{name}.json").read_text())
        frame = pd.read_csv(root / f"reports/predictions/{name}.csv", keep_default_na=False)
        golds = [json.loads(g) for g in frame["gold"]]
        assert len(frame) == metrics["questions"] == len(set(frame["id"]))
        assert metrics["f1"] == pytest.approx(np.mean([f1(p, g) for p, g in zip(frame["predicted"], golds)]), abs=1e-6)
        assert metrics["exact_match"] == pytest.approx(np.mean([exact_match(p, g) for p, g in zip(frame["predicted"], golds)]), abs=1e-6)
        assert metrics["latency_ms"] > 0 and (name == "teacher" or set(metrics["attention_js"]) == {"t2-s1"})


def cells(markdown: str, heading: str) -> dict[str, list[str]]:
    """The rows of the first table under a `## heading`, by their first cell."""
    section = markdown.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("|") and not re.match(r"^\|[:\-| ]+\|$", line)]
    return {r[0]: r[1:] for r in rows[1:]} | {"_header": rows[0][1:]}


def test_the_reports_qa_tables_equal_the_metrics_json(qa_repo):
    root, _, _ = qa_repo
    report = (root / "reports/report.md").read_text()
    table = cells(report, "Quality on the test split")
    assert table["_header"][:3] == ["seeds", "EM", "F1"]
    metric = {n: json.loads((root / f"reports/metrics/{n}.json").read_text()) for n in ("teacher", "small-ce-s1", "small-ce-s2", "small-kd_at-s1", "small-kd_at-s2")}
    assert table["teacher"][1:3] == [f"{metric['teacher']['exact_match']:.3f}", f"{metric['teacher']['f1']:.3f}"]
    for method in ("ce", "kd_at"):
        values = [metric[f"small-{method}-s{s}"]["f1"] for s in (1, 2)]
        assert table[method][2] == f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"
    headline = json.loads((root / "reports/headline.json").read_text())
    assert headline["kd_at"]["f1"] == pytest.approx(np.mean([metric[f"small-kd_at-s{s}"]["f1"] for s in (1, 2)]), abs=1e-4)
    assert headline["teacher"] == {"em": round(metric["teacher"]["exact_match"], 4), "f1": round(metric["teacher"]["f1"], 4)}
    assert {"delta", "p"} <= set(headline["kd_at"])  # Δ F1 vs ce and its p
    assert table["kd_at"][4].startswith(f"{headline['kd_at']['delta']:+.1f} [")
    examples = cells(report, "Example predictions")
    assert examples["_header"] == ["gold", "teacher", "ce", "kd_at"]
    first = pd.read_csv(root / "reports/predictions/small-kd_at-s1.csv", keep_default_na=False).iloc[0]
    assert examples[first["question"].replace("|", "\\|").strip()][3] == first["predicted"].replace("|", "\\|").strip()
    assert "not the official dev set" in report and "F1 per seed" in report
    assert "attention rows over the first 6 test examples" in report
    assert (root / "reports/figures/curves.png").is_file() and list((root / "reports/figures").glob("attention_*.png"))
