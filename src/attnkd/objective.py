"""A method's training objective: which teacher tensors it reads, and its weighted loss.

A method is a dict of loss weights (params.yaml `methods`) over the names of `losses.LOSSES`.
This module turns it into the tensors the signal store must hold (`wanted_tensors`), the checks
that the losses can pair the two models (`check_compatible`), and the per-batch loss
(`Objective`), applying the layer map. Every unweighted term is returned so it can be logged,
the per-layer ones also per layer pair (`attn_kl/t3-s1`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from attnkd.errors import UserError
from attnkd.losses import LOSSES, SEQ2SEQ_MAPS, LossConfig, resolve_layer_map
from attnkd.models import capture, raw_outputs
from attnkd.params import DistillParams, Params, StudentParams
from attnkd.students import get_family

if TYPE_CHECKING:
    from attnkd.tasks.base import Task

Pairs = list[tuple[int, int]]
CAPTURED = ("q", "k", "v", "scores")  # kinds read through forward hooks (models.capture)


def loss_config(dp: DistillParams, sp: StudentParams, teacher_width: int, teacher_heads: int) -> LossConfig:
    """The losses' config for a student architecture under this teacher and these distill params."""
    family = get_family(sp.family)
    return LossConfig(temperature=dp.temperature, label_smoothing=dp.label_smoothing, head_policy=dp.head_policy, relation_heads=dp.relation_heads, attn_mse_on=dp.attn_mse_on,
                      student_heads=family.heads(sp), student_width=family.width(sp), teacher_heads=teacher_heads,
                      teacher_width=teacher_width)


def layer_kinds(weights: dict[str, float], cfg: LossConfig) -> set[str]:
    """The per-layer tensor kinds these losses read (on both sides)."""
    return {k for name in weights if LOSSES[name].per_layer for k in LOSSES[name].reads(cfg)}


def wanted_tensors(weights: list[dict[str, float]], pairs: Pairs, attn_mse_on: str) -> dict[str, list[int]]:
    """Teacher tensors (kind -> teacher layers) that these methods' losses read."""
    cfg = LossConfig(attn_mse_on=attn_mse_on)
    kinds = set().union(*(layer_kinds(w, cfg) for w in weights))
    return {k: sorted({t for t, _ in pairs}) for k in sorted(kinds)}


def store_plan(params: Params, teacher_config: dict, task: Task) -> dict[str, list[int]]:
    """What the signal store must hold: the tensors every configured method's losses read, for the
    teacher layers the layer map pairs with a layer of some student in distill.students.

    Every (student, method) pair is checked first (the family serves the task, `check_compatible`),
    so a loss that cannot pair the models fails here, before extract or any student runs.
    teacher_config: the teacher's config.json (depth, heads, width, as task.layer_shape reads them)."""
    dp = params.distill
    teacher_layers, teacher_heads, teacher_width = task.layer_shape(teacher_config)
    check_students(params, teacher_heads, teacher_width, task)
    pairs = sorted({p for name in dp.students for p in resolve_layer_map(dp.layer_map, teacher_layers, get_family(params.students[name].family).layers(params.students[name]))})
    return wanted_tensors([m.weights() for m in params.methods.values()], pairs, dp.attn_mse_on)


def check_students(params: Params, teacher_heads: int, teacher_width: int, task: Task) -> None:
    """Every student of distill.students can train the task, and every method on it: else one
    line naming the student (and the method)."""
    for name in params.distill.students:
        sp = params.students[name]
        problem = get_family(sp.family).serves(task)
        if problem:
            raise UserError(f"students.{name}: {problem}")
        for method, weights in params.methods.items():
            try:
                check_compatible(weights.weights(), params.distill, sp, teacher_heads, teacher_width, task)
            except UserError as e:
                raise UserError(f"students.{name} with methods.{method}: {e}") from None


