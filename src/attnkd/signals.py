"""The teacher signal store: the teacher's outputs and the tensors the distil losses need, extracted once.

Layout of a store directory:
    manifest.json          what is stored and the sha256 of every file (checked before use)
    {output}.npy           the teacher's raw outputs, float32, as the task names them: per example
                           (N, C) (classification: logits.npy); per token, flat, example i's
                           (n_i,) at offset sum_{j<i} n_j (span start/end logits); or a class
                           distribution per token, (sum n, C), example i's (n_i, C) rows from
                           row sum_{j<i} n_j (token classification: the manifest's token_classes)
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
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from attnkd.compute import CPU, Compute, to_device
from attnkd.data import Split, length_batches
from attnkd.artifacts import SignalManifest
from attnkd.io import sha256_file
from attnkd.store import NP_DTYPES, Store, decode, encode, list_files
from attnkd.models import raw_outputs

if TYPE_CHECKING:
    from attnkd.tasks.base import Task

FORMAT = "attnkd-signals/2"
SQUARE = ("attn", "scores")  # (H, n, n) per example
ROW = ("cls",)  # (n,) per example; every other kind is (n, D)
LAYER_FILE = re.compile(r"^\w+_layer\d+\.npy$")


def offsets(lengths: np.ndarray, kind: str, heads: int, width: int) -> np.ndarray:
    """(N + 1,) start of each example's tensor in a flat file of this kind."""
    n = lengths.astype(np.int64)
    sizes = heads * n**2 if kind in SQUARE else n if kind in ROW else width * n
    return np.concatenate([[0], np.cumsum(sizes)])


@torch.no_grad()
def extract(model, split: Split, wanted: dict[str, list[int]], dtype: str, batch_size: int, pad_id: int, out_dir: Path, describe: dict,
            task: Task, compute: Compute = CPU) -> SignalManifest:
    """Run the teacher once over `split` and write the store into `out_dir` (exists, empty).

    `wanted` maps a tensor kind to the teacher layers to store it for. The teacher's raw outputs
    (the task's `outputs`) are stored in float32: an "example" output as (N, C) `<name>.npy`, a
    "token" output ragged, (n_i,) per example, a "token_classes" output ragged rows, (n_i, C) per
    example. The teacher runs
    on compute.device at compute.precision; what is stored is in `dtype` whatever the precision.
    """
    from attnkd.data import collate

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
            x = value.cpu().numpy()  # (B, C), (B, T) or (B, T, C)
            layout = task.outputs[name]
            per_example = layout == "example"
            if name not in outputs:  # allocated once, at the first batch (the width C is known then)
                shape = (len(split), x.shape[1]) if per_example else (int(token_starts[-1]), *x.shape[2:])  # (N, C), (sum n,) or (sum n, C)
                outputs[name] = np.zeros(shape, dtype=np.float32)
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
    token_classes = sorted(n for n in outputs if task.outputs[n] == "token_classes") or None
    manifest = SignalManifest(format=FORMAT, num_examples=len(split), num_labels=int(model.config.num_labels), heads=heads, width=width, tensors=wanted,
                              attn_kind="post-softmax probabilities; scores are pre-softmax Q K^T / sqrt(d_head)", dtype=dtype, files=listing,
                              token_classes=token_classes, **describe)
    manifest.write(out_dir)
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


