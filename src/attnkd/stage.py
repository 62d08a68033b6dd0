"""Helpers shared by the entry scripts in pipeline/: argument parsing, seeding, threads."""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
import torch

from attnkd.io import atomic_dir, atomic_write_json, sha256_file
from attnkd.params import Params, load_params
from attnkd.reporting import write_curve


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
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


def student_name(method: str, seed: int) -> str:
    """The name of the student a method trains from a seed: its model dir, metrics and curve files."""
    return f"{method}-s{seed}"


def model_groups(models: list[str], seeds: list[int]) -> dict[str, list[str]]:
    """evaluate.models as model names per method, seeds in order: the teacher is one model, a
    method one student per seed (`{"teacher": ["teacher"], "ce": ["ce-s42", ...], ...}`)."""
    return {m: ["teacher"] if m == "teacher" else [student_name(m, s) for s in seeds] for m in models}


def save_trained(run, model, tokenizer, history: list[dict], record: dict, out: Path, metrics: Path, curve: Path) -> dict:
    """Write what a training stage leaves behind: the model dir (HF save_pretrained, tokenizer
    and `attnkd.json` with `record` and the sha256 of every file), the curve and the best-epoch metrics; log them to `run`."""
    best = max(history, key=lambda h: h["val_accuracy"])
    summary = {"best_epoch": best["epoch"], "val_accuracy": best["val_accuracy"], "val_f1_macro": best["val_f1_macro"]}
    run.log_metrics({f"best/{k}": v for k, v in summary.items()}, best["epoch"])
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        atomic_write_json(tmp / "attnkd.json", record | {"sha256": files})
    write_curve(curve, history)
    atomic_write_json(metrics, summary)
    run.log_artifact(curve)
    run.log_artifact(out / "attnkd.json")
    return summary