def check_compatible(weights: dict[str, float], dp: DistillParams, sp: StudentParams, teacher_heads: int, teacher_width: int, task: Task) -> None:
    """Fail at load time, naming the params key, when a loss cannot pair these models or does not
    apply to the task (losses.Loss.seq2seq against task.encoder_decoder)."""
    cfg = loss_config(dp, sp, teacher_width, teacher_heads)
    encoder_decoder = task.encoder_decoder
    for name in weights:
        applies = LOSSES[name].seq2seq
        if applies is not None and applies != encoder_decoder:
            fitting = [n for n, loss in LOSSES.items() if loss.seq2seq is None or loss.seq2seq == encoder_decoder]
            raise UserError(f"methods: {name} is not a loss of task {task.name} (its losses: {', '.join(fitting)})")
    if encoder_decoder and any(LOSSES[n].teacher_targets for n in weights) and any(LOSSES[n].gold and not LOSSES[n].teacher_targets for n in weights):
        raise UserError(f"methods: {', '.join(weights)}: one loss trains on the teacher's translations and another on the references; "
                        "a method takes one of the two targets")
    exposed = task.student_kinds(sp)
    for name in weights:
        lacking = [k for k in LOSSES[name].reads(cfg) if LOSSES[name].per_layer and k not in exposed]
        if lacking:
            fitting = [n for n, loss in LOSSES.items() if loss.per_layer and set(loss.reads(cfg)) <= set(exposed)]
            raise UserError(f"methods: {name} reads {', '.join(lacking)} of each mapped student layer, which a {sp.family} student "
                            f"does not have (it has {', '.join(exposed)}); losses it can train: {', '.join(fitting)}")
        problem = LOSSES[name].check(cfg)
        if problem:
            raise UserError(problem)


class Objective(torch.nn.Module):
    """sum_i w_i * L_i over the mapped layer pairs (each layer loss averaged over pairs).

    Holds the learned projections (student width -> teacher width) of the losses that project,
    one per student layer, when the widths differ; they train with the student and are discarded
    after distillation.
    """

    def __init__(self, weights: dict[str, float], pairs: Pairs, dp: DistillParams, sp: StudentParams, teacher_width: int, teacher_heads: int,
                 task: Task):
        super().__init__()
        self.weights, self.pairs, self.task = weights, pairs, task
        self.cfg = loss_config(dp, sp, teacher_width, teacher_heads)
        self.family = get_family(sp.family).for_task(task)  # reads the student's layer tensors
        self.proj = torch.nn.ModuleDict()
        width = self.cfg.student_width
        if any(LOSSES[name].projects for name in weights) and width != teacher_width:
            for _, s in pairs:
                self.proj[str(s)] = torch.nn.Linear(width, teacher_width)
        self.kinds = layer_kinds(weights, self.cfg)

    def _pair_config(self, student_layer: int) -> LossConfig:
        if not self.proj:
            return self.cfg
        return LossConfig(**{**self.cfg.__dict__, "proj": self.proj[str(student_layer)]})

    def forward(self, student, batch: dict, outputs_t: dict[str, torch.Tensor], t: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted total and every unweighted term: per loss (`attn_kl`), and for the
        per-layer losses also per pair (`attn_kl/t3-s1`). `outputs_t`: the teacher's raw outputs
        (the task's, e.g. {"logits": (B, C)}); `t`: (kind, teacher layer) -> tensor."""
        mask = self.task.loss_mask(batch)  # (B, T): the real tokens (of the target, for an encoder-decoder)
        captured = sorted(self.kinds & set(CAPTURED))
        with capture(student, [s for _, s in self.pairs] if captured else [], scores="scores" in captured) as cap:
            out = self.task.forward(student, batch, output_attentions=bool({"attn", "cls", *SEQ2SEQ_MAPS} & self.kinds), output_hidden_states="hidden" in self.kinds)
        view_s = self.task.view(raw_outputs(self.task, out), batch)  # {"logits": (R, C)}
        view_t = self.task.view(outputs_t, batch) if outputs_t else {}  # none for a method of gold losses only
        targets = self.task.targets(batch)  # {"labels": (R,)}
        terms: dict[str, torch.Tensor] = {}
        per_pair: dict[str, torch.Tensor] = {}
        for name in self.weights:
            loss = LOSSES[name]
            if not loss.per_layer:
                terms[name] = loss.fn(view_s, targets if loss.gold else view_t, mask, self.cfg)
                continue
            kinds = loss.reads(self.cfg)
            for tl, sl in self.pairs:
                layer_s = {k: self.family.layer_tensor(k, sl, out, cap) for k in kinds}  # the family's accessor of the layer convention
                layer_t = {k: t[(k, tl)] for k in kinds}
                queries = batch["attention_mask"] if loss.source_queries else mask  # (B, n) the source's, or the task's (B, T)
                per_pair[f"{name}/t{tl}-s{sl}"] = loss.fn(layer_s, layer_t, queries, self._pair_config(sl))
            terms[name] = torch.stack([per_pair[f"{name}/t{tl}-s{sl}"] for tl, sl in self.pairs]).mean()
        total = sum(self.weights[k] * v for k, v in terms.items())
        return total, terms | per_pair
