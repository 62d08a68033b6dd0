"""Tasks: everything that depends on what a model predicts, behind one small interface.

A task turns a model's raw outputs into *views* the losses read, the way TextBrewer's adaptor
does: `view(raw, batch)` gives `{"logits": (R, C)}`, rows of scores over C choices with padding
and impossible choices already masked (a class per example for classification; a start row and
an end row per feature for span extraction), and `targets(batch)` gives `{"labels": (R,)}`, the
gold choice of each row. Hard-label cross-entropy and Hinton KD in `losses.LOSSES` are then the
same functions for every task. Stages call the task chosen by `task:` in params for the model
class, the head, the teacher and students it builds, batches, predictions, metrics and the
evaluation files; the stages, the training loop and, for the encoder tasks, the signal store are
shared. Translation (an encoder-decoder, `tasks/translation.py`) has its own signal store
(`attnkd.pair_store`) and evaluate measures; extract and evaluate branch on it by name.

A task's raw outputs are what the signal store keeps of the teacher's outputs (`outputs`): an
"example" output is one row of values per feature (classification logits, (N, C)); a "token"
output one value per real token (span start/end logits), stored ragged like the attention maps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from attnkd.artifacts import PreparedMeta
from attnkd.compute import CPU, Compute, to_device
from attnkd.data import Split, collate, length_batches
from attnkd.errors import UserError

View = dict[str, torch.Tensor]


class Task(Protocol):
    name: str
    select_by: str  # the validation metric that picks the best epoch
    compare_by: str  # the test metric the report compares methods by (its Δ and p): select_by, or the task's own
    summary_metrics: tuple[str, ...]  # validation metrics kept in reports/train/<model>.json
    outputs: dict[str, str]  # raw model output -> "example" (a row per feature) | "token" (a value per real token)

    model_types: tuple[str, ...]  # the config model_type of the models it trains (a BiLSTM student aside)

    def bind(self, prepared: Path) -> Task: ...  # the task for this prepared data (translation: with its vocabulary)
    def model_class(self) -> type: ...  # a transformers model class with this task's head
    def new_teacher(self, params, meta: PreparedMeta) -> tuple: ...  # (the model the teacher stage trains, its tokenizer)
    def teacher_loss(self, params): ...  # the teacher's step loss (train.StepLoss)
    def collate(self, split: Split, idx: np.ndarray, pad_id: int) -> dict: ...  # a padded training batch
    def forward(self, model, batch: dict, **kwargs): ...  # the model on a collated batch (kwargs: output_attentions, ...)
    def loss_mask(self, batch: dict) -> torch.Tensor: ...  # (B, T) the real tokens the per-layer losses average over
    def inputs_digest(self, split: Split) -> str: ...  # the digest a signal store proves it was extracted from
    def new_student(self, teacher, sp, pairs: list[tuple[int, int]], seed: int): ...  # a student of the catalogue entry `sp`
    def prepare(self, params, root: Path, out: Path) -> tuple[PreparedMeta, dict]: ...  # raw rows -> features: splits and meta.json in out; (meta, data report)
    def head_config(self, meta: PreparedMeta) -> dict: ...  # config of a fresh head for the prepared data (labels, names)
    def view(self, raw: dict[str, torch.Tensor], batch: dict) -> View: ...  # {"logits": (R, C)}
    def targets(self, batch: dict) -> View: ...  # {"labels": (R,)}
    def predict(self, model, split: Split, batch_size: int, pad_id: int, compute: Compute = CPU) -> np.ndarray: ...
    def metrics(self, split: Split, predictions: np.ndarray) -> dict[str, float]: ...  # validation metrics
    def evaluation(self, split: Split, predictions: np.ndarray, meta: PreparedMeta, bins: int) -> tuple[dict, str]: ...  # metrics JSON, predictions CSV
    def caption(self, split: Split, i: int, meta: PreparedMeta) -> str: ...  # one example, beside its attention maps
    # what the report shows: its quality columns (metric -> label; compare_by is the main one), the
    # main metric's short name in column titles, the DVC metrics (short name -> metric)
    quality: dict[str, str]
    short: str
    headline: dict[str, str]

    def quality_note(self, params) -> str: ...  # the sentence under the quality table about its columns
    def per_example(self, frame) -> np.ndarray: ...  # from a predictions CSV: (N,) per-example score whose mean is compare_by (the paired test), or (N, K) statistics
    corpus_statistic: object  # None, or summed per_example statistics (..., K) -> compare_by (...,): a corpus score that is not a mean
    def data_table(self, report: dict) -> tuple: ...  # the data report as (a table, a note)
    def examples(self, frames: dict, k: int): ...  # a table of k test examples with each model's prediction, or None


def raw_outputs(task: Task, out) -> dict[str, torch.Tensor]:
    """The task's raw outputs of one forward pass: (B, C) per example or (B, T) per token."""
    return {name: getattr(out, name) for name in task.outputs}


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


def hard_label_loss(task: Task):
    """The teacher's step loss: hard-label cross-entropy on the task's view (the registry's `ce`)."""
    from attnkd.losses import LOSSES, LossConfig
    from attnkd.models import forward

    def step_loss(model, batch: dict, idx: np.ndarray) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = LOSSES["ce"].fn(task.view(raw_outputs(task, forward(model, batch)), batch), task.targets(batch), batch["attention_mask"], LossConfig())
        return loss, {"ce": loss}

    return step_loss


class EncoderTask:
    """What the tasks on a pretrained BERT encoder with a head share: the teacher is teacher.init
    (the packaged MiniLM or a local dir) with a fresh head of the task's, trained with the
    registry's hard-label `ce` on the task's view; batches are `data.collate`'s."""

    model_types = ("bert",)
    corpus_statistic = None  # the paired test averages per_example's scores

    @property
    def compare_by(self) -> str:
        return self.select_by

    def bind(self, prepared: Path):
        return self  # nothing of the prepared data is needed beyond its splits

    def new_teacher(self, params, meta: PreparedMeta) -> tuple:
        from attnkd.models import load_model, load_tokenizer, resolve_init

        init = resolve_init(params.teacher.init)
        return load_model(init, self, head=self.head_config(meta)), load_tokenizer(init)

    def teacher_loss(self, params):
        return hard_label_loss(self)

    def collate(self, split: Split, idx: np.ndarray, pad_id: int) -> dict:
        return collate(split, idx, pad_id)

    def forward(self, model, batch: dict, **kwargs):
        from attnkd.models import forward

        return forward(model, batch, **kwargs)

    def loss_mask(self, batch: dict) -> torch.Tensor:
        return batch["attention_mask"]  # (B, T)

    def inputs_digest(self, split: Split) -> str:
        from attnkd.data import ids_digest

        return ids_digest(split.input_ids)

    def new_student(self, teacher, sp, pairs: list[tuple[int, int]], seed: int):
        from attnkd.models import build_student

        return build_student(teacher, sp, pairs, seed)


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise UserError(f"params.yaml: task: {name!r} is not a task (have {', '.join(sorted(TASKS))})")
    return TASKS[name]


def _register_builtin() -> None:
    from attnkd.tasks.classification import Classification
    from attnkd.tasks.squad import Squad
    from attnkd.tasks.translation import Translation

    register(Classification())
    register(Squad())
    register(Translation())


_register_builtin()

__all__ = ["TASKS", "EncoderTask", "Task", "View", "get_task", "hard_label_loss", "predict_rows", "raw_outputs", "register"]
