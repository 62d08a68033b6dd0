"""Each stage's entry script, run in-process on a tmp dir with the tiny BERT as teacher init."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from safetensors.torch import load_file

from attnkd.stats import paired_bootstrap
from conftest import run_pipeline, run_script, tiny_params


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_model_dir) -> Path:
    """Run the whole chain once for the module; each test then checks one stage's files."""
    root = tmp_path_factory.mktemp("stages")
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params(tiny_model_dir, methods={"ce": {"ce": 1.0}, "kd_at": {"ce": 0.5, "kd": 0.5, "attn_kl": 1.0}})))
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
    ce, kd_at = load_file(work / "students/small-ce-s1/model.safetensors"), load_file(work / "students/small-kd_at-s1/model.safetensors")
    assert ce.keys() == kd_at.keys()
    assert any(not (ce[k] == kd_at[k]).all() for k in ce)
    record = json.loads((work / "students/small-kd_at-s1/attnkd.json").read_text())
    assert record["weights"] == {"ce": 0.5, "kd": 0.5, "attn_kl": 1.0} and record["layer_pairs"] == [[2, 1]] and record["seed"] == 1
    curve = pd.read_csv(work / "curves/small-kd_at-s1.tsv", sep="\t")
    assert {"train_ce", "train_kd", "train_attn_kl", "train_loss", "val_accuracy"} <= set(curve.columns)


def test_student_seeds_change_the_student(work):
    one, two = load_file(work / "students/small-ce-s1/model.safetensors"), load_file(work / "students/small-ce-s2/model.safetensors")
    assert any(not (one[k] == two[k]).all() for k in one)


def test_distill_refuses_a_seed_not_in_student_seeds(work, tmp_path, capsys):
    code = run_script("distill", "--params", work / "params.yaml", "--student", "small", "--method", "ce", "--seed", 7, "--prepared", work / "prepared", "--teacher", work / "models/teacher",
                      "--signal-store", work / "signals", "--out", tmp_path / "ce", "--metrics", tmp_path / "m.json", "--curve", tmp_path / "c.tsv")
    assert code == 2 and "student_seeds: 7 is not listed" in capsys.readouterr().err
    assert not (tmp_path / "ce").exists()


def test_distill_online_mode_trains_like_the_store(work, tmp_path):
    """Same student, batches and objective; only the teacher's signals come from a live teacher."""
    doc = yaml.safe_load((work / "params.yaml").read_text())
    doc["distill"]["signals"] = "online"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(doc))
    code = run_script("distill", "--params", params, "--student", "small", "--method", "kd_at", "--seed", 1, "--prepared", work / "prepared", "--teacher", work / "models/teacher",
                      "--signal-store", tmp_path / "no-store", "--out", tmp_path / "kd_at", "--metrics", tmp_path / "m.json", "--curve", tmp_path / "c.tsv")
    assert code == 0
    online, stored = pd.read_csv(tmp_path / "c.tsv", sep="\t"), pd.read_csv(work / "curves/small-kd_at-s1.tsv", sep="\t")
    for col in ("train_ce", "train_kd", "train_attn_kl"):
        assert online[col].iloc[0] == pytest.approx(stored[col].iloc[0], rel=1e-2), col


