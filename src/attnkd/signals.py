"""The teacher signal store: the teacher's outputs and the tensors the distil losses need, extracted once.

Layout of a store directory:
    manifest.json          what is stored and the sha256 of every file (checked before use)
    {output}.npy           the teacher's raw outputs, float32, as the task names them: per example
                           (N, C) (classification: logits.npy), or per token, flat, example i's
                           (n_i,) at offset sum_{j<i} n_j (span start/end logits)
    lengths.npy            (N,) int32 real-token count of each example
    {kind}_layer{l}.npy    flat array of one kind of tensor for teacher layer l (1-based):
                           square kinds (attn: probabilities, scores: Q K^T / sqrt(d)) store
                           example i as (H, n_i, n_i) at offset H * sum_{j<i} n_j^2;
                           vector kinds (q, k, v: projections, hidden: layer output) store
                           (n_i, D) at offset D * sum_{j<i} n_j; row kinds (cls: the [CLS]
                           query's attention row, head-averaged) store (n_i,) at sum_{j<i} n_j.

Tensors are ragged (no padding), so bytes grow with sum(n_i^2) or sum(n_i), not with
N * max_len; they are stored in the configured dtype (fp16 by default; fp32; or bf16, kept as raw 16-bit
words since numpy has no bfloat16) and memory-mapped when
read, so reading does not load the store into memory; the pages a batch read are unmapped after
it, so the reader's resident memory stays that of one batch however large the store.
"""

from __future__ import annotations

import mmap
import re
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from attnkd.compute import CPU, Compute, to_device
from attnkd.data import Split, length_batches
from attnkd.errors import UserError
from attnkd.artifacts import FileInfo, SignalManifest, verify_files
from attnkd.io import read_json, sha256_file

FORMAT = "attnkd-signals/2"
SQUARE = ("attn", "scores")  # (H, n, n) per example
ROW = ("cls",)  # (n,) per example; every other kind is (n, D)
LAYER_FILE = re.compile(r"^\w+_layer\d+\.npy$")
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


def offsets(lengths: np.ndarray, kind: str, heads: int, width: int) -> np.ndarray:
    """(N + 1,) start of each example's tensor in a flat file of this kind."""
    n = lengths.astype(np.int64)
    sizes = heads * n**2 if kind in SQUARE else n if kind in ROW else width * n
    return np.concatenate([[0], np.cumsum(sizes)])


@torch.no_grad()
def extract(model, split: Split, wanted: dict[str, list[int]], dtype: str, batch_size: int, pad_id: int, out_dir: Path, describe: dict,
            compute: Compute = CPU, task=None) -> SignalManifest:
    """Run the teacher once over `split` and write the store into `out_dir` (exists, empty).

    `wanted` maps a tensor kind to the teacher layers to store it for. The teacher's raw outputs
    (the task's `outputs`, default classification logits) are stored in float32: an "example"
    output as (N, C) `<name>.npy`, a "token" output ragged, (n_i,) per example. The teacher runs
    on compute.device at compute.precision; what is stored is in `dtype` whatever the precision.
    """
    from attnkd.data import collate
    from attnkd.tasks import get_task

    task = task or get_task("classification")
    model.eval()
    np_dtype = NP_DTYPES[dtype]
    heads, width = model.config.num_attention_heads, model.config.hidden_size
    lengths = split.lengths
    wanted = {k: sorted(set(v)) for k, v in wanted.items() if v}
    starts = {k: offsets(lengths, k, heads, width) for k in wanted}
    token_starts = offsets(lengths, "vector", 1, 1)  # one value per token: a vector kind of width 1
    outputs: dict[str, np.ndarray] = {}  # name -> (N, C) or flat (sum n,), allocated at the first batch
    files = {
        (k, l): np.lib.format.open_memmap(out_dir / f"{k}_layer{l}.npy", mode="w+", dtype=np_dtype, shape=(int(starts[k][-1]),))
        for k, layers in wanted.items()
        for l in layers
    }
    for idx in tqdm(length_batches(lengths, batch_size), desc="extract", unit="batch"):
        with compute.autocast():
            batch_outputs, tensors = online_batch(model, to_device(collate(split, idx, pad_id), compute.device), wanted, task)
        for name, value in batch_outputs.items():
            x = value.cpu().numpy()  # (B, C) or (B, T)
            per_example = task.outputs[name] == "example"
            if name not in outputs:  # allocated once, at the first batch (the width C is known then)
                outputs[name] = np.zeros((len(split), x.shape[1]) if per_example else int(token_starts[-1]), dtype=np.float32)
            if per_example:
                outputs[name][idx] = x
            else:
                flat = outputs[name]
                for row, i in enumerate(idx):
                    flat[token_starts[i] : token_starts[i + 1]] = x[row, : lengths[i]]
        for (kind, l), flat in files.items():
            x = tensors[(kind, l)].cpu().numpy()  # (B, H, T, T) or (B, T, D)
            for row, i in enumerate(idx):
                n = lengths[i]
                part = x[row, :, :n, :n] if kind in SQUARE else x[row, :n]
                flat[starts[kind][i] : starts[kind][i + 1]] = encode(part.reshape(-1), dtype)
    for m in files.values():
        m.flush()
    del files
    for name, arr in outputs.items():
        np.save(out_dir / f"{name}.npy", arr)
    np.save(out_dir / "lengths.npy", lengths.astype(np.int32))
    listing = list_files(out_dir)
    manifest = SignalManifest(format=FORMAT, num_examples=len(split), num_labels=int(model.config.num_labels), heads=heads, width=width, tensors=wanted,
                              attn_kind="post-softmax probabilities; scores are pre-softmax Q K^T / sqrt(d_head)", dtype=dtype, files=listing, **describe)
    manifest.write(out_dir)
    return manifest


