"""A method's training objective: which teacher tensors it reads, and its weighted loss.

A method is a dict of loss weights (params.yaml `methods`). This module turns it into the
tensors the signal store must hold (`wanted_tensors`) and into the per-batch loss
(`Objective`), applying the layer map and the head policy. Every unweighted term is returned
so it can be logged.
"""

from __future__ import annotations

import torch

from attnkd.errors import UserError
from attnkd.losses import LOSSES, NEEDS
from attnkd.models import capture, forward
from attnkd.params import DistillParams, StudentParams

Pairs = list[tuple[int, int]]


def kinds_for(loss: str, attn_mse_on: str) -> tuple[str, ...]:
    if loss == "attn_mse" and attn_mse_on == "scores":
        return ("scores",)
    return NEEDS[loss]


def wanted_tensors(weights: list[dict[str, float]], pairs: Pairs, attn_mse_on: str) -> dict[str, list[int]]:
    """Teacher tensors (kind -> teacher layers) that these methods' losses read."""
    kinds = {k for w in weights for loss in w for k in kinds_for(loss, attn_mse_on)}
    return {k: sorted({t for t, _ in pairs}) for k in sorted(kinds)}


def check_compatible(weights: dict[str, float], dp: DistillParams, sp: StudentParams, teacher_heads: int) -> None:
    """Fail at load time, naming the params key, when a loss cannot pair these models."""
    heads_differ = sp.num_heads != teacher_heads
    if heads_differ and dp.head_policy == "per_head" and {"attn_kl", "attn_mse"} & weights.keys():
        raise UserError(
            f"distill.head_policy: per_head needs equal head counts (teacher {teacher_heads}, student "
            f"{sp.num_heads}); use head_policy: average or the qkv_relation loss"
        )
    if heads_differ and "value_relation" in weights:
        raise UserError("methods: value_relation (MiniLM) needs equal head counts; use qkv_relation (MiniLMv2) instead")
    if "qkv_relation" in weights and sp.hidden_size % dp.relation_heads:
        raise UserError(f"distill.relation_heads: {dp.relation_heads} does not divide the student width {sp.hidden_size}")


class Objective(torch.nn.Module):
    """sum_i w_i * L_i over the mapped layer pairs (each layer loss averaged over pairs).

    Holds the learned projections of hidden_mse (student width -> teacher width) when the
    widths differ; they train with the student and are discarded after distillation.
    """

    def __init__(self, weights: dict[str, float], pairs: Pairs, dp: DistillParams, sp: StudentParams, teacher_width: int, teacher_heads: int):
        super().__init__()
        self.weights, self.pairs, self.dp, self.teacher_heads = weights, pairs, dp, teacher_heads
        self.proj = torch.nn.ModuleDict()
        if "hidden_mse" in weights and sp.hidden_size != teacher_width:
            for _, s in pairs:
                self.proj[str(s)] = torch.nn.Linear(sp.hidden_size, teacher_width)
        needs = {k for loss in weights for k in kinds_for(loss, dp.attn_mse_on)}
        self.needs_attn, self.needs_hidden = "attn" in needs, "hidden" in needs
        self.needs_capture = bool({"q", "k", "v", "scores"} & needs)
        self.needs_scores = "scores" in needs

    def _attn_pair(self, a_s: torch.Tensor, a_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.dp.head_policy == "average":
            return a_s.mean(1, keepdim=True), a_t.mean(1, keepdim=True)  # (B, 1, T, T)
        return a_s, a_t

    def forward(self, student, batch: dict, logits_t: torch.Tensor, t: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mask = batch["attention_mask"]  # (B, T)
        s_layers = [s for _, s in self.pairs]
        with capture(student, s_layers if self.needs_capture else [], scores=self.needs_scores) as cap:
            out = forward(student, batch, output_attentions=self.needs_attn, output_hidden_states=self.needs_hidden)
        terms: dict[str, torch.Tensor] = {}
        for loss in self.weights:
            if loss == "ce":
                terms[loss] = LOSSES["ce"](out.logits, batch["labels"])
            elif loss == "kd":
                terms[loss] = LOSSES["kd"](out.logits, logits_t, self.dp.temperature)
            else:
                terms[loss] = torch.stack([self._layer_loss(loss, tl, sl, out, cap, t, mask) for tl, sl in self.pairs]).mean()
        total = sum(self.weights[k] * v for k, v in terms.items())
        return total, terms

    def _layer_loss(self, loss: str, tl: int, sl: int, out, cap, t: dict, mask: torch.Tensor) -> torch.Tensor:
        if loss == "attn_kl":
            return LOSSES[loss](*self._attn_pair(out.attentions[sl - 1], t[("attn", tl)]), mask)
        if loss == "attn_mse":
            kind = "scores" if self.dp.attn_mse_on == "scores" else "attn"
            a_s = cap[sl]["scores"] if kind == "scores" else out.attentions[sl - 1]
            return LOSSES[loss](*self._attn_pair(a_s, t[(kind, tl)]), mask)
        if loss == "value_relation":
            return LOSSES[loss](cap[sl]["v"], t[("v", tl)], mask, self.teacher_heads)
        if loss == "qkv_relation":
            return LOSSES[loss](cap[sl], {k: t[(k, tl)] for k in "qkv"}, mask, self.dp.relation_heads)
        if loss == "at_map":
            return LOSSES[loss](out.hidden_states[sl], t[("hidden", tl)], mask)
        if loss == "hidden_mse":
            return LOSSES[loss](out.hidden_states[sl], t[("hidden", tl)], mask, self.proj[str(sl)] if self.proj else None)
        raise KeyError(loss)
