"""Task translation through `dvc repro` in a temp repo: tiny encoder-decoders from config on a few
hundred real Multi30k pairs, every stage, and a report whose tables are the metrics JSON's
figures, which are sacreBLEU's scores of the written translations."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from attnkd.tasks.translation.text import read_lines, score
from conftest import repro_copy, sh, shared_data
from test_translation_stages import METHODS, RAW, SIZES, translation_params

PIPELINE_METHODS = ("ce", "seq_kd_at")


@pytest.fixture(scope="module")
def mt_repo(tmp_path_factory):
    raw = shared_data(f"{RAW}/val.en.gz") / RAW
    files = {f"data/mt/{stem}.{lang}": "\n".join(read_lines(raw / f"{stem}.{lang}.gz")[:n]) + "\n" for stem, n in SIZES.items() for lang in ("en", "de")}
    params = translation_params("data/mt")
    params["methods"] = {m: METHODS[m] for m in PIPELINE_METHODS}  # all four: test_translation_stages.py
    params["student_seeds"] = [1, 2]
    params["evaluate"] |= {"beam": 2, "latency_examples": 2, "latency_repeats": 1, "throughput_examples": 8, "agreement_examples": 10, "batch_size": 20}
    params["report"] |= {"bootstrap_samples": 200, "heatmap_examples": 1}
    return repro_copy(tmp_path_factory.mktemp("mt") / "repo", params, files)


def test_every_stage_runs_and_nothing_is_left_stale(mt_repo):
    root, env, log = mt_repo
    for stage in ["prepare", "teacher", "plan", "extract", *[f"distill@small-{m}-{s}" for m in PIPELINE_METHODS for s in (1, 2)], "evaluate", "report"]:
        assert f"Running stage '{stage}'" in log
    assert "Data and pipelines are up to date" in sh(["dvc", "status"], root, env)


def test_the_metrics_are_sacrebleus_scores_of_the_written_translations(mt_repo):
    root, _, _ = mt_repo
    for name in ("teacher", "small-seq_kd_at-s1"):
        metrics = json.loads((root / f"reports/metrics/{name}.json").read_text())
        frame = pd.read_csv(root / f"reports/predictions/{name}.csv", keep_default_na=False)
        again = score(frame["translation"].tolist(), frame["reference"].tolist())
        assert (metrics["bleu"], metrics["chrf"]) == (pytest.approx(again.bleu, abs=1e-4), pytest.approx(again.chrf, abs=1e-4))
        assert metrics["sentences"] == 40 and "nrefs:1|case:mixed" in metrics["bleu_signature"]
        assert np.allclose(frame["chrf"], np.round(again.sentence_chrf, 4))
        assert ("attention_js" not in metrics) if name == "teacher" else set(metrics["attention_js"]) == {"t2-s1"}
    assert json.loads((root / "reports/metrics/teacher.json").read_text())["latency_ms"] > 0


def test_the_scored_translations_are_beam_searchs_of_evaluate_beam(mt_repo):
    """evaluate.beam 2: the written translations are the saved teacher's beam-2 translations (not greedy's)."""
    from attnkd import data
    from attnkd.models import load_model
    from attnkd.tasks.translation.model import translate
    from attnkd.tasks import get_task

    root, _, _ = mt_repo
    task = get_task("translation").bind(root / "data/prepared")
    teacher = load_model(root / "data/models/teacher", task)
    sources = list(data.load_split(root / "data/prepared", "test").input_ids)
    written = pd.read_csv(root / "reports/predictions/teacher.csv", keep_default_na=False)["translation"].tolist()
    beam, greedy = ([task.tokenizer.decode(ids.tolist()) for ids in translate(teacher, sources, beam=b, batch_size=20)] for b in (2, 1))
    assert written == beam and beam != greedy
    assert "beam search translations (beam 2)" in (root / "reports/report.md").read_text()


def test_the_reports_tables_equal_the_metrics_json(mt_repo):
    root, _, _ = mt_repo
    text = (root / "reports/report.md").read_text()
    quality = text.split("## Quality on the test split")[1].split("\n## ")[0]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]] for line in quality.splitlines() if line.startswith("| ")}
    header = rows.pop("model")
    metrics = {(m, s): json.loads((root / f"reports/metrics/small-{m}-s{s}.json").read_text()) for m in PIPELINE_METHODS for s in (1, 2)}
    for method in PIPELINE_METHODS:
        for key, label in (("chrf", "chrF"), ("bleu", "BLEU")):
            assert rows[method][header.index(label)].split(" ± ")[0] == f"{np.mean([metrics[method, s][key] for s in (1, 2)]):.3f}"
    # Δ is in corpus BLEU points: the mean over seeds of each seed's BLEU difference, as the metrics JSON have them
    delta = np.mean([metrics["seq_kd_at", s]["bleu"] - metrics["ce", s]["bleu"] for s in (1, 2)])
    summary = json.loads((root / "reports/summary.json").read_text())
    assert 100 * summary["seq_kd_at"]["vs_ce"]["delta"] == pytest.approx(delta, abs=1e-4)
    assert rows["seq_kd_at"][header.index("Δ BLEU vs ce, points [95% CI]")].startswith(f"{delta:+.1f} [")
    assert "## Example predictions" in text and "cross-attention" in text
    assert "teacher: encoder-decoder trained from scratch, 1 + 2 layers" in text
    assert list((root / "reports/figures").glob("attention_*.png"))
