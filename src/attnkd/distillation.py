"""One distillation run, assembled in one place: the distill stage, both benchmarks and the tests
build it here, so they train exactly what `dvc repro` trains.

For one student architecture, method and seed: the layer pairs, the compatibility checks, the
teacher tensors the method reads, the student (its initialisation fixed by the seed), the
objective, the budget and the record written beside the model. The teacher's signals come from
the signal store, or from the teacher run on every batch (`online`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import torch

from attnkd.data import Split
from attnkd.losses import LOSSES, resolve_layer_map
from attnkd.objective import Objective, check_compatible, wanted_tensors
from attnkd.params import DistillParams, Params
from attnkd.signals import Online, online_batch, split_wanted
from attnkd.students import get_family
from attnkd.train import Budget, budget_of

if TYPE_CHECKING:
    from attnkd.tasks.base import Task


@dataclass
class StoreInputs:
    """What a store must have been extracted from: checked before any training."""

    inputs_sha256: str  # of the prepared training split's token ids
    teacher_sha256: str  # of the teacher's weights file
    examples: int  # of the training split


@dataclass
class DistillRun:
    task: Task
    student: torch.nn.Module
    objective: Objective  # holds the trainable projections some losses learn
    source: object  # a signal source: `signals(idx, batch, wanted)` -> (outputs, tensors): a store's reader, or signals.Online (the teacher now)
    wanted: dict[str, list[int]]  # teacher tensor kind -> teacher layers the method reads
    pairs: list[tuple[int, int]]  # (teacher layer, student layer), 1-based
    budget: Budget
    record: dict  # what built the student: written to its attnkd.json and the checkpoint key
    live: dict[str, list[int]] = field(default_factory=dict)  # of `wanted`, what the store left to the teacher (over its size budget)
    teacher: torch.nn.Module | None = None  # run on every batch for `live`
    targets: list[np.ndarray] | None = None  # translation with teacher targets: the teacher's translations, trained on instead of the references

    @property
    def reads_teacher(self) -> bool:
        """Whether the method has a loss on the teacher's signals (else it trains on gold rows only)."""
        return any(not LOSSES[name].gold or LOSSES[name].teacher_targets for name in self.objective.weights)

    def rows(self, training: Split) -> Split:
        """The rows the method trains on: all of `training` (in the store's order) when it reads the
        teacher; only the gold-labelled ones when it does not (ce alone: unlabelled rows would add
        nothing but steps)."""
        if self.targets is not None:  # the teacher's translations replace the references
            column = np.empty(len(self.targets), dtype=object)
            column[:] = self.targets
            return replace(training, extra={**training.extra, "target_ids": column})
        return training if self.reads_teacher else training.take(np.flatnonzero(training.labelled))

    def budget_for(self, ours: int, everyone: int, gold_steps: str) -> Budget:
        """The budget over the method's `ours` rows of `everyone` training rows: distill's, or, for
        a gold-only method with gold_steps "matched", enough epochs over its gold rows to take at
        least the optimiser steps a method reading every row takes."""
        if gold_steps == "epochs" or ours == everyone:
            return self.budget
        size = self.budget.batch_size
        return replace(self.budget, epochs=math.ceil(self.budget.epochs * math.ceil(everyone / size) / math.ceil(ours / size)))

    @cached_property
    def from_source(self) -> dict[str, list[int]]:
        """What the method reads from `source`: `wanted` less `live`."""
        return split_wanted(self.wanted, self.live)[0] if self.live else self.wanted

    def step_loss(self, model, batch: dict, idx: np.ndarray) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The teacher's signals for the batch (store or online; a store's over-budget tensors
        from the teacher now), then the method's objective."""
        if not self.reads_teacher:
            return self.objective(model, batch, {}, {})
        outputs_t, tensors_t = self.source.signals(idx, batch, self.from_source)  # {"logits": (B, C)}, {(kind, layer): ...}
        if self.live:
            tensors_t |= online_batch(self.teacher, batch, self.live, self.task)[1]
        return self.objective(model, batch, outputs_t, tensors_t)


def recorded(dp: DistillParams) -> dict:
    """The distill params in a student's record; label_smoothing only when set (records without it had none)."""
    return dp.model_dump(exclude=None if dp.label_smoothing else {"label_smoothing"})


def assemble_run(params: Params, student: str, method: str, seed: int, teacher: torch.nn.Module, store, task: Task,
                 expect: StoreInputs | None = None) -> DistillRun:
    """The run of `student` x `method` x `seed` for an encoder teacher (Task.assemble's default),
    reading the teacher's signals from `store` (a signals.SignalStore), or from `teacher` itself
    when `store` is None. With `expect`, the store must come from those inputs and this teacher,
    and hold what the method reads. `task`: the task bound to the prepared data."""
    dp, sp = params.distill, params.students[student]
    weights = params.methods[method].weights()
    cfg = teacher.config
    pairs = resolve_layer_map(dp.layer_map, cfg.num_hidden_layers, get_family(sp.family).layers(sp))
    check_compatible(weights, dp, sp, cfg.num_attention_heads, cfg.hidden_size, task)
    wanted = wanted_tensors([weights], pairs, dp.attn_mse_on)
    if store is not None and expect is not None:
        store.require(wanted, expect.inputs_sha256, expect.teacher_sha256, expect.examples)
    model = task.new_student(teacher, sp, pairs, seed)  # seeds its own initialisation
    objective = Objective(weights, pairs, dp, sp, cfg.hidden_size, cfg.num_attention_heads, task)  # after the student: its projections draw next
    record = {"seed": seed, "student": student, "method": method, "weights": weights, "architecture": sp.model_dump(),
              "distill": recorded(dp), "layer_pairs": pairs}
    live = split_wanted(wanted, store.manifest.online)[1] if store is not None else {}
    return DistillRun(task, model, objective, store if store is not None else Online(teacher, task), wanted, pairs, budget_of(dp, seed), record,
                      live, teacher.eval() if live else None)
