"""Typed, validated params: one pydantic model per params.yaml section.

The whole file is validated when any stage starts, so a typo anywhere stops the pipeline before
work is done, with one line naming the key (`params.yaml: distill.temperature: ...`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from attnkd.errors import UserError
from attnkd.losses import LOSSES
from attnkd.plugins import FAMILIES, TASKS

PACKAGED_MODEL = "all-MiniLM-L6-v2"

PosInt = Annotated[int, Field(gt=0)]
PosFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(gt=0, lt=1)]


def distinct(what: str) -> AfterValidator:
    """A list validator: no value twice (`[1, 1] repeats a seed`)."""

    def check(values: list) -> list:
        if len(set(values)) != len(values):
            raise ValueError(f"{values} repeats a {what}")
        return values

    return AfterValidator(check)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SplitNames(Section):
    """Per split: a file name in data.dir (source files) or a split name (source hub); "" = none."""

    train: str = ""
    validation: str = ""
    test: str = ""


class DataParams(Section):
    source: Literal["bbc_news", "files", "hub"] = "bbc_news"
    dir: str = "data/raw"  # files: the folder of the split files (relative to the repo root); a DVC dependency
    splits: SplitNames = SplitNames()
    format: Literal["auto", "tsv", "csv", "jsonl", "parquet"] = "auto"  # auto: from the file extension
    quoting: Literal["standard", "none"] = "standard"  # none: quote characters are text (GLUE TSVs)
    hub_name: str = ""  # hub: a `datasets` name, e.g. glue
    hub_config: str = ""  # hub: its config, e.g. sst2
    text_column: str = "text"
    text_pair_column: str = ""  # the second text of a sentence-pair task; "" = single sentences
    label_column: str = "label"
    label_names: list[str] = []  # names of integer labels 0..K-1, or the order of string labels
    drop_eval_overlap: bool = True  # remove training rows whose text also occurs in validation or test
    max_length: Annotated[int, Field(ge=8, le=512)] = 64
    val_fraction: Fraction = 0.1
    test_fraction: Fraction = 0.2
    # utf8_or_cp1252: decode as UTF-8, fall back to cp1252 per file (BBC) or line, and count it;
    # strict: fail naming the file and line. (BBC News ships one Windows-1252 file.)
    decode: Literal["utf8_or_cp1252", "strict"] = "utf8_or_cp1252"
    limit_per_class: Annotated[int, Field(ge=0)] = 0  # 0 = all; >0 keeps the first N training examples per class
    # task squad (extractive QA): windows of max_length tokens over question + context, overlapping
    # by doc_stride context tokens; test and validation are whole articles drawn from the
    # splits.test file (the official dev set) until they hold this many questions; the rest of its
    # articles join splits.train's. train_questions > 0 keeps N training questions drawn with the seed.
    doc_stride: PosInt = 128
    test_questions: PosInt = 2500
    validation_questions: PosInt = 500
    train_questions: Annotated[int, Field(ge=0)] = 0
    # few labels: the share of training rows that keep their gold label (stratified per class, at
    # least one each, drawn with the seed); the rest stay as unlabelled text the teacher labels
    labelled_fraction: Annotated[float, Field(gt=0, le=1)] = 1.0
    # unlabelled text: a file in data.dir (source files), one text per line, added to the training
    # split as unlabelled rows the teacher labels; "" = none
    unlabelled: str = ""
    # task translation: line-aligned files `{split}.{lang}[.gz]` in data.dir (data.splits give the
    # split stems, e.g. train, val, test_2016_flickr), or a hub data set (a `translation` column of
    # {lang: sentence}, or one column per language; data.splits: its split names); one joint byte-level BPE vocabulary of
    # vocab_size entries trained on the training split; a pair with an empty side is dropped and
    # counted (empty_pairs: drop) or stops prepare naming its file and line (fail)
    source_lang: str = ""
    target_lang: str = ""
    vocab_size: Annotated[int, Field(ge=300)] = 8000
    empty_pairs: Literal["drop", "fail"] = "drop"
    # task ner: CoNLL column files in data.dir (or a hub set of tokens + ner_tags); a word's tag on
    # its first sub-token (first: the others are left out of loss and score) or on all of them;
    # train_sentences > 0 keeps N training sentences drawn with the seed
    label_subtokens: Literal["first", "all"] = "first"
    train_sentences: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _consistent(self) -> DataParams:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must stay below 0.9 to leave a training split")
        if self.source == "files" and not self.splits.train:
            raise ValueError("source files needs data.splits.train (a file name in data.dir)")
        if self.source == "hub" and not self.hub_name:
            raise ValueError("source hub needs data.hub_name (e.g. glue) and usually data.hub_config (e.g. sst2)")
        if self.source == "hub" and not self.splits.train:
            raise ValueError("source hub needs data.splits.train (the hub's split name, e.g. train)")
        if self.text_pair_column and self.text_pair_column == self.text_column:
            raise ValueError("data.text_pair_column must differ from data.text_column")
        return self


class AugmentParams(Section):
    """The transfer set (stage augment, Tang et al. 2019): `copies` unlabelled variants of every
    training text, labelled by the teacher in extract. Per word: [MASK] with mask_p, else its
    nearest neighbour in the teacher's word-embedding space with substitute_p; then, with
    ngram_p, the variant is cut to a random n-gram of 1..ngram_max words."""

    copies: Annotated[int, Field(ge=0)] = 0  # variants per training text; 0 = no transfer set
    mask_p: Annotated[float, Field(ge=0, le=1)] = 0.1
    substitute_p: Annotated[float, Field(ge=0, le=1)] = 0.1
    ngram_p: Annotated[float, Field(ge=0, le=1)] = 0.25
    ngram_max: PosInt = 5

    @model_validator(mode="after")
    def _word_rates(self) -> AugmentParams:
        if self.mask_p + self.substitute_p > 1:
            raise ValueError("mask_p + substitute_p must not exceed 1 (each word is masked, substituted or kept)")
        return self


class TrainingParams(Section):
    """The training knobs every training stage shares (the teacher's and distill's sections)."""

    epochs: PosInt = 2
    batch_size: PosInt = 16
    learning_rate: PosFloat = 1.0e-4
    weight_decay: Annotated[float, Field(ge=0)] = 0.01
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.1
    eval_batch_size: PosInt = 64
    max_steps: Annotated[int, Field(ge=0)] = 0  # 0 = no cap; >0 stops early (tests)
    checkpoint_every: Annotated[int, Field(ge=0)] = 200  # steps between resumable checkpoints; 0 = off


class Seq2SeqParams(Section):
    """Task translation: the Transformer encoder-decoder the teacher stage trains from scratch
    (Vaswani et al. 2017; transformers' Marian classes), and its label smoothing."""

    encoder_layers: PosInt = 3
    decoder_layers: PosInt = 3
    d_model: PosInt = 256
    heads: PosInt = 4
    ffn: PosInt = 1024  # feed-forward width
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.1

    @model_validator(mode="after")
    def _heads_divide_width(self) -> Seq2SeqParams:
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by heads {self.heads}")
        return self


class TeacherParams(TrainingParams):
    init: str = PACKAGED_MODEL  # the packaged MiniLM, or a local HF model dir (relative to the repo root); task translation: not read
    seq2seq: Seq2SeqParams = Seq2SeqParams()  # task translation only: the teacher built from scratch

    def used(self, task: str) -> dict:
        """The keys that build a teacher of the task (its record): the task's `teacher_from` key
        (init: a pretrained encoder; seq2seq: built from scratch), not the other."""
        return self.model_dump(exclude={"seq2seq", "init"} - {TASKS[task].teacher_from})


class ExtractParams(Section):
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    batch_size: PosInt = 64
    # the most the layer tensors may take on disk; planned tensors past it (in plan order) are not
    # stored, and distill computes them from the teacher on every batch instead
    max_gb: PosFloat = 8.0
    topk: PosInt = 8  # task translation: the teacher's most probable tokens kept per target position (word-level KD)
    beam: PosInt = 1  # task translation: beam size of the teacher's translations (sequence-level KD); 1 = greedy


def registered(name: str, registry: dict, what: str) -> str:
    """`name` when the plug-in registry (attnkd.plugins) has it, else the params error naming what is."""
    if name not in registry:
        raise ValueError(f"{name!r} is not {what} (have {', '.join(sorted(registry))})")
    return name


class StudentParams(Section):
    # transformer: a BERT of the teacher's class (layers, width, heads, feed-forward as below);
    # lstm: a BiLSTM with attention pooling (classification): num_layers LSTM layers of
    # hidden_size units per direction over embedding_size-wide embeddings (0 = the teacher's
    # width); num_heads and intermediate_size do not apply; init teacher does not apply.
    family: str = "transformer"  # a name in attnkd.plugins.FAMILIES
    num_layers: PosInt = 2
    hidden_size: PosInt = 384
    embedding_size: Annotated[int, Field(ge=0)] = 0
    num_heads: PosInt = 12
    intermediate_size: PosInt = 1536
    # teacher: copy embeddings and the mapped teacher layers (needs the teacher's width);
    # embeddings: copy the embeddings (a narrower student gets them projected onto the teacher
    # word embeddings' top principal directions); random: nothing copied.
    init: Literal["teacher", "embeddings", "random"] = "random"
    # false: the word embeddings (V x H, most of a small student's weights) are not trained: a
    # copied table stays the teacher's, and each step skips its gradient and optimiser update.
    train_embeddings: bool = True
    attention_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    hidden_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1

    @field_validator("family")
    @classmethod
    def _known_family(cls, name: str) -> str:
        return registered(name, FAMILIES, "a student family")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> StudentParams:
        if self.family == "lstm":
            if self.init == "teacher":
                raise ValueError("family lstm copies no teacher layers: init must be embeddings or random")
            return self
        if self.embedding_size:
            raise ValueError("embedding_size applies to family lstm only (a transformer's embeddings are hidden_size wide)")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        return self


LayerPair = Annotated[list[PosInt], Field(min_length=2, max_length=2)]


StudentName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_]+$")]


