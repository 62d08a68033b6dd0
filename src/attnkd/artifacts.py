"""Typed contracts of the artifacts stages hand each other, as typed as the params.

Each is a pydantic model with one `write` and one `read`: reading validates the file and fails
with one line naming the file and the field, and `verify_files` checks a listing of sha256 the
same way for every artifact (prepared splits, model dirs, the signal store).

    PreparedMeta     data/prepared/meta.json     label names, max length, per split its size and digests
    ModelRecord      <model dir>/attnkd.json     what built a model, and the sha256 of its files
    SignalManifest   data/signals/manifest.json  what the store holds, how, from which inputs (every layout)
    TransferMeta     data/transfer/transfer.json the transfer set: how it was made, its size and digests
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from attnkd.errors import UserError
from attnkd.io import atomic_write_json, read_json, sha256_file


class Artifact(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    FILE: ClassVar[str]
    RERUN: ClassVar[str]  # what rebuilds it

    @classmethod
    def read(cls, folder: Path):
        path = Path(folder) / cls.FILE
        raw = read_json(path)
        try:
            return cls.model_validate(raw)
        except ValidationError as err:
            first = err.errors()[0]
            loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
            raise UserError(f"{path}: {loc}: {first['msg']}; {cls.RERUN}") from None

    def write(self, folder: Path) -> None:
        atomic_write_json(Path(folder) / self.FILE, self.model_dump(exclude_none=True))


def verify_files(folder: Path, listing: dict[str, str], listed_in: str, rerun: str, sizes: dict[str, int] | None = None) -> None:
    """Every file of `listing` (name -> sha256) exists in `folder`, has its size (when given) and its sha256."""
    for name, expected in listing.items():
        path = Path(folder) / name
        if not path.is_file():
            raise UserError(f"{path}: listed in {listed_in} but missing; {rerun}")
        if sizes is not None and path.stat().st_size != sizes[name]:
            raise UserError(f"{path}: {path.stat().st_size} bytes, {listed_in} says {sizes[name]} (truncated or altered); {rerun}")
        if sha256_file(path) != expected:
            raise UserError(f"{path}: sha256 does not match {listed_in} (truncated or altered); {rerun}")


class SplitInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    examples: int
    inputs_sha256: str  # of the token ids (the signal store proves it matches with it)
    sha256: str  # of the Parquet file


class PreparedMeta(Artifact):
    FILE: ClassVar[str] = "meta.json"
    RERUN: ClassVar[str] = "re-run `dvc repro prepare`"
    label_names: list[str]  # class names (empty for tasks without classes)
    max_length: int
    source: str
    pair: bool
    tokenizer: str
    splits: dict[str, SplitInfo]


class ModelRecord(Artifact):
    """A model dir's attnkd.json: what built it (a teacher's params and labels, or a student's
    architecture, method, weights, distill params and layer pairs) and the sha256 of its files."""

    FILE: ClassVar[str] = "attnkd.json"
    RERUN: ClassVar[str] = "re-run the stage that wrote it"
    role: Literal["teacher", "student"]
    seed: int
    sha256: dict[str, str] = {}
    params: dict | None = None  # teacher
    label_names: list[str] | None = None  # teacher
    student: str | None = None
    method: str | None = None
    weights: dict[str, float] | None = None
    architecture: dict | None = None
    distill: dict | None = None
    layer_pairs: list[tuple[int, int]] | None = None
    examples: dict[str, int] | None = None  # training rows it saw per epoch, and epochs: {"labelled": n, "unlabelled": m, "epochs": e}
    targets: Literal["reference", "teacher"] | None = None  # translation: trained on the references or the teacher's translations


class FileInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    sha256: str
    bytes: int
    shape: list[int]
    dtype: str


class SignalManifest(Artifact):
    """What a signal store holds, how, and from which inputs; one type for every store layout
    (attnkd.store): the shared fields, then the parts of the encoder layout (attnkd.signals) and of
    the encoder-decoder layout (attnkd.tasks.translation.store), absent from the other's file."""

    FILE: ClassVar[str] = "manifest.json"
    RERUN: ClassVar[str] = "re-run `dvc repro extract`"
    format: str  # the layout, and its version
    num_examples: int  # training rows (examples, or sentence pairs)
    heads: int  # of the stored attention maps
    tensors: dict[str, list[int]]  # kind -> teacher layers stored (encoder-decoder: "<target>/<kind>", empty for per-token kinds)
    dtype: str  # storage dtype of the layer tensors
    files: dict[str, FileInfo]
    teacher_sha256: str | None = None
    inputs_sha256: str | None = None
    # the encoder layout
    num_labels: int | None = None
    width: int | None = None
    attn_kind: str | None = None
    split: str | None = None
    max_length: int | None = None
    teacher_precision: str | None = None
    online: dict[str, list[int]] | None = None  # planned tensors over the size budget: distill runs the teacher for them
    max_bytes: int | None = None  # the size budget of the layer tensors, when some were left to distill
    token_classes: list[str] | None = None  # teacher outputs stored as a class distribution per token, (n_i, C) rows per example
    # the encoder-decoder layout
    topk: int | None = None  # tokens kept per target position
    beam: int | None = None  # of the teacher's translations (1: greedy)


class TransferMeta(Artifact):
    """The transfer set written by augment: unlabelled rows the teacher labels in extract."""

    FILE: ClassVar[str] = "transfer.json"
    RERUN: ClassVar[str] = "re-run `dvc repro augment`"
    rows: int  # in transfer.parquet
    texts: int  # training texts they were made from
    rules: dict[str, int]  # words masked / substituted, variants cut to an n-gram
    train_inputs_sha256: str  # of the prepared training split it was made from
    split: SplitInfo  # the transfer rows: count, token-id digest, sha256 of transfer.parquet

