"""The real `dvc repro` in a temporary git copy of the repo, on 60 real articles and a tiny teacher."""

from __future__ import annotations

import json
import subprocess
import time

import mlflow
import pytest
import yaml

from conftest import sh


@pytest.fixture(scope="module")
def repo(tiny_repo):
    return tiny_repo


def test_repro_builds_every_artifact(repo):
    root, _, log = repo
    methods = ["ce", "kd", "at", "kd_at"]
    for stage in ["prepare", "teacher", "extract", *[f"distill@{m}" for m in methods], *[f"evaluate@{m}" for m in ["teacher", *methods]], "report"]:
        assert f"Running stage '{stage}'" in log
    for path in ["data/prepared/train.parquet", "data/models/teacher/model.safetensors", "data/signals/manifest.json", "reports/report.md"]:
        assert (root / path).is_file(), path
    for m in methods:
        assert (root / f"data/models/{m}/model.safetensors").is_file()
        assert (root / f"reports/train/{m}.json").is_file()
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert {"prepare", "teacher", "extract", "distill@kd_at", "evaluate@teacher", "report"} <= set(lock["stages"])


def test_report_table_has_teacher_and_four_students(repo):
    root, _, _ = repo
    text = (root / "reports/report.md").read_text()
    rows = [l.split("|")[1].strip() for l in text.split("## Data")[0].splitlines() if l.startswith("|") and "---" not in l]
    assert rows == ["model", "teacher", "ce", "kd", "at", "kd_at"]
    for m in ["teacher", "ce", "kd", "at", "kd_at"]:
        acc = json.loads((root / f"reports/metrics/{m}.json").read_text())["accuracy"]
        assert f"| {m}" in text and f"{acc:.3f}" in text


def test_mlflow_runs_land_in_the_repo_root_store(repo):
    root, _, _ = repo
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["attnkd"], output_format="list")
    assert sorted(r.info.run_name for r in runs) == sorted(["teacher", "distill-ce", "distill-kd", "distill-at", "distill-kd_at"])
    assert {r.data.tags["dvc.stage"] for r in runs} == {"teacher", "distill@ce", "distill@kd", "distill@at", "distill@kd_at"}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    assert all(r.data.tags["git.commit"] == commit for r in runs)


def test_second_repro_runs_nothing(repo):
    root, env, _ = repo
    log = sh(["dvc", "repro"], root, env)
    assert "Running stage" not in log
    assert "Data and pipelines are up to date" in log


def test_forced_reruns_give_identical_outputs(repo):
    """No timestamps or run ids in cached outputs, deterministic training on CPU: re-running a
    stage reproduces its outputs bit for bit, so DVC's run cache and `dvc exp` never redo work."""
    root, env, _ = repo
    def outs() -> dict:
        lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
        return {name: [(o["path"], o["md5"]) for o in stage.get("outs", [])] for name, stage in lock.items()}
    before = outs()
    for stage in ("prepare", "teacher", "extract", "distill@kd_at"):
        assert f"Running stage '{stage}'" in sh(["dvc", "repro", "-f", "-s", stage], root, env)
    after = outs()
    assert all(after[s] == before[s] for s in ("prepare", "teacher", "extract", "distill@kd_at"))
    assert "Data and pipelines are up to date" in sh(["dvc", "status"], root, env)


def test_experiment_with_a_changed_knob_is_compared(repo):
    root, env, _ = repo
    sh(["git", "add", "-A"], root, env)
    sh(["git", "commit", "-qm", "baseline results"], root, env)
    log = sh(["dvc", "exp", "run", "-n", "t4", "-S", "distill.temperature=4.0"], root, env)
    assert "Running stage 'distill@kd'" in log and "Running stage 'teacher'" not in log
    shown = sh(["dvc", "exp", "show", "--csv"], root, env).splitlines()
    header = shown[0].split(",")
    assert "distill.temperature" in header and "reports/metrics/kd.json:accuracy" in header
    temps = {row.split(",")[header.index("Experiment")]: row.split(",")[header.index("distill.temperature")] for row in shown[1:]}
    assert temps["t4"] == "4.0" and "2.0" in temps.values()
    params = sh(["dvc", "params", "diff", "HEAD", "t4"], root, env)
    assert "distill.temperature" in params and "4.0" in params
    assert "accuracy" in sh(["dvc", "metrics", "diff", "--all", "HEAD", "t4"], root, env)
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["attnkd"], output_format="list")
    assert {r.data.tags["dvc.experiment"] for r in runs if r.data.tags["dvc.experiment"]} == {"t4"}


def test_queued_experiment_logs_to_the_repo_store_and_diffs(repo):
    """Queued runs execute in a copy under .dvc/tmp/exps; their MLflow runs must still land in
    the repo's mlflow.db, tagged with the experiment name."""
    root, env, _ = repo
    sh(["dvc", "exp", "run", "--queue", "-n", "q3", "-S", "methods.kd_at.attn_kl=2.0"], root, env)  # re-runs one student
    sh(["dvc", "queue", "start"], root, env)
    deadline = time.time() + 420
    while time.time() < deadline:
        status = sh(["dvc", "queue", "status"], root, env)
        if "q3" in status and ("Success" in status or "Failed" in status):
            break
        time.sleep(3)
    if "Running" in status:
        sh(["dvc", "queue", "stop", "--kill"], root, env)
    assert "Success" in status, status + sh(["dvc", "queue", "logs", "q3"], root, env)
    assert not list((root / ".dvc/tmp/exps").rglob("mlflow.db"))
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["attnkd"], output_format="list")
    queued = [r for r in runs if r.data.tags["dvc.experiment"] == "q3"]
    assert [(r.info.run_name, r.data.params["weights.attn_kl"]) for r in queued] == [("distill-kd_at", "2.0")]
    diff = sh(["dvc", "exp", "diff", "--all", "HEAD", "q3"], root, env)
    assert "methods.kd_at.attn_kl" in diff and "accuracy" in diff
    plots = sh(["dvc", "plots", "diff", "HEAD", "q3", "--json"], root, env)
    assert "reports/curves/kd.tsv" in plots
