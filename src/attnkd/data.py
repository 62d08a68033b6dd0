"""Data: clean the raw splits, map labels, split, tokenise, and batch by length.

Prepared splits are Parquet files with columns `text`, `text_pair`, `label` (int), `input_ids`
(token ids, truncated to max_length, special tokens included) and `token_type_ids`. Tokenising once here means every later stage
sees exactly the same ids, so the ragged signal store lines up with the student's inputs.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from attnkd.errors import UserError
from attnkd.artifacts import PreparedMeta, TransferMeta, verify_files

SPLITS = ("train", "validation", "test")
UNLABELLED = -1  # the label of a training row without a gold label (few labels, the transfer set): only the teacher labels it
STANDARD_COLUMNS = ("text", "text_pair", "label", "input_ids", "token_type_ids")  # every task's; a task may add its own
INTEGER = re.compile(r"^-?\d+$")


def squash(text: str) -> str:
    return " ".join(text.split())


def clean(frame: pd.DataFrame, pair: bool) -> tuple[pd.DataFrame, dict]:
    """Collapse whitespace; drop rows with an empty text (or pair text), a missing label, or the
    same text (and pair) as an earlier row. Returns the kept rows and what was dropped, and why."""
    df = frame.assign(text=frame["text"].map(squash), text_pair=frame["text_pair"].map(squash), label=frame["label"].str.strip())
    empty = df["text"].eq("") | (df["text_pair"].eq("") if pair else False)
    no_label = ~empty & df["label"].eq("")
    df = df[~empty & ~no_label]
    dup = df.duplicated(["text", "text_pair"], keep="first")
    stats = {"rows_read": len(frame), "dropped_empty_text": int(empty.sum()), "dropped_missing_label": int(no_label.sum()), "dropped_duplicates": int(dup.sum())}
    return df[~dup].reset_index(drop=True), stats


def label_names_for(values: pd.Series, given: list[str], source_names: list[str] | None) -> tuple[list[str], dict[str, int]]:
    """Class names (class id = position) and the map from raw label value to class id.

    Integer labels with names (data.label_names, else the source's own) keep their value as the id;
    integer labels without names are numbered in numeric order; string labels in sorted order, or
    in the order of data.label_names.
    """
    distinct = sorted(set(values))
    names = list(given) or list(source_names or [])
    if all(INTEGER.match(v) for v in distinct):
        if names:
            bad = [v for v in distinct if not 0 <= int(v) < len(names)]
            if bad:
                raise UserError(f"data.label_names: {len(names)} names, but the training data has integer label {bad[0]}")
            return names, {str(i): i for i in range(len(names))}
        ordered = sorted(distinct, key=int)
        return ordered, {v: i for i, v in enumerate(ordered)}
    if given:
        missing = [v for v in distinct if v not in given]
        if missing:
            raise UserError(f"data.label_names: does not name label {missing[0]!r} of the training data")
        return list(given), {v: i for i, v in enumerate(given)}
    return distinct, {v: i for i, v in enumerate(distinct)}


def check_labels(df: pd.DataFrame, mapping: dict[str, int], where: str, column: str) -> None:
    """Every label of an evaluation split must be a class the training data defines."""
    unknown = ~df["label"].isin(mapping.keys())
    if unknown.any():
        row = df[unknown].iloc[0]
        raise UserError(
            f"{where}: row {row['row']}, column {column!r}: label {row['label']!r} does not occur in the training data "
            f"(classes: {sorted(mapping)})"
        )


def drop_seen_in_eval(train: pd.DataFrame, evals: list[pd.DataFrame]) -> tuple[pd.DataFrame, int]:
    """Remove training rows whose text (and pair) also occurs in an evaluation split."""
    seen = set()
    for df in evals:
        seen |= set(zip(df["text"], df["text_pair"]))
    hit = pd.Series([k in seen for k in zip(train["text"], train["text_pair"])], index=train.index, dtype=bool)
    return train[~hit].reset_index(drop=True), int(hit.sum())


def split_off(df: pd.DataFrame, fraction: float, seed: int, where: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A stratified part of `df` of the given fraction, fixed by the seed."""
    from sklearn.model_selection import train_test_split  # here: prepare is its only user, and it costs every stage a second to import

    try:
        return train_test_split(df, test_size=fraction, stratify=df["label"], random_state=seed)
    except ValueError as err:
        raise UserError(f"{where}: cannot make a stratified split ({err}); add data or give the split as a file") from None


def complete_splits(splits: dict[str, pd.DataFrame], val_fraction: float, test_fraction: float, seed: int, where: str) -> dict[str, pd.DataFrame]:
    """Carve the evaluation splits the source lacks from train, stratified and fixed by the seed:
    with neither, test_fraction and val_fraction of all rows; with one, the other's fraction of
    train. Every split keeps source order."""
    train, val, test = splits["train"], splits.get("validation"), splits.get("test")
    if test is None:
        train, test = split_off(train, test_fraction, seed, where)
    if val is None:
        share = val_fraction if "test" in splits else val_fraction / (1.0 - test_fraction)
        train, val = split_off(train, share, seed, where)
    return {name: part.sort_index().reset_index(drop=True) for name, part in zip(SPLITS, (train, val, test))}


def keep_labels(train: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """Few labels: per class, round(fraction x its rows) rows (at least one) keep their label,
    drawn with the seed; every other row's label becomes UNLABELLED. Row order is kept."""
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(train), dtype=bool)
    labels = train["label"].to_numpy()
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        keep[rng.choice(rows, max(1, round(fraction * len(rows))), replace=False)] = True
    return train.assign(label=np.where(keep, labels, UNLABELLED))


@dataclass(frozen=True)
class Encoded:
    input_ids: list[list[int]]  # truncated to max_length, special tokens included
    type_ids: list[list[int]]  # segment of each token: 0 first text, 1 pair text
    full_lengths: np.ndarray  # (N,) tokens before truncation


def tokenize(tokenizer, texts: list[str], pairs: list[str] | None, max_length: int) -> Encoded:
    """Encode single texts or text pairs (the tokenizer's pair encoding, longest text truncated first)."""
    if not texts:
        return Encoded([], [], np.zeros(0, dtype=np.int64))
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length, add_special_tokens=True, return_token_type_ids=True)
    full = tokenizer(texts, pairs, truncation=False, add_special_tokens=True, return_attention_mask=False, verbose=False)
    return Encoded(
        [list(map(int, ids)) for ids in enc["input_ids"]],
        [list(map(int, t)) for t in enc["token_type_ids"]],
        np.array([len(ids) for ids in full["input_ids"]], dtype=np.int64),
    )


