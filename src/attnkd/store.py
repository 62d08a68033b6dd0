"""What every signal store shares, whatever the task's layout: one manifest type
(`artifacts.SignalManifest`, with the parts of each layout), verified on open; storage dtypes
(fp16, fp32, bf16 as raw bits); the listing of the written files; and the check, before any
training, that a store holds what a method reads and came from these inputs and this teacher.

The layouts: `attnkd.signals` (an encoder teacher: outputs per example or per token, ragged
square, vector and row kinds per layer) and `attnkd.tasks.translation.store` (an encoder-decoder
teacher: per target, top-k and (H, rows, cols) attention maps per pair).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from attnkd.artifacts import FileInfo, SignalManifest, verify_files
from attnkd.errors import UserError
from attnkd.io import read_json, sha256_file

NP_DTYPES = {"float16": np.float16, "float32": np.float32, "bfloat16": np.uint16}  # numpy has no bfloat16: raw bits


def encode(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values in the storage dtype; bfloat16 as its 16 raw bits (round to nearest even)."""
    if dtype == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    return x.astype(NP_DTYPES[dtype])


def decode(x: np.ndarray, dtype: str) -> np.ndarray:
    """Stored values back to float32 (exact for every storage dtype)."""
    if dtype == "bfloat16":
        return (x.astype(np.uint32) << 16).view(np.float32)
    return x.astype(np.float32)


def list_files(out_dir: Path) -> dict[str, FileInfo]:
    """Every .npy file of a store being written, for its manifest: sha256, bytes, shape, dtype."""
    listing = {}
    for path in sorted(out_dir.glob("*.npy")):
        arr = np.load(path, mmap_mode="r")
        listing[path.name] = FileInfo(sha256=sha256_file(path), bytes=path.stat().st_size, shape=list(arr.shape), dtype=str(arr.dtype))
    return listing


def read_manifest(root: Path, fmt: str, verify: bool) -> SignalManifest:
    """A store's manifest, refused when missing or of another format (a store of another task's
    layout); with `verify`, every listed file's size and sha256 checked."""
    path = root / SignalManifest.FILE
    if not path.is_file():
        raise UserError(f"{path}: signal store manifest not found (run `dvc repro extract`)")
    found = read_json(path).get("format")
    if found != fmt:
        raise UserError(f"{path}: format {found!r} is not {fmt!r} (a store of another task?); re-run `dvc repro extract`")
    manifest = SignalManifest.read(root)
    if verify:
        verify_files(root, {n: f.sha256 for n, f in manifest.files.items()}, SignalManifest.FILE, SignalManifest.RERUN,
                     sizes={n: f.bytes for n, f in manifest.files.items()})
    return manifest


class Store:
    """The read side every layout shares: the manifest of its FORMAT, verified on open (every
    listed file's size and sha256), and `require`."""

    FORMAT: ClassVar[str]
    UNIT: ClassVar[str] = "examples"  # what one row of the store is, in messages

    def __init__(self, root: Path, verify: bool = True):
        self.root = Path(root)
        self.manifest = read_manifest(self.root, self.FORMAT, verify)

    def missing(self, wanted: dict[str, list[int]]) -> str:
        """What of `wanted` the store lacks, in words ("" when it has it all)."""
        raise NotImplementedError

    def require(self, wanted: dict[str, list[int]], inputs_sha256: str, teacher_sha256: str, examples: int | None = None) -> None:
        """Refuse a store that lacks what the losses need, or came from other inputs, another
        teacher or another number of training rows."""
        where = self.root / SignalManifest.FILE
        lacking = self.missing(wanted)
        if lacking:
            raise UserError(f"{where}: {lacking}")
        if self.manifest.inputs_sha256 != inputs_sha256:
            raise UserError(f"{where}: extracted from different prepared data; re-run `dvc repro extract`")
        if self.manifest.teacher_sha256 != teacher_sha256:
            raise UserError(f"{where}: extracted from a different teacher; re-run `dvc repro extract`")
        if examples is not None and self.manifest.num_examples != examples:
            raise UserError(f"{where}: {self.manifest.num_examples} {self.UNIT}, training split has {examples}; re-run `dvc repro extract`")
