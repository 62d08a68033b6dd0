"""Kill a training stage with SIGKILL mid-run, twice at different points, re-run it each time:
the final weights, metrics and curve equal those of a run never interrupted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from conftest import REPO, run_script, tiny_params


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_model_dir) -> Path:
    root = tmp_path_factory.mktemp("resume")
    doc = tiny_params(tiny_model_dir)
    doc["teacher"] |= {"epochs": 16, "checkpoint_every": 4}  # 80 steps of 8 examples
    (root / "params.yaml").write_text(yaml.safe_dump(doc))
    assert run_script("prepare", "--params", root / "params.yaml", "--out", root / "prepared", "--report", root / "data.json") == 0
    return root


def teacher(root: Path, name: str, params: Path | None = None) -> list[str]:
    return [sys.executable, "pipeline/teacher.py", "--params", str(params or root / "params.yaml"), "--prepared", str(root / "prepared"),
            "--out", str(root / name), "--metrics", str(root / f"{name}.json"), "--curve", str(root / f"{name}.tsv")]


def env_for(root: Path, name: str) -> dict:
    return os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{root / (name + '.db')}", "TQDM_DISABLE": "1"}


def kill_after(cmd: list[str], env: dict, ckpt: Path, min_step: int) -> int:
    """Start the stage, SIGKILL it once its checkpoint has passed `min_step`; return that step."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None:
        if ckpt.is_file():
            step = torch.load(ckpt, map_location="cpu", weights_only=True)["step"]
            if step >= min_step:
                proc.kill()
                proc.wait()
                # the step the stage will resume from: it may have written one more checkpoint
                # while the one read above was loading
                return torch.load(ckpt, map_location="cpu", weights_only=True)["step"]
        time.sleep(0.05)
    raise AssertionError(f"the stage finished (exit {proc.returncode}) before it could be killed:\n{proc.stderr.read()[-2000:]}")


def finish(cmd: list[str], env: dict) -> str:
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_killed_twice_and_resumed_equals_uninterrupted(work):
    finish(teacher(work, "straight"), env_for(work, "straight"))
    env, ckpt = env_for(work, "killed"), work / "killed.ckpt/state.pt"
    first = kill_after(teacher(work, "killed"), env, ckpt, 16)
    second = kill_after(teacher(work, "killed"), env, ckpt, first + 24)
    log = finish(teacher(work, "killed"), env)
    assert 16 <= first < second < 80 and f"at step {second}" in log, (first, second, log)
    assert (work / "killed/model.safetensors").read_bytes() == (work / "straight/model.safetensors").read_bytes()
    assert (work / "killed.json").read_text() == (work / "straight.json").read_text()
    assert (work / "killed.tsv").read_text() == (work / "straight.tsv").read_text()
    assert not (work / "killed.ckpt").exists() and not (work / "straight.ckpt").exists()  # no debris
    print(f"killed after the checkpoints at steps {first} and {second} of 80; final metrics {(work / 'killed.json').read_text()!r}")
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["attnkd"], output_format="list")
    assert [(r.info.run_name, r.info.status) for r in runs] == [("teacher", "FINISHED")]  # one run, continued


def test_a_checkpoint_from_other_params_is_not_resumed(work):
    env, ckpt = env_for(work, "other"), work / "other.ckpt/state.pt"
    kill_after(teacher(work, "other"), env, ckpt, 8)
    doc = yaml.safe_load((work / "params.yaml").read_text())
    doc["teacher"]["learning_rate"] = 5.0e-4
    changed = work / "changed.yaml"
    changed.write_text(yaml.safe_dump(doc))
    log = finish(teacher(work, "other", changed), env)
    assert "written under other params, inputs or code; starting afresh" in log and "resuming" not in log
    assert json.loads((work / "other/attnkd.json").read_text())["params"]["learning_rate"] == 5.0e-4


def test_a_checkpoint_from_other_code_is_not_resumed(tmp_path, monkeypatch):
    """Same params and inputs, other attnkd source (e.g. another selection metric, whose best score
    the checkpoint holds): the checkpoint is discarded; with the same source it is resumed."""
    from attnkd import checkpoint

    identity = {"params": {"epochs": 3}, "inputs": "abc"}
    checkpoint.Checkpoints.beside(tmp_path / "model", identity, 1).save({"step": 7, "best": 44.9})
    assert checkpoint.Checkpoints.beside(tmp_path / "model", identity, 1).load()["step"] == 7
    monkeypatch.setattr(checkpoint, "code_digest", lambda: "another version")
    assert checkpoint.Checkpoints.beside(tmp_path / "model", identity, 1).load() is None
    assert not (tmp_path / "model.ckpt").exists()