def list_files(out_dir: Path) -> dict[str, FileInfo]:
    """Every .npy file of a store being written, for its manifest: sha256, bytes, shape, dtype."""
    listing = {}
    for path in sorted(out_dir.glob("*.npy")):
        arr = np.load(path, mmap_mode="r")
        listing[path.name] = FileInfo(sha256=sha256_file(path), bytes=path.stat().st_size, shape=list(arr.shape), dtype=str(arr.dtype))
    return listing


def read_manifest(root: Path, manifest_type, fmt: str, verify: bool):
    """A store's manifest (`manifest_type`: SignalManifest or PairManifest), refused when missing
    or of another format; with `verify`, every listed file's size and sha256 checked."""
    path = root / manifest_type.FILE
    if not path.is_file():
        raise UserError(f"{path}: signal store manifest not found (run `dvc repro extract`)")
    found = read_json(path).get("format")
    if found != fmt:
        raise UserError(f"{path}: format {found!r} is not {fmt!r} (a store of another task?); re-run `dvc repro extract`")
    manifest = manifest_type.read(root)
    if verify:
        verify_files(root, {n: f.sha256 for n, f in manifest.files.items()}, manifest_type.FILE, manifest_type.RERUN,
                     sizes={n: f.bytes for n, f in manifest.files.items()})
    return manifest


def within_budget(lengths: np.ndarray, wanted: dict[str, list[int]], heads: int, width: int, dtype: str, max_bytes: int
                  ) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Split the planned tensors into those stored (in plan order, kind by kind and layer by
    layer, while their bytes fit `max_bytes`) and those left to compute online."""
    itemsize = np.dtype(NP_DTYPES[dtype]).itemsize
    stored: dict[str, list[int]] = {}
    online: dict[str, list[int]] = {}
    total = 0
    for kind, layers in wanted.items():
        size = int(offsets(lengths, kind, heads, width)[-1]) * itemsize
        for l in layers:
            if total + size <= max_bytes:
                stored.setdefault(kind, []).append(l)
                total += size
            else:
                online.setdefault(kind, []).append(l)
    return stored, online


def split_wanted(wanted: dict[str, list[int]], online: dict[str, list[int]] | None) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """(from the store, from the teacher now) of what a method reads, given the store's online part."""
    online = online or {}
    stored = {k: [l for l in ls if l not in online.get(k, [])] for k, ls in wanted.items()}
    live = {k: [l for l in ls if l in online.get(k, [])] for k, ls in wanted.items()}
    return {k: v for k, v in stored.items() if v}, {k: v for k, v in live.items() if v}


def hooked_layers(wanted: dict[str, list[int]]) -> list[int]:
    """Layers whose Q/K/V projections must be captured: only those of kinds that need them."""
    return sorted({l for k, ls in wanted.items() if k in ("q", "k", "v", "scores") for l in ls})