def ids_digest(input_ids: list[list[int]]) -> str:
    """A sha256 over token ids, so the signal store can prove it matches the prepared split."""
    h = hashlib.sha256()
    for ids in input_ids:
        h.update(np.asarray(ids, dtype=np.int32).tobytes())
        h.update(b"\xff\xff\xff\xff")
    return h.hexdigest()


@dataclass(frozen=True)
class Split:
    input_ids: list  # per example, token ids (a list or an int32 array)
    labels: np.ndarray  # the task's targets, int64: (N,) class ids, or (N, k) such as a span's [start, end]
    type_ids: list | None = None  # per example, segment ids; None: all tokens in segment 0
    extra: dict | None = None  # column -> (N,) values: a task's per-feature columns beyond the standard ones, and then text, text_pair

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(ids) for ids in self.input_ids], dtype=np.int64)

    def head(self, n: int) -> Split:
        """The first n examples (all when n is 0 or larger than the split)."""
        if not n or n >= len(self):
            return self
        return Split(self.input_ids[:n], self.labels[:n], None if self.type_ids is None else self.type_ids[:n],
                     None if self.extra is None else {k: v[:n] for k, v in self.extra.items()})

    def __len__(self) -> int:
        return len(self.input_ids)

    def take(self, idx: np.ndarray) -> Split:
        """The examples at `idx`, in that order."""
        pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
        return Split(pick(self.input_ids), self.labels[idx], None if self.type_ids is None else pick(self.type_ids),
                     None if self.extra is None else {k: v[idx] for k, v in self.extra.items()})

    @property
    def labelled(self) -> np.ndarray:
        """(N,) True where the example has a gold label."""
        return self.labels != UNLABELLED if self.labels.ndim == 1 else np.ones(len(self), dtype=bool)


def segment_ids(split: Split) -> list[np.ndarray]:
    """The split's segment ids, or zeros (one segment) when it has none."""
    return split.type_ids or [np.zeros(len(x), np.int32) for x in split.input_ids]


def concat(a: Split, b: Split) -> Split:
    """The examples of a, then those of b (standard columns only)."""
    if len(b) == 0:
        return a
    types = None if a.type_ids is None and b.type_ids is None else [*segment_ids(a), *segment_ids(b)]
    return Split([*a.input_ids, *b.input_ids], np.concatenate([a.labels, b.labels]), types)


