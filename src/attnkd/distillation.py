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
from pathlib import Path

import numpy as np
import torch

from attnkd.data import Split
from attnkd.errors import UserError
from attnkd.losses import LOSSES, resolve_layer_map
from attnkd.models import attention_layers, build_student
from attnkd.objective import Objective, check_compatible, seq2seq_wanted, wanted_tensors
from attnkd.params import DistillParams, Params
from attnkd.pair_store import PairSource, PairStore
from attnkd.signals import SignalStore, online_batch, split_wanted, teacher_batch
from attnkd.tasks import Task, get_task
from attnkd.train import Budget, budget_of


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
    source: SignalStore | torch.nn.Module  # the store, or the teacher (online)
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
        outputs_t, tensors_t = teacher_batch(self.source, idx, batch, self.from_source, self.task)  # {"logits": (B, C)}, {(kind, layer): ...}
        if self.live:
            tensors_t |= online_batch(self.teacher, batch, self.live, self.task)[1]
        return self.objective(model, batch, outputs_t, tensors_t)


def open_store(root: Path, task: Task) -> SignalStore | PairStore:
    """The signal store extract wrote for the task: an encoder-decoder teacher's for translation."""
    return PairStore(root) if task.name == "translation" else SignalStore(root)


def recorded(dp: DistillParams) -> dict:
    """The distill params in a student's record; label_smoothing only when set (records without it had none)."""
    return dp.model_dump(exclude=None if dp.label_smoothing else {"label_smoothing"})


def assemble(params: Params, student: str, method: str, seed: int, teacher: torch.nn.Module, store: SignalStore | PairStore | None,
             expect: StoreInputs | None = None, task: Task | None = None) -> DistillRun:
    """The run of `student` x `method` x `seed`, reading the teacher's signals from `store`, or
    from `teacher` itself when `store` is None. With `expect`, the store must come from those
    inputs and this teacher, and hold what the method reads. `task`: the task bound to the
    prepared data (default: params' task, unbound)."""
    dp, sp = params.distill, params.students[student]
    weights = params.methods[method].weights()
    task = task or get_task(params.task)
    if task.name == "translation":
        return assemble_seq2seq(params, student, method, seed, teacher, store, expect, task)
    cfg = teacher.config
    pairs = resolve_layer_map(dp.layer_map, cfg.num_hidden_layers, attention_layers(sp))
    check_compatible(weights, dp, sp, cfg.num_attention_heads, cfg.hidden_size, task.name)
    wanted = wanted_tensors([weights], pairs, dp.attn_mse_on)
    if store is not None and expect is not None:
        store.require(wanted, expect.inputs_sha256, expect.teacher_sha256)
        if store.manifest.num_examples != expect.examples:
            raise UserError(f"{store.root / 'manifest.json'}: {store.manifest.num_examples} examples, training split has {expect.examples}; "
                            "re-run `dvc repro extract`")
    model = build_student(teacher, sp, pairs, seed)  # seeds its own initialisation
    objective = Objective(weights, pairs, dp, sp, cfg.hidden_size, cfg.num_attention_heads, task)  # after the student: its projections draw next
    record = {"seed": seed, "student": student, "method": method, "weights": weights, "architecture": sp.model_dump(),
              "distill": recorded(dp), "layer_pairs": pairs}
    live = split_wanted(wanted, store.manifest.online)[1] if store is not None else {}
    return DistillRun(task, model, objective, store if store is not None else teacher.eval(), wanted, pairs, budget_of(dp, seed), record,
                      live, teacher.eval() if live else None)


def assemble_seq2seq(params: Params, student: str, method: str, seed: int, teacher: torch.nn.Module, store: PairStore | None,
                     expect: StoreInputs | None, task: Task) -> DistillRun:
    """An encoder-decoder student of translation: the layer map pairs decoder layers; the method
    trains on the teacher's translations (a loss with teacher targets) or the references, and
    reads the teacher's top-k and cross-attention under those targets from the store."""
    dp, sp = params.distill, params.students[student]
    weights = params.methods[method].weights()
    if store is None:
        raise UserError("params.yaml: distill.signals: online does not take task translation; use store (extract writes the teacher's translations)")
    cfg = teacher.config
    pairs = resolve_layer_map(dp.layer_map, cfg.decoder_layers, sp.num_layers)
    check_compatible(weights, dp, sp, cfg.decoder_attention_heads, cfg.d_model, task.name)
    target, wanted = seq2seq_wanted(weights, pairs)
    if expect is not None:
        store.require({f"{target}/{k}": v for k, v in wanted.items()} | ({"teacher/ids": []} if target == "teacher" else {}),
                      expect.inputs_sha256, expect.teacher_sha256)
        if store.manifest.num_examples != expect.examples:
            raise UserError(f"{store.root / 'manifest.json'}: {store.manifest.num_examples} pairs, training split has {expect.examples}; "
                            "re-run `dvc repro extract`")
    model = task.new_student(teacher, sp, pairs, seed)  # seeds its own initialisation
    objective = Objective(weights, pairs, dp, sp, cfg.d_model, cfg.decoder_attention_heads, task)
    record = {"seed": seed, "student": student, "method": method, "weights": weights, "architecture": sp.model_dump(),
              "distill": recorded(dp), "layer_pairs": pairs, "targets": target}
    return DistillRun(task, model, objective, PairSource(store, target), wanted, pairs, budget_of(dp, seed), record,
                      targets=store.translations() if target == "teacher" else None)
