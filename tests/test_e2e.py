"""The real `dvc repro` in a temporary git copy of the repo, on 60 real articles and a tiny teacher."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from conftest import REPO, tiny_params


def sh(cmd: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_model_dir):
    """A fresh git clone-alike of the project with tiny params, after one `dvc repro`."""
    root = tmp_path_factory.mktemp("e2e") / "repo"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(tiny_model_dir), sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env |= {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t", "TQDM_DISABLE": "1"}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "tiny"]):
        sh(cmd, root, env)
    log = sh(["dvc", "repro"], root, env)
    return root, env, log


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
