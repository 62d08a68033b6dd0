"""The signal store of an encoder-decoder teacher (task translation), written once by extract.

Every pair has two lengths: n_i source tokens and m_i target tokens (</s> included), and what a
method reads depends on its targets: the references of the training split ("reference"), or the
teacher's own translations of the training sources ("teacher", sequence-level KD). Entries of
`tensors` are "<target>/<kind>":

    teacher/ids         the teacher's translations: teacher_ids.npy, flat int32, pair i's m_i ids
                        (</s> last) at offset sum_{j<i} m_j; teacher_lengths.npy (N,) int32
    <target>/topk       its k most probable tokens at every target position under teacher forcing
                        (word-level KD): <target>_topk_ids.npy int32 and <target>_topk_logp.npy
                        float32 (log-probabilities at T = 1), (m_i, k) per pair, flat
    <target>/cross      cross-attention of decoder layer l, post-softmax: <target>_cross_layer{l}.npy,
                        (H, m_i, n_i) per pair at offset H * sum_{j<i} m_j n_j, in `dtype`
    <target>/enc        self-attention of encoder layer l: <target>_enc_layer{l}.npy, (H, n_i, n_i)
    <target>/dec        self-attention of decoder layer l (causal): <target>_dec_layer{l}.npy, (H, m_i, m_i)

with source_lengths.npy and reference_lengths.npy (N,) int32. Ragged (no padding): sizes grow with
sum(m n), not N x max^2; memory-mapped when read; every file's sha256 in the manifest, checked on
open.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from attnkd.artifacts import SignalManifest
from attnkd.compute import to_device
from attnkd.data import Split, length_batches
from attnkd.tasks.translation.model import EOS_ID, collate_pairs, forward, pad_topk, teacher_topk, translate
from attnkd.store import NP_DTYPES, Store, decode, encode, list_files

FORMAT = "attnkd-pair-signals/1"
TARGETS = ("reference", "teacher")
# per attention kind: the model output holding it, and its rows and columns (m: target, n: source tokens)
MAPS = {"cross": ("cross_attentions", "m", "n"), "enc": ("encoder_attentions", "n", "n"), "dec": ("decoder_attentions", "m", "m")}


def starts(sizes: np.ndarray) -> np.ndarray:
    """(N + 1,) offset of each pair's block in a flat file of these (N,) block sizes."""
    return np.concatenate([[0], np.cumsum(sizes.astype(np.int64))])


def map_starts(heads: int, m: np.ndarray, n: np.ndarray) -> dict[str, np.ndarray]:
    """Per attention kind, (N + 1,) offset of each pair's (H, rows, cols) block in its flat file."""
    sides = {"m": m, "n": n}
    return {kind: starts(heads * sides[r] * sides[c]) for kind, (_, r, c) in MAPS.items()}


def targets_of(split: Split, target: str, translations: list[np.ndarray] | None) -> list[np.ndarray]:
    return list(split.extra["target_ids"]) if target == "reference" else translations


@torch.no_grad()
def extract_pairs(model, split: Split, wanted: dict[str, list[int]], topk: int, beam: int, dtype: str, batch_size: int, out_dir: Path,
                  describe: dict, device="cpu") -> SignalManifest:
    """Run the teacher over the training pairs and write the store into `out_dir` (exists,
    empty): its translations first when a "teacher/..." entry is wanted (greedy, or beam search
    of `beam`), then, per target, teacher forcing over length-sorted batches for the top-k and the
    attention maps (MAPS) of the wanted layers."""
    model.eval()
    sources = list(split.input_ids)
    n = np.array([len(s) for s in sources], dtype=np.int64)
    translations = None
    if any(k.startswith("teacher/") for k in wanted):
        translations = [np.array([*ids, EOS_ID], dtype=np.int32) for ids in translate(model, sources, beam, batch_size=batch_size, device=device)]
        np.save(out_dir / "teacher_ids.npy", np.concatenate(translations).astype(np.int32))
    np.save(out_dir / "source_lengths.npy", n.astype(np.int32))
    heads = model.config.decoder_attention_heads
    for target in TARGETS:
        kinds = {k.split("/")[1]: layers for k, layers in wanted.items() if k.startswith(f"{target}/") and k != "teacher/ids"}
        if not kinds and not (target == "teacher" and translations is not None):
            continue
        tgts = targets_of(split, target, translations)
        m = np.array([len(t) for t in tgts], dtype=np.int64)
        np.save(out_dir / f"{target}_lengths.npy", m.astype(np.int32))
        if not kinds:
            continue
        tok_at, map_at, sides = starts(m), map_starts(heads, m, n), {"m": m, "n": n}
        files = {}
        if "topk" in kinds:
            files["ids"] = np.lib.format.open_memmap(out_dir / f"{target}_topk_ids.npy", mode="w+", dtype=np.int32, shape=(int(tok_at[-1]), topk))
            files["logp"] = np.lib.format.open_memmap(out_dir / f"{target}_topk_logp.npy", mode="w+", dtype=np.float32, shape=(int(tok_at[-1]), topk))
        maps = [(kind, l) for kind in MAPS for l in kinds.get(kind, [])]
        for kind, l in maps:
            files[kind, l] = np.lib.format.open_memmap(out_dir / f"{target}_{kind}_layer{l}.npy", mode="w+", dtype=NP_DTYPES[dtype],
                                                       shape=(int(map_at[kind][-1]),))
        for idx in tqdm(length_batches(m + n, batch_size), desc=f"extract {target}", unit="batch"):
            batch = collate_pairs([sources[i] for i in idx], [tgts[i] for i in idx])
            out = forward(model, to_device(batch, device), output_attentions=bool(maps))
            if "topk" in kinds:
                for i, (ids, logp) in zip(idx, teacher_topk(out.logits.cpu(), batch["decoder_attention_mask"], topk)):
                    files["ids"][tok_at[i] : tok_at[i + 1]] = ids
                    files["logp"][tok_at[i] : tok_at[i + 1]] = logp
            for kind, l in maps:
                attr, r, c = MAPS[kind]
                x = getattr(out, attr)[l - 1].float().cpu().numpy()  # (B, H, rows, cols)
                at = map_at[kind]
                for row, i in enumerate(idx):
                    files[kind, l][at[i] : at[i + 1]] = encode(x[row, :, : sides[r][i], : sides[c][i]].reshape(-1), dtype)
        for f in files.values():
            f.flush()
        del files
    manifest = SignalManifest(format=FORMAT, num_examples=len(split), heads=heads, topk=topk, beam=beam, dtype=dtype,
                            tensors={k: sorted(v) for k, v in sorted(wanted.items())}, files=list_files(out_dir), **describe)
    manifest.write(out_dir)
    return manifest


