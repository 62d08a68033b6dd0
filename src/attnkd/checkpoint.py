"""Resumable training: atomic checkpoints of everything a run needs to continue bit for bit.

A stage's checkpoints live beside its output dir, in `<out>.ckpt/` (ignored by git, not a DVC
output), and carry a key: a digest of the run's params, inputs and code (the attnkd package's
source: a checkpoint keeps the state of the code that wrote it, e.g. the best score so far by its
selection metric). A checkpoint written under other params, inputs or code is discarded, never
resumed. The finished stage deletes the dir.

The file is written to a temporary name and renamed, so a kill at any moment leaves either the
previous checkpoint or the new one. It holds only tensors and plain values and is read with
`torch.load(weights_only=True)`: no pickled code.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch

from attnkd.errors import UserError


@cache
def code_digest() -> str:
    """sha256 of the attnkd package's Python source files (paths and contents, in path order)."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


@dataclass(frozen=True)
class Checkpoints:
    dir: Path
    key: str  # digest of the params, inputs and code the run was started with
    every: int  # save every N optimiser steps (and at each epoch end); 0 = off

    @classmethod
    def beside(cls, out: Path, identity: dict, every: int) -> Checkpoints:
        key = hashlib.sha256(json.dumps(identity | {"code": code_digest()}, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return cls(Path(out).with_name(Path(out).name + ".ckpt"), key, every)

    @property
    def file(self) -> Path:
        return self.dir / "state.pt"

    def load(self) -> dict | None:
        """The state to resume from, or None (off, none yet, or written under other params, inputs or code)."""
        if not self.every or not self.file.is_file():
            return None
        try:
            state = torch.load(self.file, map_location="cpu", weights_only=True)
        except Exception as err:  # a file this code did not write; the rename makes partial writes impossible
            raise UserError(f"{self.file}: unreadable checkpoint ({type(err).__name__}); delete {self.dir} to start afresh") from None
        if state.get("key") != self.key:
            print(f"{self.file}: written under other params, inputs or code; starting afresh")
            self.clear()
            return None
        print(f"resuming from {self.file} at step {state['step']}")
        return state

    def save(self, state: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / "state.pt.tmp"
        with open(tmp, "wb") as f:
            torch.save(state | {"key": self.key}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.file)

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def rng_state() -> dict:
    """Every random generator training draws from (dropout uses torch's), as tensors."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["internal"]), p["gauss"]))
