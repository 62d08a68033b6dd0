"""Scaling out on CPU: two processes (torchrun, gloo) train like one process with the same
effective batch, write one set of artifacts and one MLflow run; mixed precision on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoTokenizer, BertForSequenceClassification

from attnkd.compute import resolve_device
from attnkd.errors import UserError
from conftest import REPO, run_script, tiny_config, tiny_params

# Float sums in another order (gradients all-reduced over processes, batches padded per
# process) move weights by ~1e-7; a sharding or weighting error moves them by ~1e-3 or more.
WEIGHT_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Prepared tiny data and a tiny teacher init without dropout (dropout masks are per process)."""
    from attnkd.models import resolve_init

    root = tmp_path_factory.mktemp("scaling")
    init = root / "init"
    torch.manual_seed(0)
    config = tiny_config()
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    BertForSequenceClassification(config).save_pretrained(init)
    AutoTokenizer.from_pretrained(str(resolve_init("all-MiniLM-L6-v2"))).save_pretrained(init)
    doc = tiny_params(init, methods={"ce": {"ce": 1.0}, "kd": {"ce": 0.5, "kd": 0.5}}, student_seeds=[1])
    doc["teacher"] |= {"epochs": 2, "batch_size": 16, "checkpoint_every": 0}
    doc["distill"] |= {"epochs": 2, "batch_size": 16, "checkpoint_every": 0}
    doc["students"]["small"] |= {"hidden_dropout": 0.0}
    doc["compute"] = {"device": "cpu", "precision": "fp32"}
    (root / "params.yaml").write_text(yaml.safe_dump(doc))
    half = doc | {"teacher": doc["teacher"] | {"batch_size": 8}, "distill": doc["distill"] | {"batch_size": 8}}
    (root / "half.yaml").write_text(yaml.safe_dump(half))  # 2 processes x 8 = the same effective batch of 16
    assert run_script("prepare", "--params", root / "params.yaml", "--out", root / "prepared", "--report", root / "data.json") == 0
    return root


def launch(root: Path, processes: int, params: str, stage: str, *args) -> subprocess.CompletedProcess:
    env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{root / f'mlflow-{stage}-{processes}.db'}", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    script = [str(REPO / f"pipeline/{stage}.py"), "--params", str(root / params), *map(str, args)]
    cmd = [sys.executable, *script] if processes == 1 else [str(Path(sys.executable).parent / "torchrun"), "--standalone", f"--nproc_per_node={processes}", *script]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def train_teacher(root: Path, processes: int, params: str) -> Path:
    out = root / f"teacher-{processes}"
    launch(root, processes, params, "teacher", "--prepared", root / "prepared", "--out", out, "--metrics", f"{out}.json", "--curve", f"{out}.tsv")
    return out


def max_weight_difference(a: Path, b: Path) -> float:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def runs(db: Path) -> list:
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    return mlflow.search_runs(experiment_names=["attnkd"], output_format="list")


@pytest.fixture(scope="module")
def teachers(work) -> tuple[Path, Path]:
    return train_teacher(work, 1, "params.yaml"), train_teacher(work, 2, "half.yaml")


def test_two_processes_train_the_teacher_like_one(work, teachers):
    one, two = teachers
    diff = max_weight_difference(one, two)
    print(f"teacher, 1 process x 16 vs 2 processes x 8: max |weight difference| {diff:.2e}")
    assert diff < WEIGHT_TOLERANCE
    c1, c2 = pd.read_csv(f"{one}.tsv", sep="\t"), pd.read_csv(f"{two}.tsv", sep="\t")
    assert list(c1["steps"]) == list(c2["steps"]) == [3, 3]  # 36 examples in global batches of 16
    assert np.allclose(c1["train_loss"], c2["train_loss"], rtol=1e-5)  # reduced over processes
    assert list(c1["val_accuracy"]) == list(c2["val_accuracy"])