class PairStore(Store):
    """Read side: verified on open, memory-mapped, gathered per batch and zero-padded."""

    FORMAT = FORMAT
    UNIT = "pairs"

    def __init__(self, root: Path, verify: bool = True):
        super().__init__(root, verify)
        load = lambda name: np.load(self.root / name, mmap_mode="r")  # noqa: E731
        self.n = np.load(self.root / "source_lengths.npy").astype(np.int64)
        self.m = {t: np.load(self.root / f"{t}_lengths.npy").astype(np.int64) for t in TARGETS if (self.root / f"{t}_lengths.npy").is_file()}
        self.tok_at = {t: starts(m) for t, m in self.m.items()}
        self.map_at = {t: map_starts(self.manifest.heads, m, self.n) for t, m in self.m.items()}
        self.files = {name: load(name) for name in self.manifest.files if name not in ("source_lengths.npy", *(f"{t}_lengths.npy" for t in TARGETS))}

    def missing(self, wanted: dict[str, list[int]]) -> str:
        for key, layers in wanted.items():
            if key not in self.manifest.tensors or not set(layers) <= set(self.manifest.tensors[key]):
                return f"{key} {layers or ''} is not stored (has {self.manifest.tensors}); re-run `dvc repro extract`"
        return ""

    def translations(self) -> list[np.ndarray]:
        """The teacher's translation of every training source (ids, </s> last)."""
        flat, at = self.files["teacher_ids.npy"], self.tok_at["teacher"]
        return [np.asarray(flat[at[i] : at[i + 1]], dtype=np.int32) for i in range(len(self.n))]

    def batch(self, idx: np.ndarray, target: str, wanted: dict[str, list[int]], t: int, s: int) -> dict:
        """For pairs `idx` and one target: "topk_ids" (B, t, k) and "topk_logp" (B, t, k) when
        topk is wanted, and per wanted layer ("cross", l) (B, H, t, s), ("enc", l) (B, H, s, s),
        ("dec", l) (B, H, t, t), zero-padded to t target and s source positions."""
        out: dict = {}
        m, n, tok_at = self.m[target], self.n, self.tok_at[target]
        if f"{target}/topk" in wanted:
            rows = [(np.asarray(self.files[f"{target}_topk_ids.npy"][tok_at[i] : tok_at[i + 1]]),
                     np.asarray(self.files[f"{target}_topk_logp.npy"][tok_at[i] : tok_at[i + 1]])) for i in idx]
            out["topk_ids"], out["topk_logp"] = pad_topk(rows, t)
        h, sides, padded = self.manifest.heads, {"m": m, "n": n}, {"m": t, "n": s}
        for kind, (_, r, c) in MAPS.items():
            at = self.map_at[target][kind]
            for l in wanted.get(f"{target}/{kind}", []):
                x = np.zeros((len(idx), h, padded[r], padded[c]), dtype=np.float32)
                for row, i in enumerate(idx):
                    part = decode(self.files[f"{target}_{kind}_layer{l}.npy"][at[i] : at[i + 1]], self.manifest.dtype)
                    x[row, :, : sides[r][i], : sides[c][i]] = part.reshape(h, sides[r][i], sides[c][i])
                out[(kind, l)] = torch.from_numpy(x)
        return out


class PairSource:
    """What one method reads of a PairStore: the signals under its targets, per batch, in the
    shapes distill's objective takes (a signal source, as signals.SignalStore.signals)."""

    def __init__(self, store: PairStore, target: str):
        self.store, self.target = store, target

    def signals(self, idx: np.ndarray, batch: dict, wanted: dict[str, list[int]]) -> tuple[dict[str, torch.Tensor], dict[tuple[str, int], torch.Tensor]]:
        """({"topk_ids", "topk_logp"} when stored for the target, {(kind, l): the map}: ("cross", l) (B, H, m, n) ...)."""
        keys = {f"{self.target}/{kind}": layers for kind, layers in wanted.items()}
        got = self.store.batch(idx, self.target, keys, batch["decoder_input_ids"].shape[1], batch["input_ids"].shape[1])
        device = batch["input_ids"].device
        outputs = {k: got[k].to(device) for k in ("topk_ids", "topk_logp") if k in got}
        return outputs, {k: v.to(device) for k, v in got.items() if isinstance(k, tuple)}


__all__ = ["FORMAT", "PairSource", "PairStore", "TARGETS", "extract_pairs"]
