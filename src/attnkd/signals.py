"""The teacher signal store: soft logits and attention maps, extracted once, read many times.

Layout of a store directory:
    manifest.json          what is stored and the sha256 of every file (checked before use)
    logits.npy             (N, C) float32 teacher logits
    lengths.npy            (N,) int32 real-token count of each example
    attn_layer{l}.npy      flat array: example i's (H, n_i, n_i) map at offset H * sum_{j<i} n_j^2

Maps are ragged (no padding), so bytes grow with sum(n_i^2), not N * max_len^2; they are stored
in the configured dtype (fp16 by default) and memory-mapped when read, so reading does not load
the store into memory.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from attnkd.data import Split, length_batches
from attnkd.errors import UserError
from attnkd.io import atomic_write_json, sha256_file

FORMAT = "attnkd-signals/1"
NP_DTYPES = {"float16": np.float16, "float32": np.float32, "bfloat16": None}


def _np_dtype(name: str):
    if name == "bfloat16":
        raise UserError("extract.dtype: bfloat16 cannot be memory-mapped by numpy yet; use float16 or float32")
    return NP_DTYPES[name]


def offsets(lengths: np.ndarray, heads: int) -> np.ndarray:
    """(N + 1,) start of each example's map in a flat layer file."""
    sizes = heads * lengths.astype(np.int64) ** 2
    return np.concatenate([[0], np.cumsum(sizes)])


@torch.no_grad()
def extract(model, split: Split, layers: list[int], dtype: str, batch_size: int, pad_id: int, out_dir: Path, describe: dict) -> dict:
    """Run the teacher once over `split` and write the store into `out_dir` (must exist, empty)."""
    from attnkd.data import collate

    model.eval()
    np_dtype = _np_dtype(dtype)
    heads = model.config.num_attention_heads
    lengths = split.lengths
    starts = offsets(lengths, heads)
    logits = np.zeros((len(split), model.config.num_labels), dtype=np.float32)
    maps = {
        l: np.lib.format.open_memmap(out_dir / f"attn_layer{l}.npy", mode="w+", dtype=np_dtype, shape=(int(starts[-1]),))
        for l in layers
    }
    for idx in tqdm(length_batches(lengths, batch_size), desc="extract", unit="batch"):
        batch = collate(split, idx, pad_id)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_attentions=True)
        logits[idx] = out.logits.float().numpy()
        for l in layers:
            attn = out.attentions[l - 1].float().numpy()  # (B, H, T, T)
            for row, i in enumerate(idx):
                n = lengths[i]
                maps[l][starts[i] : starts[i + 1]] = attn[row, :, :n, :n].reshape(-1)
    for m in maps.values():
        m.flush()
    del maps
    np.save(out_dir / "logits.npy", logits)
    np.save(out_dir / "lengths.npy", lengths.astype(np.int32))
    files = {}
    for path in sorted(out_dir.glob("*.npy")):
        arr = np.load(path, mmap_mode="r")
        files[path.name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size, "shape": list(arr.shape), "dtype": str(arr.dtype)}
    manifest = {
        "format": FORMAT,
        "num_examples": len(split),
        "num_labels": int(model.config.num_labels),
        "heads": heads,
        "layers": layers,
        "kind": "attention_probs",
        "dtype": dtype,
        "files": files,
        **describe,
    }
    atomic_write_json(out_dir / "manifest.json", manifest)
    return manifest


class SignalStore:
    """Read side of the store: verified on open, memory-mapped, gathered per batch."""

    def __init__(self, root: Path, verify: bool = True):
        self.root = Path(root)
        path = self.root / "manifest.json"
        if not path.is_file():
            raise UserError(f"{path}: signal store manifest not found (run `dvc repro extract`)")
        try:
            self.manifest = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: not valid JSON ({err})") from None
        if self.manifest.get("format") != FORMAT:
            raise UserError(f"{path}: format {self.manifest.get('format')!r} is not {FORMAT!r}; re-run `dvc repro extract`")
        if verify:
            self._verify()
        self.logits = np.load(self.root / "logits.npy", mmap_mode="r")
        self.lengths = np.load(self.root / "lengths.npy").astype(np.int64)
        self.heads = int(self.manifest["heads"])
        self.layers = [int(l) for l in self.manifest["layers"]]
        self.starts = offsets(self.lengths, self.heads)
        self.maps = {l: np.load(self.root / f"attn_layer{l}.npy", mmap_mode="r") for l in self.layers}

    def _verify(self) -> None:
        for name, info in self.manifest["files"].items():
            path = self.root / name
            if not path.is_file():
                raise UserError(f"{path}: listed in the signal manifest but missing; re-run `dvc repro extract`")
            if path.stat().st_size != info["bytes"]:
                raise UserError(f"{path}: {path.stat().st_size} bytes, manifest says {info['bytes']} (truncated or altered); re-run `dvc repro extract`")
            if sha256_file(path) != info["sha256"]:
                raise UserError(f"{path}: sha256 does not match the manifest (altered); re-run `dvc repro extract`")

    def require(self, layers: list[int], inputs_sha256: str, teacher_sha256: str) -> None:
        """Refuse a store that does not cover these layers or came from other inputs or teacher."""
        where = self.root / "manifest.json"
        missing = sorted(set(layers) - set(self.layers))
        if missing:
            raise UserError(f"{where}: teacher layers {missing} are not stored (has {self.layers}); re-run `dvc repro extract` with the same distill.layer_map")
        if self.manifest.get("inputs_sha256") != inputs_sha256:
            raise UserError(f"{where}: extracted from different prepared data; re-run `dvc repro extract`")
        if self.manifest.get("teacher_sha256") != teacher_sha256:
            raise UserError(f"{where}: extracted from a different teacher; re-run `dvc repro extract`")

    def batch(self, idx: np.ndarray, t: int) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Teacher logits (B, C) and, per stored layer, maps zero-padded to (B, H, t, t)."""
        logits = torch.from_numpy(np.asarray(self.logits[idx], dtype=np.float32))
        maps = {}
        for l, flat in self.maps.items():
            out = np.zeros((len(idx), self.heads, t, t), dtype=np.float32)
            for row, i in enumerate(idx):
                n = int(self.lengths[i])
                out[row, :, :n, :n] = flat[self.starts[i] : self.starts[i + 1]].reshape(self.heads, n, n)
            maps[l] = torch.from_numpy(out)
        return logits, maps

    def nbytes(self) -> int:
        return sum(info["bytes"] for info in self.manifest["files"].values())