class SignalStore(Store):
    """Read side of the store: verified on open, memory-mapped, gathered per batch."""

    FORMAT = FORMAT

    def __init__(self, root: Path, verify: bool = True):
        super().__init__(root, verify)
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

    def missing(self, wanted: dict[str, list[int]]) -> str:
        for kind, layers in wanted.items():
            lacking = sorted(set(layers) - set(self.tensors.get(kind, [])) - set((self.manifest.online or {}).get(kind, [])))
            if lacking:
                return (f"{kind!r} of teacher layers {lacking} is not stored (has {self.tensors}); "
                        "re-run `dvc repro extract` with the same distill and methods params")
        return ""

    def batch(self, idx: np.ndarray, t: int, wanted: dict[str, list[int]] | None = None) -> tuple[torch.Tensor, dict[tuple[str, int], torch.Tensor]]:
        """The teacher's raw outputs, (B, C) per example or zero-padded (B, t) per token or (B, t, C)
        per token and class, and per
        wanted (kind, layer) (default: all), zero-padded (B, H, t, t) or (B, t, D). Only what is
        asked for is read from disk."""
        outputs = {name: torch.from_numpy(self._output(name, arr, idx, t)) for name, arr in self.outputs.items()}
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

    def _output(self, name: str, arr: np.ndarray, idx: np.ndarray, t: int) -> np.ndarray:
        if name not in (self.manifest.token_classes or []) and arr.ndim == 2:
            return np.asarray(arr[idx], dtype=np.float32)  # (B, C)
        x = np.zeros((len(idx), t, *arr.shape[1:]), dtype=np.float32)  # (B, t) or (B, t, C)
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

    def signals(self, idx: np.ndarray, batch: dict, wanted: dict[str, list[int]]) -> tuple[dict[str, torch.Tensor], dict[tuple[str, int], torch.Tensor]]:
        """The teacher's signals for a collated batch of these rows, on the batch's device (a signal source)."""
        device = batch["input_ids"].device
        outputs, tensors = self.batch(idx, batch["attention_mask"].shape[1], wanted)
        return {k: v.to(device) for k, v in outputs.items()}, {k: v.to(device) for k, v in tensors.items()}


@torch.no_grad()
def online_batch(teacher, batch: dict, wanted: dict[str, list[int]], task: Task) -> tuple[dict[str, torch.Tensor], dict[tuple[str, int], torch.Tensor]]:
    """The same signals as SignalStore.batch, from a teacher run on the batch now (eval mode).

    Padded positions hold whatever the teacher computed there; every loss masks them.
    """
    from attnkd.models import capture, forward, layer_tensor

    teacher.eval()
    with capture(teacher, hooked_layers(wanted), scores="scores" in wanted) as cap:
        out = forward(teacher, batch, output_attentions=bool({"attn", "cls"} & set(wanted)), output_hidden_states="hidden" in wanted)
    tensors = {(k, l): layer_tensor(k, l, out, cap).float() for k, ls in wanted.items() for l in ls}
    return {k: v.float() for k, v in raw_outputs(task, out).items()}, tensors


class Online:
    """A signal source that runs the teacher on every batch (distill.signals: online)."""

    def __init__(self, teacher, task: Task):
        self.teacher, self.task = teacher.eval(), task

    def signals(self, idx: np.ndarray, batch: dict, wanted: dict[str, list[int]]) -> tuple[dict[str, torch.Tensor], dict[tuple[str, int], torch.Tensor]]:
        return online_batch(self.teacher, batch, wanted, self.task)


def write_store(params, teacher_dir: Path, meta, train: Split, planned: dict[str, list[int]], out: Path, compute: Compute, task: Task) -> str:
    """The extract stage for an encoder teacher: the planned tensors that fit extract.max_gb (the
    rest left to distill, online), written atomically into `out`; its summary line."""
    from attnkd.models import load_model, load_tokenizer, weights_file
    from attnkd.io import atomic_dir

    model = load_model(teacher_dir, task).to(compute.device)
    pad_id = load_tokenizer(teacher_dir).pad_token_id
    max_bytes = int(params.extract.max_gb * 2**30)
    wanted, online = within_budget(train.lengths, planned, model.config.num_attention_heads, model.config.hidden_size, params.extract.dtype, max_bytes)
    describe = {
        "split": "train",
        "teacher_sha256": sha256_file(weights_file(teacher_dir)),
        "inputs_sha256": task.inputs_digest(train),  # what distill checks the store against
        "max_length": meta.max_length,
        "teacher_precision": compute.precision,  # of the forward pass; stored values are in `dtype`
    } | ({"online": online, "max_bytes": max_bytes} if online else {})
    with atomic_dir(out) as tmp:
        manifest = extract(model, train, wanted, params.extract.dtype, params.extract.batch_size, pad_id, tmp, describe, task, compute)
    size = sum(f.bytes for f in manifest.files.values())
    left = f"; over extract.max_gb {params.extract.max_gb:g}, left to distill (online): {online}" if online else ""
    return f"extract: {len(train)} examples, {wanted}, {size / 2**20:.1f} MiB -> {out}{left}"
