"""A method's training objective: which teacher tensors it reads, and its weighted loss.

A method is a dict of loss weights (params.yaml `methods`) over the names of `losses.LOSSES`.
This module turns it into the tensors the signal store must hold (`wanted_tensors`), the checks
that the losses can pair the two models (`check_compatible`), and the per-batch loss
(`Objective`), applying the layer map. Every unweighted term is returned so it can be logged,
the per-layer ones also per layer pair (`attn_kl/t3-s1`).
"""

from __future__ import annotations

import torch

from attnkd.errors import UserError
from attnkd.losses import LOSSES, SEQ2SEQ_MAPS, LossConfig, resolve_layer_map
from attnkd.models import FAMILY_KINDS, attention_layers, capture, layer_tensor, student_width
from attnkd.params import DistillParams, Params, StudentParams
from attnkd.tasks import Task, get_task, raw_outputs

Pairs = list[tuple[int, int]]
CAPTURED = ("q", "k", "v", "scores")  # kinds read through forward hooks (models.capture)


def loss_config(dp: DistillParams, sp: StudentParams, teacher_width: int, teacher_heads: int) -> LossConfig:
    """The losses' config for a student architecture under this teacher and these distill params."""
    return LossConfig(temperature=dp.temperature, label_smoothing=dp.label_smoothing, head_policy=dp.head_policy, relation_heads=dp.relation_heads, attn_mse_on=dp.attn_mse_on,
                      student_heads=1 if sp.family == "lstm" else sp.num_heads, student_width=student_width(sp), teacher_heads=teacher_heads,
                      teacher_width=teacher_width)


def layer_kinds(weights: dict[str, float], cfg: LossConfig) -> set[str]:
    """The per-layer tensor kinds these losses read (on both sides)."""
    return {k for name in weights if LOSSES[name].per_layer for k in LOSSES[name].reads(cfg)}


def wanted_tensors(weights: list[dict[str, float]], pairs: Pairs, attn_mse_on: str) -> dict[str, list[int]]:
    """Teacher tensors (kind -> teacher layers) that these methods' losses read."""
    cfg = LossConfig(attn_mse_on=attn_mse_on)
    kinds = set().union(*(layer_kinds(w, cfg) for w in weights))
    return {k: sorted({t for t, _ in pairs}) for k in sorted(kinds)}


def store_plan(params: Params, teacher_config: dict) -> dict[str, list[int]]:
    """What the signal store must hold: the tensors every configured method's losses read, for the
    teacher layers the layer map pairs with a layer of some student in distill.students.

    Every (student, method) pair is checked first (`check_compatible`), so a loss that cannot pair
    the models fails here, before extract or any student runs. teacher_config: the teacher's
    config.json (depth, heads, width)."""
    dp = params.distill
    if params.task == "translation":
        return translation_plan(params, teacher_config)
    teacher_layers, teacher_heads, teacher_width = (teacher_config[k] for k in ("num_hidden_layers", "num_attention_heads", "hidden_size"))
    for name in dp.students:
        if params.students[name].family == "lstm" and params.task != "classification":
            raise UserError(f"students.{name}: family lstm classifies; task {params.task!r} needs a transformer student")
        for method, weights in params.methods.items():
            try:
                check_compatible(weights.weights(), dp, params.students[name], teacher_heads, teacher_width, params.task)
            except UserError as e:
                raise UserError(f"students.{name} with methods.{method}: {e}") from None
    pairs = sorted({p for name in dp.students for p in resolve_layer_map(dp.layer_map, teacher_layers, attention_layers(params.students[name]))})
    return wanted_tensors([m.weights() for m in params.methods.values()], pairs, dp.attn_mse_on)