class DistillParams(TrainingParams):
    epochs: PosInt = 2
    learning_rate: PosFloat = 6.0e-4
    students: Annotated[list[StudentName], Field(min_length=1), distinct("student")] = ["small"]  # keys of `students` to train
    # uniform: student layer m learns from teacher layer floor(m * N / M); last: only the last
    # layers; or an explicit list of [teacher_layer, student_layer] pairs (1-based).
    layer_map: Literal["uniform", "last"] | list[LayerPair] = "uniform"
    temperature: PosFloat = 2.0
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0  # of the hard-label losses (ce, seq_kd); translation uses 0.1
    # attention losses with different head counts: per_head needs equal counts; average
    # compares head-averaged maps. Relation losses use relation_heads on both sides instead.
    head_policy: Literal["per_head", "average"] = "per_head"
    relation_heads: PosInt = 12
    attn_mse_on: Literal["probs", "scores"] = "probs"  # TinyBERT uses scores
    # store: read the teacher's signals written by extract (the teacher never runs here);
    # online: run the teacher on every batch instead (for inputs the store cannot cover).
    signals: Literal["store", "online"] = "store"
    # A method that trains on the gold-labelled rows only (ce) when some training rows are unlabelled:
    # epochs, distill.epochs over its rows; matched, as many optimiser steps as a method reading
    # every row (its epochs scaled up by the ratio of batches), the stricter few-labels baseline.
    gold_steps: Literal["epochs", "matched"] = "epochs"

    @field_validator("layer_map", mode="before")
    @classmethod
    def _layer_map_shape(cls, value: object) -> object:
        pairs_ok = isinstance(value, list) and value and all(
            isinstance(p, list) and len(p) == 2 and all(type(i) is int and i > 0 for i in p) for p in value
        )
        if value in ("uniform", "last") or pairs_ok:
            return value
        raise ValueError(
            f"{value!r} is not 'uniform', 'last' or a list of [teacher_layer, student_layer] pairs (1-based)"
        )