def test_evaluate_writes_metrics_and_predictions_for_every_model(work):
    assert sorted(p.stem for p in (work / "metrics").iterdir()) == ["small-ce-s1", "small-ce-s2", "small-kd_at-s1", "small-kd_at-s2", "teacher"]
    m = json.loads((work / "metrics/small-kd_at-s2.json").read_text())
    for key in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc", "ece", "params", "size_mb", "latency_ms", "throughput_eps", "attention_js_mean"):
        assert isinstance(m[key], (int, float)), key
    assert m["latency_ms"] > 0 and m["throughput_eps"] > 0 and 0 <= m["ece"] <= 1
    assert (m["method"], m["seed"]) == ("kd_at", 2) and set(m["attention_js"]) == {"t2-s1"} and 0 <= m["attention_js"]["t2-s1"] <= 1
    assert sum(c["support"] for c in m["per_class"].values()) == sum(map(sum, m["confusion"]["matrix"])) == m["test_examples"] == 12
    assert "attention_js" not in json.loads((work / "metrics/teacher.json").read_text())
    preds = pd.read_csv(work / "predictions/small-kd_at-s2.csv")
    assert list(preds.columns[:2]) == ["actual", "predicted"] and len(preds) == 12
    assert preds.filter(like="p_").sum(axis=1).to_numpy() == pytest.approx(1.0, abs=1e-4)
    assert (preds["actual"] == preds["predicted"]).mean() == pytest.approx(m["accuracy"], abs=1e-6)


def table(text: str, heading: str) -> dict[str, dict[str, str]]:
    """The Markdown table under `## heading`, as {first cell: {column: cell}}."""
    section = text.split(f"## {heading}\n")[1].split("\n## ")[0]
    lines = [l for l in section.splitlines() if l.startswith("|") and "---" not in l]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return {cells[0]: dict(zip(header, cells)) for cells in ([c.strip() for c in l.strip("|").split("|")] for l in lines[1:])}


def test_report_tables_hold_the_metrics_values(work):
    text = (work / "report.md").read_text()
    metrics = {p.stem: json.loads(p.read_text()) for p in (work / "metrics").iterdir()}
    quality, efficiency = table(text, "Quality on the test split"), table(text, "Efficiency")
    summary = json.loads((work / "summary.json").read_text())
    assert list(quality) == ["teacher", "ce", "kd_at"]
    assert quality["teacher"]["accuracy"] == f"{metrics['teacher']['accuracy']:.3f}" and quality["teacher"]["seeds"] == "1"
    for method in ("ce", "kd_at"):
        accs = [metrics[f"small-{method}-s{s}"]["accuracy"] for s in (1, 2)]
        mean, std = sum(accs) / 2, abs(accs[0] - accs[1]) / 2 ** 0.5
        assert quality[method]["accuracy"] == f"{mean:.3f} ± {std:.3f}"
        lat = sum(metrics[f"small-{method}-s{s}"]["latency_ms"] for s in (1, 2)) / 2
        assert summary[method]["speed_up"] == pytest.approx(metrics["teacher"]["latency_ms"] / lat, abs=1e-4)
        assert efficiency[method]["speed-up"] == f"{summary[method]['speed_up']:.2f}x"  # the summary's 4 decimals, shown with 2
    correct = {m: np.stack([(lambda p: (p["actual"] == p["predicted"]).to_numpy())(pd.read_csv(work / f"predictions/small-{m}-s{s}.csv"))
                            for s in (1, 2)]) for m in ("ce", "kd_at")}
    expected = paired_bootstrap(correct["kd_at"], correct["ce"], 200)  # report.bootstrap_samples of tiny_params
    assert quality["ce"]["p vs ce"] == "-" and quality["kd_at"]["p vs ce"] == f"{expected.p_value:.3g}"
    seeds = table(text, "Accuracy per seed")
    assert seeds["kd_at"]["seed 2"] == f"{metrics['small-kd_at-s2']['accuracy']:.3f}"
    assert summary["kd_at"]["accuracy"]["mean"] == pytest.approx(sum(metrics[f"small-kd_at-s{s}"]["accuracy"] for s in (1, 2)) / 2, abs=1e-6)
    assert summary["kd_at"]["vs_ce"] == {"delta": pytest.approx(expected.delta, abs=1e-6), "ci_low": pytest.approx(expected.low, abs=1e-6),
                                         "ci_high": pytest.approx(expected.high, abs=1e-6), "p_value": pytest.approx(expected.p_value, abs=1e-6),
                                         "detectable": pytest.approx(expected.detectable, abs=1e-6)}
    assert quality["kd_at"]["detectable Δ, points"] == f"{100 * expected.detectable:.1f}"
    html = (work / "report.html").read_text()
    for method in ("ce", "kd_at"):
        assert f"<td>{quality[method]['accuracy']}</td>" in html