def test_only_rank_0_writes_artifacts_and_logs_one_run(work, teachers):
    _, two = teachers
    assert sorted(p.name for p in work.iterdir() if p.name.startswith("teacher-2")) == ["teacher-2", "teacher-2.json", "teacher-2.tsv"]
    assert not list(work.glob(".teacher-2*"))  # no leftover temporary dirs of another rank
    (run,) = runs(work / "mlflow-teacher-2.db")
    assert run.info.status == "FINISHED"
    assert (run.data.params["compute.processes"], run.data.params["compute.effective_batch_size"], run.data.params["compute.batch_size_per_process"]) == ("2", "16", "8")
    assert run.data.params["compute.learning_rate"] == "0.001" and run.data.params["compute.device"] == "cpu"
    (single,) = runs(work / "mlflow-teacher-1.db")
    assert single.data.params["compute.effective_batch_size"] == "16" and single.data.params["compute.processes"] == "1"


def test_two_processes_distil_a_student_like_one(work, teachers):
    teacher, _ = teachers
    assert run_script("extract", "--params", work / "params.yaml", "--prepared", work / "prepared", "--teacher", teacher, "--out", work / "signals") == 0
    outs = {}
    for processes, params in ((1, "params.yaml"), (2, "half.yaml")):
        out = work / f"kd-{processes}"
        launch(work, processes, params, "distill", "--student", "small", "--method", "kd", "--seed", 1, "--prepared", work / "prepared", "--teacher", teacher,
               "--signal-store", work / "signals", "--out", out, "--metrics", f"{out}.json", "--curve", f"{out}.tsv")
        outs[processes] = out
    diff = max_weight_difference(outs[1], outs[2])
    print(f"kd student, 1 process x 16 vs 2 processes x 8: max |weight difference| {diff:.2e}")
    assert diff < WEIGHT_TOLERANCE
    c1, c2 = pd.read_csv(f"{outs[1]}.tsv", sep="\t"), pd.read_csv(f"{outs[2]}.tsv", sep="\t")
    assert np.allclose(c1[["train_ce", "train_kd"]], c2[["train_ce", "train_kd"]], rtol=1e-5)
    assert len(runs(work / "mlflow-distill-2.db")) == 1


def test_extract_refuses_several_processes(work, teachers):
    env = os.environ | {"TQDM_DISABLE": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'x.db'}"}
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2", str(REPO / "pipeline/extract.py"),
           "--params", str(work / "params.yaml"), "--prepared", str(work / "prepared"), "--teacher", str(teachers[0]), "--out", str(work / "signals-2")]
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "extract runs in one process" in proc.stderr
    assert not (work / "signals-2").exists()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_and_stores_in_the_configured_dtype(work, tmp_path, precision):
    """CPU autocast (bf16; fp16 with a gradient scaler): training runs, weights stay fp32, and
    the store keeps extract.dtype."""
    if not torch.amp.autocast_mode.is_autocast_available("cpu"):
        pytest.skip("this PyTorch build has no CPU autocast")
    doc = yaml.safe_load((work / "params.yaml").read_text())
    doc["compute"]["precision"] = precision
    doc["teacher"]["epochs"] = 1
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(doc))
    out = tmp_path / "teacher"
    assert run_script("teacher", "--params", params, "--prepared", work / "prepared", "--out", out, "--metrics", tmp_path / "t.json", "--curve", tmp_path / "t.tsv") == 0
    curve = pd.read_csv(tmp_path / "t.tsv", sep="\t")
    assert np.isfinite(curve["train_loss"]).all() and 0 <= curve["val_accuracy"].iloc[0] <= 1
    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.float32}
    assert run_script("extract", "--params", params, "--prepared", work / "prepared", "--teacher", out, "--out", tmp_path / "signals") == 0
    manifest = json.loads((tmp_path / "signals/manifest.json").read_text())
    assert (manifest["dtype"], manifest["teacher_precision"]) == ("float16", precision)
    assert run_script("distill", "--params", params, "--student", "small", "--method", "kd", "--seed", 1, "--prepared", work / "prepared", "--teacher", out,
                      "--signal-store", tmp_path / "signals", "--out", tmp_path / "kd", "--metrics", tmp_path / "k.json", "--curve", tmp_path / "k.tsv") == 0
    assert np.isfinite(pd.read_csv(tmp_path / "k.tsv", sep="\t")["train_kd"]).all()


def test_device_auto_picks_what_is_there_and_cuda_is_refused_without_a_gpu():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="compute.device: cuda was asked for"):
            resolve_device("cuda")