def load_training(prepared: Path, transfer: Path | None) -> Split:
    """What extract and distill train on: the prepared training split, then the transfer set's
    rows (unlabelled) when `transfer` is given. The signal store's rows are in this order."""
    train = load_split(prepared, "train")
    if transfer is None:
        return train
    meta = TransferMeta.read(transfer)
    if meta.train_inputs_sha256 != load_meta(prepared).splits["train"].inputs_sha256:
        raise UserError(f"{Path(transfer) / TransferMeta.FILE}: made from another training split; re-run `dvc repro augment`")
    return concat(train, read_split_file(Path(transfer) / "transfer.parquet", meta.split.sha256, TransferMeta.FILE, TransferMeta.RERUN))


def write_split(path: Path, texts: list[str], pairs: list[str], labels: list, enc: Encoded) -> None:
    """One prepared split as Parquet: text, text_pair, label (int64: a class id, or a list such as
    a span's [start, end] token), input_ids and token_type_ids (int32 lists); read by load_split."""
    targets = np.asarray(labels, dtype=np.int64)  # (N,) or (N, k)
    frame = pd.DataFrame(
        {
            "text": texts,
            "text_pair": pairs,
            "label": targets if targets.ndim == 1 else list(targets),
            "input_ids": [np.asarray(s, dtype=np.int32) for s in enc.input_ids],
            "token_type_ids": [np.asarray(s, dtype=np.int8) for s in enc.type_ids],
        }
    )
    frame.to_parquet(path, index=False)


def load_split(prepared: Path, split: str) -> Split:
    """A prepared split, checked against the sha256 that meta.json records for it."""
    path = Path(prepared) / f"{split}.parquet"
    if not path.is_file():
        raise UserError(f"{path}: prepared split not found (run `dvc repro prepare`)")
    meta = load_meta(prepared)
    if split not in meta.splits:
        raise UserError(f"{Path(prepared) / 'meta.json'}: no sha256 for split {split!r}; re-run `dvc repro prepare`")
    return read_split_file(path, meta.splits[split].sha256, "meta.json", "re-run `dvc repro prepare`")


def read_split_file(path: Path, sha256: str, listed_in: str, rerun: str) -> Split:
    """A split's Parquet file (written by write_split), checked against its sha256."""
    if not path.is_file():
        raise UserError(f"{path}: not found; {rerun}")
    verify_files(path.parent, {path.name: sha256}, listed_in, rerun)
    try:
        extras = [c for c in pq.read_schema(path).names if c not in STANDARD_COLUMNS]
        df = pd.read_parquet(path, columns=["label", "input_ids", "token_type_ids", *(["text", "text_pair", *extras] if extras else [])])
    except Exception as err:  # pyarrow raises many types for corrupt files
        raise UserError(f"{path}: cannot read prepared split ({type(err).__name__}: {err})") from None
    # int32 arrays (views of the Parquet buffers), not lists of Python ints: 10x less memory
    ids = [np.asarray(x, dtype=np.int32) for x in df["input_ids"]]
    types = [np.asarray(x, dtype=np.int32) for x in df["token_type_ids"]]
    labels = df["label"].to_numpy(dtype=np.int64) if df["label"].dtype != object else np.stack(df["label"].to_numpy()).astype(np.int64)
    extra = {c: df[c].to_numpy() for c in ["text", "text_pair", *extras]} if extras else None
    return Split(ids, labels, types if any(t.any() for t in types) else None, extra)


def load_meta(prepared: Path) -> PreparedMeta:
    return PreparedMeta.read(prepared)


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
    """Pad a batch to its longest example.
    Returns input_ids, attention_mask, token_type_ids (B, T) and labels (B,) or (B, k)."""
    t = max(len(split.input_ids[i]) for i in idx)
    ids = torch.full((len(idx), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), t), dtype=torch.long)
    types = torch.zeros((len(idx), t), dtype=torch.long)
    for row, i in enumerate(idx):
        seq = split.input_ids[i]
        ids[row, : len(seq)] = torch.tensor(np.asarray(seq), dtype=torch.long)
        mask[row, : len(seq)] = 1
        if split.type_ids is not None:
            types[row, : len(seq)] = torch.tensor(np.asarray(split.type_ids[i]), dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": torch.from_numpy(split.labels[idx])}