def test_report_draws_every_figure(work):
    assert sorted(p.name for p in (work / "figures").iterdir()) == ["accuracy_latency.png", "attention_0.png", "attention_1.png", "curves.png"]
    text = (work / "report.md").read_text()
    assert all(f"(figures/{p.name})" in text for p in (work / "figures").iterdir())
    html = (work / "report.html").read_text()
    assert html.count('<img src="data:image/png;base64,') == 4 and 'src="figures/' not in html  # self-contained


def test_training_stages_log_runs_with_terms_and_tags(work):
    mlflow.set_tracking_uri(f"sqlite:///{work / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["attnkd"], output_format="list")
    by_name = {r.info.run_name: r for r in runs}
    assert set(by_name) == {"teacher", "distill-small-ce-s1", "distill-small-ce-s2", "distill-small-kd_at-s1", "distill-small-kd_at-s2", "report"}
    run = by_name["distill-small-kd_at-s1"]
    assert {"train/ce", "train/kd", "train/attn_kl", "train/loss", "val/accuracy"} <= set(run.data.metrics)
    assert run.data.tags["dvc.stage"] == "distill@small-kd_at-1" and len(run.data.tags["git.commit"]) >= 7
    assert run.data.params["method"] == "kd_at" and "version.torch" in run.data.tags
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert artifacts == {"small-kd_at-s1.tsv", "attnkd.json"}
    report = by_name["report"]
    assert {a.path for a in mlflow.MlflowClient().list_artifacts(report.info.run_id)} == {"report.md", "report.html", "summary.json", "headline.json", "accuracy_latency.csv", "figures"}
    assert report.data.metrics["kd_at/accuracy_mean"] == pytest.approx(json.loads((work / "summary.json").read_text())["kd_at"]["accuracy"]["mean"])


def test_bad_params_stop_a_stage_with_one_line_and_no_output(tmp_path, params_file, capsys):
    doc = yaml.safe_load(params_file.read_text())
    doc["data"]["max_lenght"] = 64
    params_file.write_text(yaml.safe_dump(doc))
    assert run_script("prepare", "--params", params_file, "--out", tmp_path / "prepared", "--report", tmp_path / "data.json") == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {params_file}: data.max_lenght: unknown key"
    assert not (tmp_path / "prepared").exists()


# ---- several students, as in the sst2 profiles: two transformers and a BiLSTM ------------------

WIDE = {"num_layers": 2, "hidden_size": 32, "num_heads": 4, "intermediate_size": 64, "init": "teacher", "attention_dropout": 0.0, "hidden_dropout": 0.1}
NARROW = {"num_layers": 1, "hidden_size": 16, "num_heads": 4, "intermediate_size": 32, "init": "embeddings", "attention_dropout": 0.0, "hidden_dropout": 0.1}
RNN = {"family": "lstm", "num_layers": 1, "hidden_size": 8, "embedding_size": 16, "init": "embeddings", "hidden_dropout": 0.1}


@pytest.fixture(scope="module")
def two(tmp_path_factory, tiny_model_dir) -> Path:
    """The chain with three student architectures: two transformers of different depth and width,
    and a BiLSTM; a method every family can train (the [CLS]-row transfer)."""
    root = tmp_path_factory.mktemp("two-students")
    doc = tiny_params(tiny_model_dir, methods={"ce": {"ce": 1.0}, "kd_at": {"ce": 0.5, "kd": 0.5, "cls_kl": 1.0}},
                      students={"wide": WIDE, "narrow": NARROW, "rnn": RNN})
    doc["distill"]["students"] = ["wide", "narrow", "rnn"]
    (root / "params.yaml").write_text(yaml.safe_dump(doc))
    run_pipeline(root, root / "params.yaml")
    return root


def test_two_students_share_one_store_and_get_their_own_architecture(two):
    manifest = json.loads((two / "signals/manifest.json").read_text())
    assert manifest["tensors"] == {"cls": [1, 2]}  # wide pairs t1-s1, t2-s2; narrow and rnn t2-s1: the union of teacher layers
    wide, narrow = json.loads((two / "students/wide-kd_at-s1/config.json").read_text()), json.loads((two / "students/narrow-kd_at-s1/config.json").read_text())
    assert (wide["num_hidden_layers"], wide["hidden_size"]) == (2, 32) and (narrow["num_hidden_layers"], narrow["hidden_size"]) == (1, 16)
    record = json.loads((two / "students/narrow-kd_at-s2/attnkd.json").read_text())
    assert (record["student"], record["method"], record["seed"], record["layer_pairs"]) == ("narrow", "kd_at", 2, [[2, 1]])


def test_the_report_compares_each_student_with_its_own_ce(two):
    text = (two / "report.md").read_text()
    metrics = {p.stem: json.loads(p.read_text()) for p in (two / "metrics").iterdir()}
    assert list(table(text, "Quality on the test split")) == ["teacher", "wide ce", "wide kd_at", "narrow ce", "narrow kd_at", "rnn ce", "rnn kd_at"]
    summary = json.loads((two / "summary.json").read_text())
    for student in ("wide", "narrow", "rnn"):
        mean = lambda m: sum(metrics[f"{student}-{m}-s{s}"]["accuracy"] for s in (1, 2)) / 2  # noqa: E731
        assert summary[f"{student} kd_at"]["vs_ce"]["delta"] == pytest.approx(mean("kd_at") - mean("ce"), abs=1e-6)
        assert "vs_ce" not in summary[f"{student} ce"]
    assert summary["narrow ce"]["params"] < summary["wide ce"]["params"] == summary["teacher"]["params"]  # wide: the tiny teacher's shape
    assert "student `narrow`: 1 layers, hidden 16" in text and "student `wide`: 2 layers, hidden 32" in text
    assert "student `rnn`: BiLSTM, 1 layer of 8 units per direction, embeddings 16, attention pooling" in text


def test_a_bilstm_student_trains_saves_and_is_measured_like_the_others(two):
    config = json.loads((two / "students/rnn-kd_at-s1/config.json").read_text())
    assert (config["model_type"], config["hidden_size"], config["embedding_size"]) == ("attnkd-bilstm", 8, 16)
    record = json.loads((two / "students/rnn-kd_at-s1/attnkd.json").read_text())
    assert record["layer_pairs"] == [[2, 1]] and record["architecture"]["family"] == "lstm"  # its pooling row learns the last teacher layer's [CLS] row
    metrics = {p.stem: json.loads(p.read_text()) for p in (two / "metrics").iterdir()}
    rnn, narrow = metrics["rnn-kd_at-s1"], metrics["narrow-kd_at-s1"]
    assert 0 < rnn["attention_js"]["t2-s1"] < 1 and rnn["latency_ms"] > 0 and rnn["params"] < metrics["teacher"]["params"]
    assert narrow["attention_js"]["t2-s1"] > 0
    curve = (two / "curves/rnn-kd_at-s1.tsv").read_text().splitlines()
    assert len(curve) == 2  # header + one epoch
    drawn = json.loads((two / "attention.json").read_text())[0]
    assert set(drawn["maps"]) == {"teacher", "wide ce", "wide kd_at"} and set(drawn["rows"]) == {"teacher", "rnn ce", "rnn kd_at"}
    assert drawn["row_layer"] == 2 and len(drawn["rows"]["rnn ce"]) == len(drawn["tokens"]) and sum(drawn["rows"]["teacher"]) <= 1 + 1e-6
    assert (two / f"figures/pooling_{drawn['example']}.png").stat().st_size > 1000
    assert "attention-pooling weights of each BiLSTM row" in (two / "report.md").read_text()