class _Weights(Section):
    """Loss weights of one distillation method; a missing term has weight 0. Its fields are the
    names of the loss registry (losses.LOSSES), in registry order."""

    @model_validator(mode="after")
    def _some_weight(self) -> _Weights:
        if not any(self.weights().values()):
            raise ValueError("a method needs at least one positive loss weight")
        return self

    def weights(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in type(self).model_fields if getattr(self, name) > 0}


MethodWeights = create_model("MethodWeights", __base__=_Weights, **{name: (Annotated[float, Field(ge=0)], 0.0) for name in LOSSES})


class ComputeParams(Section):
    """Device and precision of teacher training, extraction and distillation (evaluate runs on CPU)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when PyTorch sees a GPU, else CPU
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # bf16/fp16: autocast; fp16 with a gradient scaler


class EvaluateParams(Section):
    """The teacher and every student of distill.students x methods x student_seeds are evaluated."""

    batch_size: PosInt = 64  # predictions, attention agreement, and the throughput batch
    latency_examples: PosInt = 32
    latency_repeats: PosInt = 5  # also the repeats of the throughput measurement
    throughput_examples: PosInt = 64
    agreement_examples: Annotated[int, Field(ge=0)] = 0  # attention agreement over the first N test examples; 0 = all
    calibration_bins: PosInt = 15
    beam: Annotated[int, Field(ge=1, le=32)] = 1  # translation: beam size of the scored test translations (1 = greedy; latency is always greedy's)


class ReportParams(Section):
    title: str = "Attention-transfer distillation report"
    digits: Annotated[int, Field(ge=1, le=6)] = 3
    bootstrap_samples: Annotated[int, Field(ge=100)] = 10000  # paired bootstrap against the ce student
    heatmap_examples: Annotated[int, Field(ge=0, le=8)] = 2  # evaluation examples drawn as attention heatmaps
    heatmap_tokens: Annotated[int, Field(ge=4, le=64)] = 24  # tokens shown per heatmap axis (the first ones)


Seed = Annotated[int, Field(ge=0)]


class Params(Section):
    task: str = "classification"  # a name in attnkd.plugins.TASKS: what the models predict
    seed: Seed = 42  # splits and the teacher
    student_seeds: Annotated[list[Seed], Field(min_length=1), distinct("seed")] = [42, 43, 44]  # one student per seed and method
    data: DataParams = DataParams()
    augment: AugmentParams = AugmentParams()
    teacher: TeacherParams = TeacherParams()
    extract: ExtractParams = ExtractParams()
    students: dict[StudentName, StudentParams] = {"small": StudentParams(intermediate_size=768, init="embeddings", train_embeddings=False)}  # architectures by name; distill.students picks
    distill: DistillParams = DistillParams()
    methods: dict[str, MethodWeights] = {
        "ce": MethodWeights(ce=1.0),
        "kd": MethodWeights(ce=0.5, kd=0.5),
        "at": MethodWeights(ce=1.0, attn_kl=1.0),
        "kd_at": MethodWeights(ce=0.5, kd=0.5, attn_kl=1.0),
    }
    compute: ComputeParams = ComputeParams()
    evaluate: EvaluateParams = EvaluateParams()
    report: ReportParams = ReportParams()

    @field_validator("task")
    @classmethod
    def _known_task(cls, name: str) -> str:
        return registered(name, TASKS, "a task")

    @field_validator("methods")
    @classmethod
    def _method_names(cls, methods: dict[str, MethodWeights]) -> dict[str, MethodWeights]:
        for name in methods:
            if name == "teacher" or not name.replace("_", "").isalnum():
                raise ValueError(f"method name {name!r} must be letters, digits or _ and not 'teacher'")
        return methods

    @model_validator(mode="after")
    def _transfer_for_classification(self) -> Params:
        if not TASKS[self.task].transfer_set and (self.augment.copies or self.data.labelled_fraction < 1 or self.data.unlabelled):
            takers = " or ".join(n for n, info in TASKS.items() if info.transfer_set)
            raise ValueError(f"augment.copies, data.labelled_fraction and data.unlabelled (a transfer set) apply to task {takers}, not {self.task!r}")
        if self.data.unlabelled and (self.data.source != "files" or self.data.text_pair_column):
            raise ValueError("data.unlabelled (one text per line) needs data.source: files and single texts (no data.text_pair_column)")
        return self

    @model_validator(mode="after")
    def _task_data(self) -> Params:
        info, dp = TASKS[self.task], self.data
        if dp.source not in info.sources or any(not getattr(dp, key) for key in info.requires):
            raise ValueError(f"task {self.task} reads data.source: {' or '.join(info.sources)}"
                             + (f" and needs {' and '.join(f'data.{k}' for k in info.requires)} set" if info.requires else ""))
        if dp.source_lang and dp.source_lang == dp.target_lang:
            raise ValueError("data.source_lang and data.target_lang must differ")
        return self

    @model_validator(mode="after")
    def _students_defined(self) -> Params:
        for name in self.distill.students:
            if name not in self.students:
                raise ValueError(f"distill.students names {name!r}, which is not a key of students ({', '.join(self.students)})")
        return self


def _format_error(err: ValidationError, path: Path) -> str:
    first = err.errors()[0]
    # drop pydantic's union-branch labels such as "literal['uniform','last']" from the key path
    loc = ".".join(str(p) for p in first["loc"] if "[" not in str(p)) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{path}: {loc}: {msg}{more}"


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read and validate the whole params file; raise UserError naming the first bad key."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of sections at the top level")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise UserError(_format_error(err, path)) from None
