"""Helpers shared by the entry scripts in pipeline/: argument parsing, seeding, threads."""

from __future__ import annotations

import argparse
import random

import numpy as np
import torch

from attnkd.params import Params, load_params


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