class SignalStore:
    """Read side of the store: verified on open, memory-mapped, gathered per batch."""

    def __init__(self, root: Path, verify: bool = True):
        self.root = Path(root)
        self.manifest = read_manifest(self.root, SignalManifest, FORMAT, verify)
        self.lengths = np.load(self.root / "lengths.npy").astype(np.int64)
        # the teacher's raw outputs: every listed file but the lengths and the layer tensors;
        # (N, C) per example, or flat (sum n,) per token
        names = [Path(f).stem for f in self.manifest.files if f != "lengths.npy" and not LAYER_FILE.match(f)]
        self.outputs = {name: np.load(self.root / f"{name}.npy", mmap_mode="r") for name in names}
        self.token_starts = offsets(self.lengths, "vector", 1, 1)  # per-token outputs: width 1
        self.heads, self.width, self.dtype = self.manifest.heads, self.manifest.width, self.manifest.dtype
        self.tensors = self.manifest.tensors
        self.starts = {k: offsets(self.lengths, k, self.heads, self.width) for k in self.tensors}
        self.files = {(k, l): np.load(self.root / f"{k}_layer{l}.npy", mmap_mode="r") for k, ls in self.tensors.items() for l in ls}

    def require(self, wanted: dict[str, list[int]], inputs_sha256: str, teacher_sha256: str) -> None:
        """Refuse a store that lacks a tensor the losses need or came from other inputs or teacher."""
        where = self.root / "manifest.json"
        for kind, layers in wanted.items():
            missing = sorted(set(layers) - set(self.tensors.get(kind, [])) - set((self.manifest.online or {}).get(kind, [])))
            if missing:
                raise UserError(
                    f"{where}: {kind!r} of teacher layers {missing} is not stored (has {self.tensors}); "
                    "re-run `dvc repro extract` with the same distill and methods params"
                )
        if self.manifest.inputs_sha256 != inputs_sha256:
            raise UserError(f"{where}: extracted from different prepared data; re-run `dvc repro extract`")
        if self.manifest.teacher_sha256 != teacher_sha256:
            raise UserError(f"{where}: extracted from a different teacher; re-run `dvc repro extract`")

    def batch(self, idx: np.ndarray, t: int, wanted: dict[str, list[int]] | None = None) -> tuple[torch.Tensor, dict[tuple[str, int], torch.Tensor]]:
        """The teacher's raw outputs, (B, C) per example or zero-padded (B, t) per token, and per
        wanted (kind, layer) (default: all), zero-padded (B, H, t, t) or (B, t, D). Only what is
        asked for is read from disk."""
        outputs = {name: torch.from_numpy(self._output(arr, idx, t)) for name, arr in self.outputs.items()}
        keys = self.files if wanted is None else [(k, l) for k, ls in wanted.items() for l in ls]
        out = {}
        for kind, l in keys:
            flat = self.files[(kind, l)]
            starts = self.starts[kind]
            shape = (len(idx), self.heads, t, t) if kind in SQUARE else (len(idx), t) if kind in ROW else (len(idx), t, self.width)
            x = np.zeros(shape, dtype=np.float32)
            for row, i in enumerate(idx):
                n = int(self.lengths[i])
                part = decode(flat[starts[i] : starts[i + 1]], self.dtype)
                if kind in SQUARE:
                    x[row, :, :n, :n] = part.reshape(self.heads, n, n)
                else:
                    x[row, :n] = part.reshape(n, *x.shape[2:])
            out[(kind, l)] = torch.from_numpy(x)
        self._release()
        return outputs, out

    def _output(self, arr: np.ndarray, idx: np.ndarray, t: int) -> np.ndarray:
        if arr.ndim == 2:
            return np.asarray(arr[idx], dtype=np.float32)  # (B, C)
        x = np.zeros((len(idx), t), dtype=np.float32)  # (B, t)
        for row, i in enumerate(idx):
            x[row, : self.lengths[i]] = arr[self.token_starts[i] : self.token_starts[i + 1]]
        return x

    def _release(self) -> None:
        """Unmap the pages read so far. They stay in the page cache (a later epoch reads them from
        memory), but leave this process: the kernel maps up to 64 KiB around every page read, so
        without this the resident memory of an epoch would grow towards the size of the store."""
        for arr in (*self.outputs.values(), *self.files.values()):
            mapping = getattr(arr, "_mmap", None)  # np.memmap's mmap object
            if mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
                mapping.madvise(mmap.MADV_DONTNEED)


@torch.no_grad()
def online_batch(teacher, batch: dict, wanted: dict[str, list[int]], task=None) -> tuple[dict[str, torch.Tensor], dict[tuple[str, int], torch.Tensor]]:
    """The same signals as SignalStore.batch, from a teacher run on the batch now (eval mode).

    Padded positions hold whatever the teacher computed there; every loss masks them.
    """
    from attnkd.models import capture, forward, layer_tensor
    from attnkd.tasks import get_task, raw_outputs

    teacher.eval()
    with capture(teacher, hooked_layers(wanted), scores="scores" in wanted) as cap:
        out = forward(teacher, batch, output_attentions=bool({"attn", "cls"} & set(wanted)), output_hidden_states="hidden" in wanted)
    tensors = {(k, l): layer_tensor(k, l, out, cap).float() for k, ls in wanted.items() for l in ls}
    return {k: v.float() for k, v in raw_outputs(task or get_task("classification"), out).items()}, tensors


def teacher_batch(source, idx: np.ndarray, batch: dict, wanted: dict[str, list[int]], task=None) -> tuple[dict[str, torch.Tensor], dict[tuple[str, int], torch.Tensor]]:
    """The teacher's signals for one batch: read from a SignalStore (or a PairSource: an
    encoder-decoder teacher's store), or from a teacher run now."""
    if hasattr(source, "store"):  # pair_store.PairSource
        return source.batch(idx, batch, wanted)
    if isinstance(source, SignalStore):
        device = batch["input_ids"].device
        outputs, tensors = source.batch(idx, batch["attention_mask"].shape[1], wanted)
        return {k: v.to(device) for k, v in outputs.items()}, {k: v.to(device) for k, v in tensors.items()}
    return online_batch(source, batch, wanted, task)
