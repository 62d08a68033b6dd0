"""Shared fixtures: a tiny BERT built from a config (no download) and tiny params."""

from __future__ import annotations

import os
import runpy
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))  # the repository tools (profiles, benchmarks) are not part of the package
os.environ.setdefault("TQDM_DISABLE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N: one thread per worker, for it and every process it starts
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

# The order groups are handed to the workers. xdist gives each worker two groups at the start (the
# 1st and 3rd to one, the 2nd and 4th to the other), then one more whenever a worker runs out:
# the longest group (tiny_repo, ~450 s on 2 cores) first, a short one third, so that it does not
# also get the next longest; the other long modules go to the other worker.
SLOW_FIRST = ["test_e2e.py", "test_remotes.py", "test_squad_pipeline.py", "test_stages.py", "test_translation_pipeline.py", "test_ner_pipeline.py", "test_resume.py", "test_scaling.py"]
SHARED = {"test_e2e.py": "tiny_repo", "test_remotes.py": "tiny_repo"}  # modules that share the one `dvc repro` of tiny_repo


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """For `pytest -n N --dist loadgroup` (pyproject.toml): each module is one group, run by one
    worker, so its module fixtures are built once (the two that share tiny_repo are one group);
    the slow ones are ordered first (SLOW_FIRST), since the suite ends when the busiest worker does."""
    for item in items:
        item.add_marker(pytest.mark.xdist_group(SHARED.get(item.path.name, item.path.name)))
    items.sort(key=lambda item: SLOW_FIRST.index(item.path.name) if item.path.name in SLOW_FIRST else len(SLOW_FIRST))


def shared_data(probe: str) -> Path:
    """The real benchmark files (../shared/data): $ATTNKD_SHARED_DATA, else ../shared/data beside the
    repo or /work/shared/data, the first that holds `probe` (a path inside it)."""
    for root in (os.environ.get("ATTNKD_SHARED_DATA"), REPO.parent / "shared/data", "/work/shared/data"):
        if root and (Path(root) / probe).is_file():
            return Path(root)
    raise FileNotFoundError(f"{probe} not found: set ATTNKD_SHARED_DATA to the folder holding the shared benchmark files")


def tiny_config(num_labels: int = 5, layers: int = 2) -> BertConfig:
    from attnkd.models import resolve_init

    vocab = AutoTokenizer.from_pretrained(str(resolve_init("all-MiniLM-L6-v2"))).vocab_size
    return BertConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=128, num_labels=num_labels, attn_implementation="eager",
    )


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny BERT (hidden 32, 2 layers, 4 heads) with the packaged uncased tokenizer, saved to disk."""
    from attnkd.models import resolve_init

    out = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    BertForSequenceClassification(tiny_config()).save_pretrained(out)
    AutoTokenizer.from_pretrained(str(resolve_init("all-MiniLM-L6-v2"))).save_pretrained(out)
    return out


def tiny_params(model_dir: Path, **overrides) -> dict:
    """Params for a run of a few seconds: 60 articles, 32 tokens, one short epoch."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"] |= {"max_length": 32, "limit_per_class": 12, "val_fraction": 0.2, "test_fraction": 0.2}
    params["teacher"] |= {"init": str(model_dir), "epochs": 1, "batch_size": 8, "learning_rate": 1.0e-3}
    params["students"]["small"] |= {"num_layers": 1, "hidden_size": 32, "num_heads": 4, "intermediate_size": 64, "init": "embeddings"}
    params["distill"] |= {"epochs": 1, "batch_size": 8}
    params["student_seeds"] = [1, 2]
    params["evaluate"] |= {"latency_examples": 2, "latency_repeats": 1, "throughput_examples": 8}
    params["report"] |= {"bootstrap_samples": 200}
    for section, values in overrides.items():  # a section is updated; `methods`, a set of named entries, replaced
        params[section] = params[section] | values if isinstance(values, dict) and section != "methods" else values
    return params


@pytest.fixture
def params_file(tmp_path, tiny_model_dir) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_params(tiny_model_dir)))
    return path


@pytest.fixture(autouse=True)
def _mlflow_store(tmp_path, monkeypatch):
    """Every test logs to its own SQLite store, never to the repo's mlflow.db."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")


def run_script(name: str, *args: str) -> int:
    """Run pipeline/<name>.py in-process as __main__; return its exit code (0 when it returns)."""
    argv = sys.argv
    sys.argv = [name, *map(str, args)]
    try:
        runpy.run_path(str(REPO / "pipeline" / f"{name}.py"), run_name="__main__")
        return 0
    except SystemExit as exit_:
        return int(exit_.code or 0)
    finally:
        sys.argv = argv


def sh(cmd: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def repro_copy(root: Path, params: dict, files: dict[str, str] | None = None) -> tuple[Path, dict, str]:
    """A fresh git clone-alike of the project in `root` with these params and extra files (path
    relative to root -> text), after one `dvc repro`: (root, the environment to run in, its log)."""
    from mutants import copy_tree

    copy_tree(root)
    for name, text in (files or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env |= {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t", "TQDM_DISABLE": "1"}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "tiny"]):
        sh(cmd, root, env)
    return root, env, sh(["dvc", "repro"], root, env)


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory, tiny_model_dir):
    """A fresh git clone-alike of the project with tiny params, after one `dvc repro`."""
    return repro_copy(tmp_path_factory.mktemp("e2e") / "repo", tiny_params(tiny_model_dir))


def run_pipeline(root: Path, params: Path) -> None:
    """Every stage's entry script in order, in-process, for every student, method and student seed."""
    doc = yaml.safe_load(params.read_text())
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    p = ["--params", params]
    prepared, teacher = root / "prepared", root / "models/teacher"
    try:
        assert run_script("prepare", *p, "--out", prepared, "--report", root / "data.json") == 0
        assert run_script("augment", *p, "--prepared", prepared, "--out", root / "transfer") == 0
        assert run_script("teacher", *p, "--prepared", prepared, "--out", teacher, "--metrics", root / "train/teacher.json", "--curve", root / "curves/teacher.tsv") == 0
        assert run_script("plan", *p, "--teacher", teacher, "--out", root / "plan.json") == 0
        assert run_script("extract", *p, "--prepared", prepared, "--transfer", root / "transfer", "--teacher", teacher, "--plan", root / "plan.json", "--out", root / "signals") == 0
        for student in doc["distill"]["students"]:
            for m in doc["methods"]:
                for seed in doc["student_seeds"]:
                    name = f"{student}-{m}-s{seed}"
                    assert run_script("distill", *p, "--student", student, "--method", m, "--seed", seed, "--prepared", prepared, "--transfer", root / "transfer", "--teacher", teacher,
                                      "--signal-store", root / "signals", "--out", root / f"students/{name}", "--metrics", root / f"train/{name}.json",
                                      "--curve", root / f"curves/{name}.tsv") == 0
        assert run_script("evaluate", *p, "--prepared", prepared, "--teacher", teacher, "--students", root / "students",
                          "--metrics-dir", root / "metrics", "--predictions-dir", root / "predictions", "--attention", root / "attention.json") == 0
        assert run_script("report", *p, "--metrics-dir", root / "metrics", "--predictions-dir", root / "predictions", "--curves-dir", root / "curves",
                          "--prepared", prepared, "--data-report", root / "data.json", "--store", root / "signals/manifest.json", "--attention", root / "attention.json",
                          "--out", root / "report.md", "--summary", root / "summary.json", "--headline", root / "headline.json", "--points", root / "accuracy_latency.csv") == 0
    finally:
        mp.undo()


# servers the tests start on 127.0.0.1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {seconds} s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
