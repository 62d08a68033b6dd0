"""Helpers shared by the entry scripts in pipeline/: argument parsing, seeding, threads."""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
import torch

from attnkd.artifacts import ModelRecord
from attnkd.io import atomic_dir, atomic_write_json, sha256_file
from attnkd.params import Params, load_params
from attnkd.reporting import write_curve


def parser(description: str, **paths: str) -> argparse.ArgumentParser:
    """The stage's command line: --params, and one required path option per keyword
    (`prepared="prepared data dir"` gives --prepared; underscores become dashes)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    for name, what in paths.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=Path, required=True, help=what)
    return p


def setup(params_path: str) -> Params:
    """Validate params before any work, and make runs repeatable on CPU."""
    params = load_params(params_path)
    seed_everything(params.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return params


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def student_name(student: str, method: str, seed: int) -> str:
    """The name of the model a method trains into a student architecture from a seed: its model
    dir, metrics and curve files (`small-kd_at-s42`)."""
    return f"{student}-{method}-s{seed}"


def group_label(students: list[str], student: str, method: str) -> str:
    """A method's row in the report: the method, prefixed by the student when there are several."""
    return method if len(students) == 1 else f"{student} {method}"


def model_groups(students: list[str], models: list[str], seeds: list[int]) -> dict[str, list[str]]:
    """evaluate.models as model names per (student, method) row, seeds in order: the teacher is
    one model, a method one model per student and seed
    (`{"teacher": ["teacher"], "ce": ["small-ce-s42", ...], ...}`; with students s1 and s2 the
    rows are "s1 ce", ..., "s2 ce", ...)."""
    groups = {"teacher": ["teacher"]} if "teacher" in models else {}
    for student in students:
        for m in models:
            if m != "teacher":
                groups[group_label(students, student, m)] = [student_name(student, m, s) for s in seeds]
    return groups


def save_trained(run, task, model, tokenizer, history: list[dict], record: dict, out: Path, metrics: Path, curve: Path) -> dict:
    """Write what a training stage leaves behind: the model dir (HF save_pretrained, tokenizer
    and `attnkd.json` with `record` and the sha256 of every file), the curve and the best-epoch
    metrics (the task's summary metrics on validation); log them to `run`."""
    best = max(history, key=lambda h: h[f"val_{task.select_by}"])  # the first of equals, as fit keeps
    summary = {"best_epoch": best["epoch"]} | {f"val_{k}": best[f"val_{k}"] for k in task.summary_metrics}
    run.log_metrics({f"best/{k}": v for k, v in summary.items()}, best["epoch"])
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        ModelRecord(**record, sha256=files).write(tmp)
    write_curve(curve, history)
    atomic_write_json(metrics, summary)
    run.log_artifact(curve)
    run.log_artifact(out / "attnkd.json")
    return summary
