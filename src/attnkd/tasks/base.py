"""The task interface: a small core every task gives, and optional capabilities with defaults.

A task turns a model's raw outputs into *views* the losses read, the way TextBrewer's adaptor
does: `view(raw, batch)` gives `{"logits": (R, C)}`, rows of scores over C choices with padding
and impossible choices already masked (a class per example for classification; a start row and
an end row per feature for span extraction; a row per target token for translation), and
`targets(batch)` gives `{"labels": (R,)}`, the gold choice of each row. Hard-label cross-entropy
and Hinton KD in `losses.LOSSES` are then the same functions for every task.

`Task` is the core: what a task reads, predicts and scores. `TaskBase` gives every capability a
default (the signal store, the distillation run, evaluate's measures, the report's words), and
`EncoderTask` the batches, teacher and students of a pretrained encoder with a head; a task with
other needs (an encoder-decoder) overrides a capability, and the stages call the task for it and
never ask which task they run.

A task's raw outputs are what the signal store keeps of the teacher's outputs (`outputs`): an
"example" output is one row of values per feature (classification logits, (N, C)); a "token"
output one value per real token (span start/end logits), and a "token_classes" output a row of C
values per real token ((T, C) per example: token classification), stored ragged like the
attention maps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from attnkd.artifacts import PreparedMeta
from attnkd.compute import CPU, Compute, to_device
from attnkd.data import Split, collate, length_batches
from attnkd.models import raw_outputs

View = dict[str, torch.Tensor]


class Task(Protocol):
    """What every task gives (the capabilities are in TaskBase, with defaults)."""

    name: str
    select_by: str  # the validation metric that picks the best epoch
    summary_metrics: tuple[str, ...]  # validation metrics kept in reports/train/<model>.json
    outputs: dict[str, str]  # raw model output -> "example" | "token" | "token_classes" (see the module docstring)
    # what the report shows: its quality columns (metric -> label; compare_by is the main one), the
    # main metric's short name in column titles, the DVC metrics (short name -> metric)
    quality: dict[str, str]
    short: str
    headline: dict[str, str]

    def prepare(self, params, root: Path, out: Path) -> tuple[PreparedMeta, dict]: ...  # raw rows -> features: splits and meta.json in out; (meta, data report)
    def head_config(self, meta: PreparedMeta) -> dict: ...  # config of a fresh head for the prepared data (labels, names)
    def model_class(self) -> type: ...  # a transformers model class with this task's head
    def view(self, raw: dict[str, torch.Tensor], batch: dict) -> View: ...  # {"logits": (R, C)}
    def targets(self, batch: dict) -> View: ...  # {"labels": (R,)}
    def predict(self, model, split: Split, batch_size: int, pad_id: int, compute: Compute = CPU) -> np.ndarray: ...
    def metrics(self, split: Split, predictions: np.ndarray) -> dict[str, float]: ...  # validation metrics
    def evaluation(self, split: Split, predictions: np.ndarray, meta: PreparedMeta, bins: int) -> tuple[dict, str]: ...  # metrics JSON, predictions CSV
    def per_example(self, frame) -> np.ndarray: ...  # from a predictions CSV: (N,) per-example score whose mean is compare_by (the paired test), or (N, K) statistics
    def data_table(self, report: dict) -> tuple: ...  # the data report as (a table, a note)
    def caption(self, split: Split, i: int, meta: PreparedMeta) -> str: ...  # one example, beside its attention maps


@torch.no_grad()
def predict_rows(model, split: Split, batch_size: int, pad_id: int, width: int, score, compute: Compute = CPU) -> np.ndarray:
    """(N, width) float64 scores in the split's order, `score(model output, batch) -> (B, width)`
    per length-grouped batch. With several processes each scores every world-th feature and the
    results are summed, so every process returns all."""
    from attnkd.models import forward

    model.eval()
    rows = np.arange(len(split))[compute.rank :: compute.world]
    out = torch.zeros((len(split), width), dtype=torch.float64)
    for idx in length_batches(split.lengths[rows], batch_size):
        b = to_device(collate(split, rows[idx], pad_id), compute.device)
        with compute.autocast():
            result = forward(model, b)
        out[rows[idx]] = score(result, b).double().cpu()
    return compute.sum(out).numpy()


def class_head(meta: PreparedMeta) -> dict:
    """The head config of a model over the prepared class (or tag) names: their count and both maps."""
    names = meta.label_names
    return {"num_labels": len(names), "id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}


def hard_label_loss(task: Task):
    """The teacher's step loss: hard-label cross-entropy on the task's view (the registry's `ce`)."""
    from attnkd.losses import LOSSES, LossConfig
    from attnkd.models import forward

    def step_loss(model, batch: dict, idx: np.ndarray) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = LOSSES["ce"].fn(task.view(raw_outputs(task, forward(model, batch)), batch), task.targets(batch), batch["attention_mask"], LossConfig())
        return loss, {"ce": loss}

    return step_loss


class TaskBase:
    """The optional capabilities, with the defaults of a task whose models are encoders: one
    signal store (`attnkd.signals`), the distillation run of `attnkd.distillation`, evaluate's
    forward-pass measures (`attnkd.metrics.encoder_measures`) and the report's wording of them."""

    corpus_statistic = None  # None: the paired test averages per_example's scores; else summed statistics (..., K) -> compare_by (...,)
    encoder_decoder = False  # which losses apply (losses.Loss.seq2seq) and which layers the layer map pairs
    model_types: tuple[str, ...] = ("bert",)  # the config model_type of the teachers (and same-family students) it loads

    @property
    def compare_by(self) -> str:
        """The test metric the report compares methods by (its Δ and p)."""
        return self.select_by

    def bind(self, prepared: Path):
        """The task for this prepared data (e.g. with the vocabulary it decodes with)."""
        return self

    def for_evaluation(self, ep):
        """The task as evaluate scores it (evaluate params `ep`: e.g. a search width)."""
        return self

    def inputs_digest(self, split: Split) -> str:
        """The digest a signal store proves it was extracted from."""
        from attnkd.data import ids_digest

        return ids_digest(split.input_ids)

    def new_student(self, teacher, sp, pairs: list[tuple[int, int]], seed: int):
        """A student of the catalogue entry `sp`, built by its family (its initialisation fixed by the seed)."""
        from attnkd.students import build_student

        return build_student(teacher, sp, pairs, seed, self)

    def student_kinds(self, sp) -> tuple[str, ...]:
        """The per-layer tensor kinds a student of `sp` exposes to the losses under this task."""
        from attnkd.students import get_family

        return get_family(sp.family).for_task(self).kinds

    def layer_shape(self, teacher_config: dict) -> tuple[int, int, int]:
        """(layers the layer map pairs, heads, width) of a teacher's config."""
        return teacher_config["num_hidden_layers"], teacher_config["num_attention_heads"], teacher_config["hidden_size"]

    def plan_store(self, params, teacher_config: dict) -> dict[str, list[int]]:
        """What the signal store must hold for every configured student and method (plan)."""
        from attnkd.objective import store_plan

        return store_plan(params, teacher_config, self)

    def write_store(self, params, teacher_dir: Path, meta: PreparedMeta, train: Split, planned: dict[str, list[int]], out: Path, compute: Compute) -> str:
        """Run the teacher over the training rows and write the store into `out` (extract); its summary line."""
        from attnkd.signals import write_store

        return write_store(params, teacher_dir, meta, train, planned, out, compute, self)

    def open_store(self, root: Path):
        """The store extract wrote, verified."""
        from attnkd.signals import SignalStore

        return SignalStore(root)

    def read_manifest(self, root: Path):
        """The store's manifest (the report describes it)."""
        from attnkd.artifacts import SignalManifest

        return SignalManifest.read(root)

    def assemble(self, params, student: str, method: str, seed: int, teacher, store, expect=None):
        """One distillation run (distillation.DistillRun) of `student` x `method` x `seed`."""
        from attnkd.distillation import assemble_run

        return assemble_run(params, student, method, seed, teacher, store, self, expect)

    def measure(self, models: dict, students: dict, records: dict, groups: dict, test: Split, meta: PreparedMeta, tokenizer, params) -> tuple[dict, dict, list]:
        """evaluate's attention agreement, latency and throughput, and the report's heatmap data."""
        from attnkd.metrics import encoder_measures

        return encoder_measures(models, students, records, groups, test, meta, self, tokenizer, params)

    # the report's words
    timing = "batch-1 forward time"  # what latency measures
    throughput_unit = ""  # after the throughput sentence
    per_class_heading = "Per class (F1, mean over seeds)"  # above the per-class table, when the metrics have per_class
    examples_note = "The first test examples: the gold answers and each model's answer (the first-seed student of each row)."

    def quality_note(self, params) -> str:
        """The sentence under the quality table about its columns."""
        return ""

    def examples(self, frames: dict, k: int):
        """A table of k test examples with each model's prediction, or None."""
        return None

    def agreement_note(self, over: str) -> str:
        return (f"attention rows over {over}, per mapped pair `t<teacher layer>-s<student layer>`; per head when the head counts "
                "match, else between head-averaged maps.")

    def heatmap_caption(self, example: str, tokens: int) -> str:
        return (f"Head-averaged attention of the teacher and each method's first-seed student on test example {example} "
                f"(first {tokens} tokens at most; rows: queries, columns: keys), for each mapped layer pair; one colour scale "
                f"per figure, proportional to the square root of the attention weight (so weak links stay visible beside [CLS] and [SEP]).")

    def describe_student(self, sp) -> str:
        """A student architecture in words."""
        from attnkd.students import get_family

        return get_family(sp.family).for_task(self).describe(sp)

    def describe_teacher(self, params) -> list[str]:
        """Setup lines about a teacher the task builds itself (none for a pretrained encoder)."""
        return []

    def describe_store(self, manifest) -> str:
        """Where the students' teacher signals came from."""
        from attnkd.reporting import store_line

        return store_line(manifest)


class EncoderTask(TaskBase):
    """What the tasks on a pretrained encoder with a head share: the teacher is teacher.init
    (the packaged MiniLM or a local dir) with a fresh head of the task's, trained with the
    registry's hard-label `ce` on the task's view; batches are `data.collate`'s."""

    def new_teacher(self, params, meta: PreparedMeta) -> tuple:
        """(the model the teacher stage trains, its tokenizer)."""
        from attnkd.models import load_model, load_tokenizer, resolve_init

        init = resolve_init(params.teacher.init)
        return load_model(init, self, head=self.head_config(meta)), load_tokenizer(init)

    def teacher_loss(self, params):
        """The teacher's step loss (train.StepLoss)."""
        return hard_label_loss(self)

    def collate(self, split: Split, idx: np.ndarray, pad_id: int) -> dict:
        """A padded training batch."""
        return collate(split, idx, pad_id)

    def forward(self, model, batch: dict, **kwargs):
        """The model on a collated batch (kwargs: output_attentions, ...)."""
        from attnkd.models import forward

        return forward(model, batch, **kwargs)

    def loss_mask(self, batch: dict) -> torch.Tensor:
        """(B, T) the real tokens the per-layer losses average over."""
        return batch["attention_mask"]  # (B, T)


__all__ = ["EncoderTask", "Task", "TaskBase", "View", "class_head", "hard_label_loss", "predict_rows", "raw_outputs"]
