"""Each stage's entry script, run in-process on a tmp dir with the tiny BERT as teacher init."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from safetensors.torch import load_file

from conftest import run_pipeline, run_script, tiny_params


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_model_dir) -> Path:
    """Run the whole chain once for the module; each test then checks one stage's files."""
    root = tmp_path_factory.mktemp("stages")
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params(tiny_model_dir, methods={"ce": {"ce": 1.0}, "kd_at": {"ce": 0.5, "kd": 0.5, "attn_kl": 1.0}}, evaluate={"models": ["teacher", "ce", "kd_at"]})))
    run_pipeline(root, params)
    return root


def test_prepare_writes_three_stratified_splits_and_meta(work):
    meta = json.loads((work / "prepared/meta.json").read_text())
    assert meta["label_names"] == ["business", "entertainment", "politics", "sport", "tech"]
    sizes = {k: len(pd.read_parquet(work / f"prepared/{k}.parquet")) for k in ("train", "validation", "test")}
    assert sizes == {"train": 36, "validation": 12, "test": 12}
    test = pd.read_parquet(work / "prepared/test.parquet")
    assert sorted(test["label"].unique()) == [0, 1, 2, 3, 4]
    assert max(len(ids) for ids in test["input_ids"]) == 32
    assert all(ids[0] == 101 and ids[-1] == 102 for ids in test["input_ids"])  # [CLS] ... [SEP] kept


def test_teacher_saves_a_loadable_hf_dir_with_its_params(work):
    d = work / "models/teacher"
    assert {"config.json", "model.safetensors", "tokenizer.json", "attnkd.json"} <= {p.name for p in d.iterdir()}
    assert json.loads((d / "config.json").read_text())["id2label"]["3"] == "sport"
    assert json.loads((d / "attnkd.json").read_text())["params"]["epochs"] == 1
    assert "classifier.weight" in load_file(d / "model.safetensors")
    curve = pd.read_csv(work / "curves/teacher.tsv", sep="\t")
    assert curve.columns[0] == "epoch" and "val_accuracy" in curve and "train_ce" in curve


def test_extract_writes_the_mapped_layers_with_a_manifest(work):
    manifest = json.loads((work / "signals/manifest.json").read_text())
    assert manifest["tensors"] == {"attn": [2]}  # 1-layer student, 2-layer teacher, uniform map; only attn_kl
    assert manifest["dtype"] == "float16" and manifest["num_examples"] == 36
    assert set(manifest["files"]) == {"attn_layer2.npy", "logits.npy", "lengths.npy"}
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())


def test_distill_saves_students_that_share_init_but_not_result(work):
    ce, kd_at = load_file(work / "models/ce/model.safetensors"), load_file(work / "models/kd_at/model.safetensors")
    assert ce.keys() == kd_at.keys()
    assert any(not (ce[k] == kd_at[k]).all() for k in ce)
    record = json.loads((work / "models/kd_at/attnkd.json").read_text())
    assert record["weights"] == {"ce": 0.5, "kd": 0.5, "attn_kl": 1.0} and record["layer_pairs"] == [[2, 1]]
    curve = pd.read_csv(work / "curves/kd_at.tsv", sep="\t")
    assert {"train_ce", "train_kd", "train_attn_kl", "train_loss", "val_accuracy"} <= set(curve.columns)


def test_distill_online_mode_trains_like_the_store(work, tmp_path):
    """Same student, batches and objective; only the teacher's signals come from a live teacher."""
    doc = yaml.safe_load((work / "params.yaml").read_text())
    doc["distill"]["signals"] = "online"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(doc))
    code = run_script("distill", "--params", params, "--method", "kd_at", "--prepared", work / "prepared", "--teacher", work / "models/teacher",
                      "--signals", tmp_path / "no-store", "--out", tmp_path / "kd_at", "--metrics", tmp_path / "m.json", "--curve", tmp_path / "c.tsv")
    assert code == 0
    online, stored = pd.read_csv(tmp_path / "c.tsv", sep="\t"), pd.read_csv(work / "curves/kd_at.tsv", sep="\t")
    for col in ("train_ce", "train_kd", "train_attn_kl"):
        assert online[col].iloc[0] == pytest.approx(stored[col].iloc[0], rel=1e-2), col


def test_evaluate_writes_metrics_and_predictions(work):
    m = json.loads((work / "metrics/kd_at.json").read_text())
    for key in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc", "params", "size_mb", "latency_ms"):
        assert isinstance(m[key], (int, float)), key
    assert 0 <= m["accuracy"] <= 1 and m["latency_ms"] > 0
    assert sum(map(sum, m["confusion"]["matrix"])) == m["test_examples"] == 12
    preds = pd.read_csv(work / "predictions/kd_at.csv")
    assert list(preds.columns) == ["actual", "predicted"] and len(preds) == 12
    assert (preds["actual"] == preds["predicted"]).mean() == pytest.approx(m["accuracy"], abs=1e-6)


def test_report_has_one_row_per_model_with_the_metrics_values(work):
    text = (work / "report.md").read_text()
    lines = [line for line in text.splitlines() if line.startswith("|") and "---" not in line]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    table = {cells[0]: dict(zip(header, cells)) for cells in ([c.strip() for c in l.strip("|").split("|")] for l in lines[1:]) if len(cells) == len(header)}
    assert {"teacher", "ce", "kd_at"} <= set(table)
    for model in ("teacher", "kd_at"):
        m = json.loads((work / f"metrics/{model}.json").read_text())
        assert table[model]["accuracy"] == f"{m['accuracy']:.3f}" and table[model]["latency_ms"] == f"{m['latency_ms']:.3f}"
    assert (table["teacher"]["speed_up"], table["teacher"]["acc_kept_%"]) == ("1.000", "100.000")


def test_training_stages_log_runs_with_terms_and_tags(work):
    mlflow.set_tracking_uri(f"sqlite:///{work / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["attnkd"], output_format="list")
    by_name = {r.info.run_name: r for r in runs}
    assert set(by_name) == {"teacher", "distill-ce", "distill-kd_at"}
    run = by_name["distill-kd_at"]
    assert {"train/ce", "train/kd", "train/attn_kl", "train/loss", "val/accuracy"} <= set(run.data.metrics)
    assert run.data.tags["dvc.stage"] == "distill@kd_at" and len(run.data.tags["git.commit"]) >= 7
    assert run.data.params["method"] == "kd_at" and "version.torch" in run.data.tags
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert artifacts == {"kd_at.tsv", "attnkd.json"}


def test_bad_params_stop_a_stage_with_one_line_and_no_output(tmp_path, params_file, capsys):
    doc = yaml.safe_load(params_file.read_text())
    doc["data"]["max_lenght"] = 64
    params_file.write_text(yaml.safe_dump(doc))
    assert run_script("prepare", "--params", params_file, "--out", tmp_path / "prepared", "--report", tmp_path / "data.json") == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {params_file}: data.max_lenght: unknown key"
    assert not (tmp_path / "prepared").exists()