def translation_plan(params: Params, teacher_config: dict) -> dict[str, list[int]]:
    """What an encoder-decoder teacher's store must hold (attnkd.pair_store): per method, on its
    targets (the teacher's translations for a method with a teacher-targets loss, else the
    references), the top-k for an output-level loss and, for a per-layer loss, the maps it reads
    (cross-attention, encoder or decoder self-attention) of the layers the layer map pairs with
    a student's: decoder layers, and for the encoder's maps the encoder layers of the same
    numbers (which the teacher's encoder must have)."""
    dp = params.distill
    wanted: dict[str, set[int]] = {}
    for name in dp.students:
        sp = params.students[name]
        if sp.family != "transformer":
            raise UserError(f"students.{name}: family {sp.family} classifies; task translation trains transformer encoder-decoders")
        pairs = resolve_layer_map(dp.layer_map, teacher_config["decoder_layers"], sp.num_layers)
        for method, weights in params.methods.items():
            w = weights.weights()
            deepest = max(t for t, _ in pairs)
            if any(LOSSES[k].source_queries for k in w) and deepest > teacher_config["encoder_layers"]:
                raise UserError(f"methods.{method}: an encoder self-attention loss reads the teacher layers distill.layer_map pairs in the encoder too, "
                                f"up to layer {deepest}, but the teacher has {teacher_config['encoder_layers']} encoder layers (teacher.seq2seq); "
                                "map onto layers both stacks have (e.g. distill.layer_map: [[1, 1]])")
            try:
                check_compatible(w, dp, sp, teacher_config["decoder_attention_heads"], teacher_config["d_model"], params.task)
            except UserError as e:
                raise UserError(f"students.{name} with methods.{method}: {e}") from None
            target, kinds = seq2seq_wanted(w, pairs)
            if target == "teacher":
                wanted.setdefault("teacher/ids", set())
            for kind, layers in kinds.items():
                wanted.setdefault(f"{target}/{kind}", set()).update(layers)
    return {k: sorted(v) for k, v in sorted(wanted.items())}


def seq2seq_wanted(weights: dict[str, float], pairs: Pairs) -> tuple[str, dict[str, list[int]]]:
    """An encoder-decoder method's targets ("teacher": its translations, for a loss with teacher
    targets; else "reference") and what it reads of the teacher under them: "topk" for an
    output-level loss, and each per-layer kind at the mapped teacher decoder layers."""
    target = "teacher" if any(LOSSES[k].teacher_targets for k in weights) else "reference"
    kinds: dict[str, list[int]] = {}
    for k in weights:
        loss = LOSSES[k]
        if loss.per_layer:
            for kind in loss.reads(LossConfig()):
                kinds[kind] = sorted({t for t, _ in pairs})
        elif not loss.gold:
            kinds["topk"] = []
    return target, kinds


def check_compatible(weights: dict[str, float], dp: DistillParams, sp: StudentParams, teacher_heads: int, teacher_width: int,
                     task: str = "classification") -> None:
    """Fail at load time, naming the params key, when a loss cannot pair these models or does not
    apply to the task."""
    cfg = loss_config(dp, sp, teacher_width, teacher_heads)
    seq2seq = task == "translation"
    for name in weights:
        applies = LOSSES[name].seq2seq
        if applies is not None and applies != seq2seq:
            fitting = [n for n, loss in LOSSES.items() if loss.seq2seq is None or loss.seq2seq == seq2seq]
            raise UserError(f"methods: {name} is not a loss of task {task} (its losses: {', '.join(fitting)})")
    if seq2seq and any(LOSSES[n].teacher_targets for n in weights) and any(LOSSES[n].gold and not LOSSES[n].teacher_targets for n in weights):
        raise UserError(f"methods: {', '.join(weights)}: one loss trains on the teacher's translations and another on the references; "
                        "a method takes one of the two targets")
    exposed = SEQ2SEQ_MAPS if seq2seq else FAMILY_KINDS[sp.family]
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
                 task: Task | None = None):
        super().__init__()
        self.weights, self.pairs, self.task = weights, pairs, task or get_task("classification")
        self.cfg = loss_config(dp, sp, teacher_width, teacher_heads)
        self.proj = torch.nn.ModuleDict()
        if any(LOSSES[name].projects for name in weights) and student_width(sp) != teacher_width:
            for _, s in pairs:
                self.proj[str(s)] = torch.nn.Linear(student_width(sp), teacher_width)
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
                layer_s = {k: layer_tensor(k, sl, out, cap) for k in kinds}  # one accessor for both sides' layer conventions
                layer_t = {k: t[(k, tl)] for k in kinds}
                queries = batch["attention_mask"] if loss.source_queries else mask  # (B, n) the source's, or the task's (B, T)
                per_pair[f"{name}/t{tl}-s{sl}"] = loss.fn(layer_s, layer_t, queries, self._pair_config(sl))
            terms[name] = torch.stack([per_pair[f"{name}/t{tl}-s{sl}"] for tl, sl in self.pairs]).mean()
        total = sum(self.weights[k] * v for k, v in terms.items())
        return total, terms | per_pair
