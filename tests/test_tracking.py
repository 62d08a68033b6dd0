"""Where runs go: the repository's store, also from DVC's experiment copies; a real `mlflow
server` on 127.0.0.1 receiving a stage's run."""

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from attnkd.tracking import store_root, tracking_uri
from conftest import free_port, run_script, stop, wait_for_port


def test_experiment_copies_log_to_the_users_repository():
    assert store_root(Path("/home/u/proj/.dvc/tmp/exps/tmpab12/repo")) == Path("/home/u/proj")
    assert store_root(Path("/home/u/proj/.dvc/tmp/exps/tmpab12")) == Path("/home/u/proj")
    assert store_root(Path("/home/u/proj")) == Path("/home/u/proj")


def test_tracking_uri_prefers_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri() == "http://127.0.0.1:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / ".dvc/tmp/exps/tmpx"))
    assert tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    store = tmp_path / "mlflow-server"
    store.mkdir()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}", "--artifacts-destination", str(store / "artifacts")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=store)
    try:
        wait_for_port(port, proc, seconds=120)
        yield f"http://127.0.0.1:{port}", store
    finally:
        stop(proc)


def test_training_stage_logs_to_a_real_mlflow_server(tmp_path, params_file, mlflow_server, monkeypatch):
    uri, store = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DVC_EXP_NAME", "server-check")
    assert run_script("prepare", "--params", params_file, "--out", tmp_path / "prepared", "--report", tmp_path / "data.json") == 0
    assert run_script("teacher", "--params", params_file, "--prepared", tmp_path / "prepared", "--out", tmp_path / "teacher",
                      "--metrics", tmp_path / "teacher.json", "--curve", tmp_path / "teacher.tsv") == 0
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("attnkd").experiment_id])
    assert [r.info.run_name for r in runs] == ["teacher"]
    run = runs[0]
    assert run.data.params["teacher.epochs"] == "1" and "val/accuracy" in run.data.metrics and "train/ce" in run.data.metrics
    assert run.data.metrics["best/val_accuracy"] == json.loads((tmp_path / "teacher.json").read_text())["val_accuracy"]  # logged last, as the run closes
    steps = int(pd.read_csv(tmp_path / "teacher.tsv", sep="\t")["steps"].sum())
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == list(range(1, steps + 1))  # every step, none lost in the buffer
    tags = run.data.tags
    assert tags["dvc.stage"] == "teacher" and tags["dvc.experiment"] == "server-check" and tags["seed"] == "42"
    assert len(tags["git.commit"]) >= 7 and tags["version.torch"] and tags["version.transformers"]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"teacher.tsv", "attnkd.json"}
    assert any((store / "artifacts").rglob("teacher.tsv"))  # stored by the server, not beside the client
    assert not (tmp_path / "mlflow.db").exists()
