"""Distillation losses: pure tensor functions, and `LOSSES`, the one registry a method's loss
weights are chosen from by name.

Dimensions: B batch, H heads, T tokens (padded), C classes. `mask` is (B, T) with 1 on real
tokens and 0 on padding. Suffixes: `_s` student, `_t` teacher. Teacher tensors carry no gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attnkd.errors import UserError


def ce_loss(logits_s: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Hard-label cross-entropy, mean over the rows with a gold label. A label of -1 marks a row
    without one (few labels, the transfer set): it adds nothing, and a batch of such rows gives 0.
    With label smoothing eps (Szegedy et al. 2016): (1 - eps) (-log q[y]) + eps mean_c (-log q[c]).
    logits_s (B, C), labels (B,)."""
    gold = labels >= 0  # (B,)
    if bool(gold.all()):
        return F.cross_entropy(logits_s, labels, label_smoothing=smoothing)
    if not bool(gold.any()):
        return logits_s.sum() * 0.0
    return F.cross_entropy(logits_s[gold], labels[gold], label_smoothing=smoothing)


def kd_loss(logits_s: torch.Tensor, logits_t: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. 2015, "Distilling the Knowledge in a Neural Network".

    L_KD = T^2 * mean_b KL( softmax(z_t / T) || softmax(z_s / T) )

    The T^2 factor keeps the gradient scale of the soft term comparable across temperatures.
    logits_s, logits_t: (B, C).
    """
    log_p_s = F.log_softmax(logits_s / temperature, dim=-1)  # (B, C)
    log_p_t = F.log_softmax(logits_t.detach() / temperature, dim=-1)  # (B, C)
    return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean") * temperature**2


def kd_mse_loss(logits_s: torch.Tensor, logits_t: torch.Tensor) -> torch.Tensor:
    """Logit matching (Tang et al. 2019, "Distilling Task-Specific Knowledge from BERT into Simple
    Neural Networks", eq. 2; Ba & Caruana 2014).

    L = mean_b || z_s[b] - z_t[b] ||_2^2

    The squared distance is summed over the C outputs (the paper's norm) and averaged over rows.
    No temperature: raw logits are matched. In a span view, masked positions hold the same fill
    value on both sides and add nothing. logits_s, logits_t: (B, C).
    """
    return ((logits_s.float() - logits_t.detach().float()) ** 2).sum(-1).mean()


def cls_kl_loss(row_s: torch.Tensor, row_t: torch.Tensor, mask: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Attention-pooling transfer: the student's attention row over the tokens learns the
    teacher's `[CLS]`-query attention row (head-averaged).

    L = mean_b sum_{k real} a_t[b, k] log( a_t[b, k] / a_s[b, k] )      (KL(a_t || a_s))

    row_s: (B, T) the student's row: a BiLSTM's pooling weights, or a transformer's [CLS] row
    averaged over heads; row_t: (B, T) the teacher's [CLS] row averaged over heads (models.layer_tensor,
    kind "cls"). Both are distributions over the real tokens; padded keys are excluded.
    """
    keys = mask.bool()  # (B, T)
    p_t = row_t.detach().float().masked_fill(~keys, 0.0)  # (B, T)
    log_ratio = torch.log(p_t.clamp_min(eps)) - torch.log(row_s.float().clamp_min(eps))
    return (p_t * log_ratio).sum(-1).mean()  # p_t is 0 on padded keys


def cls_mse_loss(row_s: torch.Tensor, row_t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The same rows as cls_kl_loss, matched by squared error averaged over each example's real
    tokens, then over the batch: L = mean_b 1/|x_b| sum_{k real} (a_s[b, k] - a_t[b, k])^2.
    row_s, row_t: (B, T)."""
    m = mask.float()  # (B, T)
    return ((((row_s.float() - row_t.detach().float()) ** 2) * m).sum(-1) / m.sum(-1)).mean()


def topk_kd_loss(logits_s: torch.Tensor, topk_ids: torch.Tensor, topk_logp_t: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """Word-level KD for sequence outputs (Kim & Rush 2016, eq. 5) from the teacher's stored top-k.

    p_t[j] = exp(l_t[j] / T) / sum_{i in top-k} exp(l_t[i] / T) over the k tokens kept (the
    teacher's distribution tempered and renormalised over its top k: the mass outside them is not
    stored), q_s = softmax(z_s / T) over the whole vocabulary, and
    L = T^2 * mean over real target positions of sum_{j in top-k} p_t[j] (log p_t[j] - log q_s[j]),
    which is >= 0 and 0 only when the student puts the teacher's top-k proportions on those tokens.
    logits_s (B, m, V); topk_ids (B, m, k) token ids; topk_logp_t (B, m, k) the teacher's
    log-probabilities at T = 1; mask (B, m) 1 on real target positions.
    """
    log_q = F.log_softmax(logits_s.float() / temperature, dim=-1).gather(-1, topk_ids)  # (B, m, k)
    log_p = F.log_softmax(topk_logp_t.detach().float() / temperature, dim=-1)  # (B, m, k), renormalised over the k kept
    per_token = (log_p.exp() * (log_p - log_q)).sum(-1)  # (B, m)
    m = mask.float()
    return temperature**2 * (per_token * m).sum() / m.sum()


def cross_kl_loss(attn_s: torch.Tensor, attn_t: torch.Tensor, mask: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Cross-attention transfer between encoder-decoders, head-averaged: each target token's
    alignment over the source tokens (the KL on attention distributions of MiniLM, applied to the
    decoder's cross-attention as in Align-to-Distill), for any head counts on either side.

    L = mean_b [ 1 / |y_b| sum_{j real} KL( a_t[b, j, :] || a_s[b, j, :] ) ],  a = the mean over heads

    attn_s (B, H_s, m, n), attn_t (B, H_t, m, n): post-softmax, each row over the n source
    tokens; mask (B, m): 1 on real target tokens (the queries). Padded source tokens (keys) hold
    probability 0 in the teacher's rows (the model masks them; the store pads with 0), so they add
    nothing; padded target rows are left out of the mean, and each pair is averaged over its own
    target length. The same loss transfers the encoder's self-attention (m = n source tokens,
    mask the source's) and the decoder's (n = m target tokens, causal: keys after a query hold 0).
    """
    p_t = attn_t.detach().float().mean(1)  # (B, m, n)
    a_s = attn_s.float().mean(1)  # (B, m, n)
    kl_rows = (p_t * (torch.log(p_t.clamp_min(eps)) - torch.log(a_s.clamp_min(eps)))).sum(-1)  # (B, m)
    queries = mask.float()  # (B, m)
    return ((kl_rows * queries).sum(-1) / queries.sum(-1)).mean()


def map_kl_loss(attn_s: torch.Tensor, attn_t: torch.Tensor, mask: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-head attention-map transfer between encoder-decoders: `cross_kl_loss` head by head.

    L = mean_b [ 1 / (H * |q_b|) sum_h sum_{j real} KL( a_t[b, h, j, :] || a_s[b, h, j, :] ) ]

    attn_s, attn_t (B, H, m, n) with equal head counts (head h of the student learns head h of
    the teacher); mask (B, m): 1 on the real query rows. Keys as in `cross_kl_loss`: padded
    keys hold 0 in the teacher's rows and add nothing.
    """
    if attn_s.shape[1] != attn_t.shape[1]:
        raise ValueError(f"per-head maps need equal head counts: student {attn_s.shape[1]}, teacher {attn_t.shape[1]}")
    p_t = attn_t.detach().float()  # (B, H, m, n)
    kl_rows = (p_t * (torch.log(p_t.clamp_min(eps)) - torch.log(attn_s.float().clamp_min(eps)))).sum(-1)  # (B, H, m)
    queries = mask[:, None, :].float()  # (B, 1, m)
    return ((kl_rows * queries).sum((1, 2)) / (queries.sum((1, 2)) * attn_s.shape[1])).mean()


def map_mse_loss(attn_s: torch.Tensor, attn_t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention-map transfer by squared error (TinyBERT's loss on probabilities, for the
    rectangular maps of encoder-decoders): the squared distance between each query row of the
    student and of the teacher, summed over the keys, averaged over the heads and real rows.

    L = mean_b [ 1 / (H * |q_b|) sum_h sum_{j real} sum_k ( a_s[b, h, j, k] - a_t[b, h, j, k] )^2 ]

    attn_s, attn_t (B, H, m, n), equal head counts (pass head-averaged (B, 1, m, n) maps
    otherwise); mask (B, m): 1 on real query rows. Padded keys hold 0 on both sides (the models
    mask them, the store pads with 0), so the sum over all n keys is the sum over the real ones
    and the value does not depend on the padding. TinyBERT divides by the n keys too; summing
    keeps a row's error on the scale of its probabilities whatever the source length.
    """
    if attn_s.shape[1] != attn_t.shape[1]:
        raise ValueError(f"per-head maps need equal head counts: student {attn_s.shape[1]}, teacher {attn_t.shape[1]}")
    sq_rows = ((attn_s.float() - attn_t.detach().float()) ** 2).sum(-1)  # (B, H, m)
    queries = mask[:, None, :].float()  # (B, 1, m)
    return ((sq_rows * queries).sum((1, 2)) / (queries.sum((1, 2)) * attn_s.shape[1])).mean()


def attn_kl_loss(attn_s: torch.Tensor, attn_t: torch.Tensor, mask: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """MiniLM self-attention distribution transfer (Wang et al. 2020, eq. 4).

    L_AT = mean_b [ 1 / (H * |x_b|) * sum_h sum_{q real} KL( A_t[b, h, q, :] || A_s[b, h, q, :] ) ]

    attn_s, attn_t: (B, H, T, T) post-softmax probabilities (rows over keys sum to 1 on real keys).
    Padding is excluded on both axes: keys by masking the KL sum, queries by averaging over real
    query rows only. Each example is averaged over its own length, so the value does not depend
    on how far the batch was padded. Head counts must match (the per-head policy).
    """
    if attn_s.shape != attn_t.shape:
        raise ValueError(f"attention shapes differ: student {tuple(attn_s.shape)} vs teacher {tuple(attn_t.shape)}")
    keys = mask[:, None, None, :].bool()  # (B, 1, 1, T)
    p_t = attn_t.detach().float().masked_fill(~keys, 0.0)  # (B, H, T, T)
    log_ratio = torch.log(p_t.clamp_min(eps)) - torch.log(attn_s.float().clamp_min(eps))
    kl_rows = (p_t * log_ratio).masked_fill(~keys, 0.0).sum(-1)  # (B, H, T)
    queries = mask[:, None, :].float()  # (B, 1, T)
    per_example = (kl_rows * queries).sum((1, 2)) / (queries.sum((1, 2)) * attn_s.shape[1])  # (B,)
    return per_example.mean()


def attn_mse_loss(attn_s: torch.Tensor, attn_t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """TinyBERT attention-based distillation (Jiao et al. 2020, eq. 3).

    L_attn = mean_b [ 1 / (H * |x_b|^2) * sum_h sum_{q, k real} (A_s[b, h, q, k] - A_t[b, h, q, k])^2 ]

    attn_s, attn_t: (B, H, T, T). TinyBERT applies it to the *unnormalised scores*
    Q K^T / sqrt(d) (pass scores captured from Q and K, see models.capture), and notes that
    this converged faster than on probabilities; on probabilities (the default) it is the same
    formula. Padded query rows and key columns are excluded; each example is averaged over its
    own |x|^2 real entries, so padding length does not change the value.
    """
    pair = (mask[:, :, None] * mask[:, None, :]).float()[:, None]  # (B, 1, T, T)
    sq = (attn_s.float() - attn_t.detach().float()) ** 2 * pair  # (B, H, T, T)
    per_example = sq.sum((1, 2, 3)) / (pair.sum((1, 2, 3)) * attn_s.shape[1])  # (B,)
    return per_example.mean()


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, D) -> (B, R, T, D / R): the relation-head view of MiniLMv2."""
    b, t, d = x.shape
    if d % heads:
        raise ValueError(f"width {d} is not divisible by {heads} relation heads")
    return x.view(b, t, heads, d // heads).transpose(1, 2)


def relation_kl_loss(x_s: torch.Tensor, x_t: torch.Tensor, mask: torch.Tensor, heads: int) -> torch.Tensor:
    """KL between self-relations of teacher and student vectors (MiniLM / MiniLMv2).

    R[b, r, q, :] = softmax( X_r[q] X_r^T / sqrt(d_r) ) over real keys, with X split into
    `heads` relation heads of width d_r = D / heads (each side its own D, so teacher and
    student may differ in width and head count). Loss: KL(R_t || R_s) per real query row,
    averaged as in attn_kl_loss. x_s (B, T, D_s), x_t (B, T, D_t).
    """
    rel = []
    for x in (x_s, x_t):
        xh = split_heads(x.float(), heads)  # (B, R, T, d_r)
        scores = xh @ xh.transpose(-1, -2) / xh.shape[-1] ** 0.5  # (B, R, T, T)
        scores = scores.masked_fill(~mask[:, None, None, :].bool(), torch.finfo(scores.dtype).min)
        rel.append(torch.softmax(scores, dim=-1))
    return attn_kl_loss(rel[0], rel[1].detach(), mask)


def value_relation_loss(v_s: torch.Tensor, v_t: torch.Tensor, mask: torch.Tensor, heads: int) -> torch.Tensor:
    """MiniLM value-relation transfer (Wang et al. 2020, eq. 6-7).

    L_VR = KL( softmax(V_t V_t^T / sqrt(d_k)) || softmax(V_s V_s^T / sqrt(d_k)) ) per attention
    head and real query row. MiniLM needs equal head counts; `heads` is that count.
    v_s (B, T, D_s), v_t (B, T, D_t): the value projections of the mapped layers.
    """
    return relation_kl_loss(v_s, v_t, mask, heads)


def qkv_relation_loss(qkv_s: dict[str, torch.Tensor], qkv_t: dict[str, torch.Tensor], mask: torch.Tensor, heads: int) -> torch.Tensor:
    """MiniLMv2 multi-head self-attention relation transfer (Wang et al. 2021, eq. 5-6).

    L = mean over {Q-Q, K-K, V-V} of KL(R_t || R_s), each relation computed with `heads`
    relation heads (not the models' attention heads), so widths and head counts may differ.
    MiniLMv2 weighs the three relations equally, as here.
    """
    return torch.stack([relation_kl_loss(qkv_s[k], qkv_t[k], mask, heads) for k in ("q", "k", "v")]).mean()


def at_map_loss(h_s: torch.Tensor, h_t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zagoruyko & Komodakis 2017, "Paying More Attention to Attention", activation-based maps.

    a(h)[t] = sum_d h[t, d]^2 over real tokens, then a / ||a||_2 (the paper's F^2_sum).
    L_AT = mean_b || a(h_s) / ||a(h_s)|| - a(h_t) / ||a(h_t)|| ||_2^2

    The paper writes the p=2 norm of the difference; we use its square, as the official code
    does (`(at(x) - at(y)).pow(2)`). The official code then takes a *mean* over positions,
    which divides by the padded length; we sum over real tokens so padding cannot change the
    value. Widths may differ: the map is a per-token scalar. h_s (B, T, D_s), h_t (B, T, D_t).
    """
    m = mask.float()  # (B, T)
    maps = [F.normalize(h.float().pow(2).sum(-1) * m, dim=-1) for h in (h_s, h_t.detach())]  # (B, T)
    return ((maps[0] - maps[1]) ** 2).sum(-1).mean()


def hidden_mse_loss(h_s: torch.Tensor, h_t: torch.Tensor, mask: torch.Tensor, proj: torch.nn.Module | None = None) -> torch.Tensor:
    """TinyBERT hidden-state distillation (eq. 2) / FitNets hints (Romero et al. 2015).

    L_hidn = mean over real tokens and teacher dims of (h_s W - h_t)^2, with W a learned
    (D_s, D_t) projection when widths differ (`proj`; identity when they match).
    h_s (B, T, D_s), h_t (B, T, D_t).
    """
    x = proj(h_s) if proj is not None else h_s
    m = mask.float()[:, :, None]  # (B, T, 1)
    return (((x.float() - h_t.detach().float()) ** 2) * m).sum() / (m.sum() * h_t.shape[-1])


# ---------------------------------------------------------------------------- the registry
#
# Every loss a method may weight is declared here once: its function with the one signature
# (student view, target view, mask, config), the tensor kinds it reads, and whether it applies
# to each mapped layer pair. Method weights (params), the store's wanted tensors, the
# compatibility checks and the objective are all derived from `LOSSES`.

# tensor kind -> tensor: one layer's ("attn", "q", ...), or the task's view of the outputs: rows of
# scores {"logits": (R, C)} and their gold choices {"labels": (R,)} (see attnkd.tasks)
View = dict[str, torch.Tensor]


@dataclass(frozen=True)
class LossConfig:
    """What a loss may read besides its two views: the distill params it depends on, the
    models' shapes, and the layer pair's learned projection (hidden_mse with unequal widths)."""

    temperature: float = 1.0
    label_smoothing: float = 0.0  # of the hard-label losses
    head_policy: str = "per_head"  # per_head | average (head-averaged maps)
    relation_heads: int = 1
    attn_mse_on: str = "probs"  # probs | scores
    student_heads: int = 1
    student_width: int = 1
    teacher_heads: int = 1
    teacher_width: int = 1
    proj: torch.nn.Module | None = None


@dataclass(frozen=True)
class Loss:
    fn: Callable[[View, View, torch.Tensor, LossConfig], torch.Tensor]
    reads: Callable[[LossConfig], tuple[str, ...]]  # kinds read on each side (the target of ce: labels)
    per_layer: bool  # applied to every mapped (teacher layer, student layer) pair, then averaged
    check: Callable[[LossConfig], str | None] = lambda cfg: None  # why it cannot pair these models, or None
    gold: bool = False  # reads the gold targets (the task's "labels" view) instead of the teacher's
    teacher_targets: bool = False  # its targets are the teacher's outputs (sequence-level KD: the teacher's translations)
    seq2seq: bool | None = False  # False: encoder tasks only; True: task translation only; None: every task
    source_queries: bool = False  # per-layer maps whose queries are the source tokens (an encoder's): masked by the source, not the loss mask
    projects: bool = False  # learns a (student width -> teacher width) projection when the widths differ


def _kinds(*kinds: str) -> Callable[[LossConfig], tuple[str, ...]]:
    return lambda cfg: kinds


def _attn_kind(cfg: LossConfig) -> str:
    return "scores" if cfg.attn_mse_on == "scores" else "attn"


def _head_view(a_s: torch.Tensor, a_t: torch.Tensor, cfg: LossConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The head policy: per head as they are, or head-averaged (B, 1, T, T) maps."""
    if cfg.head_policy == "average":
        return a_s.mean(1, keepdim=True), a_t.mean(1, keepdim=True)
    return a_s, a_t


def _per_head_needs_equal_heads(cfg: LossConfig) -> str | None:
    if cfg.head_policy == "per_head" and cfg.student_heads != cfg.teacher_heads:
        return (f"distill.head_policy: per_head needs equal head counts (teacher {cfg.teacher_heads}, student "
                f"{cfg.student_heads}); use head_policy: average or the qkv_relation loss")
    return None


def _value_relation_needs_equal_heads(cfg: LossConfig) -> str | None:
    if cfg.student_heads != cfg.teacher_heads:
        return "methods: value_relation (MiniLM) needs equal head counts; use qkv_relation (MiniLMv2) instead"
    return None


def _relation_heads_divide_widths(cfg: LossConfig) -> str | None:
    for side, width in (("student", cfg.student_width), ("teacher", cfg.teacher_width)):
        if width % cfg.relation_heads:
            return f"distill.relation_heads: {cfg.relation_heads} does not divide the {side} width {width}"
    return None


SEQ2SEQ_MAPS = ("cross", "enc", "dec")  # an encoder-decoder's attention kinds


def _map_loss(kind: str, divergence: str, per_head: bool) -> Callable[[View, View, torch.Tensor, LossConfig], torch.Tensor]:
    """An encoder-decoder map loss on one kind: KL or squared error, head by head or on head-averaged maps."""
    def fn(s: View, t: View, mask: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
        a_s, a_t = s[kind], t[kind]  # (B, H, m, n)
        if divergence == "kl":
            return map_kl_loss(a_s, a_t, mask) if per_head else cross_kl_loss(a_s, a_t, mask)
        if not per_head:
            a_s, a_t = a_s.float().mean(1, keepdim=True), a_t.float().mean(1, keepdim=True)  # (B, 1, m, n)
        return map_mse_loss(a_s, a_t, mask)
    return fn


def _map_heads_need_equal_heads(cfg: LossConfig) -> str | None:
    if cfg.student_heads != cfg.teacher_heads:
        return (f"the per-head map losses (*_heads) need equal head counts (teacher {cfg.teacher_heads}, student {cfg.student_heads}); "
                "use the head-averaged cross_kl, enc_kl, dec_kl or *_mse")
    return None


def _kd(s: dict, t: dict, cfg: LossConfig) -> torch.Tensor:
    """Hinton KD on (R, C) rows; from a teacher view of top-k (a stored translation teacher's,
    (R, k)): word-level KD over those k tokens, every row a real target position."""
    if "topk_ids" in t:
        return topk_kd_loss(s["logits"], t["topk_ids"], t["topk_logp"], torch.ones(len(t["topk_ids"]), device=t["topk_ids"].device), cfg.temperature)
    return kd_loss(s["logits"], t["logits"], cfg.temperature)


LOSSES: dict[str, Loss] = {
    "ce": Loss(lambda s, t, mask, cfg: ce_loss(s["logits"], t["labels"], cfg.label_smoothing), _kinds("logits", "labels"), per_layer=False, gold=True,
               seq2seq=None),
    "kd": Loss(lambda s, t, mask, cfg: _kd(s, t, cfg), _kinds("logits"), per_layer=False, seq2seq=None),
    # sequence-level KD (Kim & Rush 2016): the cross-entropy of ce, on the teacher's translations instead of the references
    "seq_kd": Loss(lambda s, t, mask, cfg: ce_loss(s["logits"], t["labels"], cfg.label_smoothing), _kinds("logits", "labels"), per_layer=False, gold=True,
                   teacher_targets=True, seq2seq=True),
    # an encoder-decoder's attention maps: cross-attention, the encoder's self-attention (queries: the source tokens) and the
    # decoder's (the target so far); <kind>_kl and <kind>_mse compare head-averaged maps, <kind>_kl_heads and <kind>_mse_heads head by head
    **{f"{kind}_{div}{heads}": Loss(_map_loss(kind, div, per_head=bool(heads)), _kinds(kind), per_layer=True, seq2seq=True, source_queries=kind == "enc",
                                    check=_map_heads_need_equal_heads if heads else lambda cfg: None)
       for kind in SEQ2SEQ_MAPS for div in ("kl", "mse") for heads in ("", "_heads")},
    "kd_mse": Loss(lambda s, t, mask, cfg: kd_mse_loss(s["logits"], t["logits"]), _kinds("logits"), per_layer=False),
    "cls_kl": Loss(lambda s, t, mask, cfg: cls_kl_loss(s["cls"], t["cls"], mask), _kinds("cls"), per_layer=True),
    "cls_mse": Loss(lambda s, t, mask, cfg: cls_mse_loss(s["cls"], t["cls"], mask), _kinds("cls"), per_layer=True),
    "attn_kl": Loss(lambda s, t, mask, cfg: attn_kl_loss(*_head_view(s["attn"], t["attn"], cfg), mask), _kinds("attn"), per_layer=True,
                    check=_per_head_needs_equal_heads),
    "attn_mse": Loss(lambda s, t, mask, cfg: attn_mse_loss(*_head_view(s[_attn_kind(cfg)], t[_attn_kind(cfg)], cfg), mask),
                     lambda cfg: (_attn_kind(cfg),), per_layer=True, check=_per_head_needs_equal_heads),
    "value_relation": Loss(lambda s, t, mask, cfg: value_relation_loss(s["v"], t["v"], mask, cfg.teacher_heads), _kinds("v"), per_layer=True,
                           check=_value_relation_needs_equal_heads),
    "qkv_relation": Loss(lambda s, t, mask, cfg: qkv_relation_loss(s, t, mask, cfg.relation_heads), _kinds("q", "k", "v"), per_layer=True,
                         check=_relation_heads_divide_widths),
    "at_map": Loss(lambda s, t, mask, cfg: at_map_loss(s["hidden"], t["hidden"], mask), _kinds("hidden"), per_layer=True),
    "hidden_mse": Loss(lambda s, t, mask, cfg: hidden_mse_loss(s["hidden"], t["hidden"], mask, cfg.proj), _kinds("hidden"), per_layer=True,
                       projects=True),
}


def resolve_layer_map(layer_map: str | list[list[int]], n_teacher: int, n_student: int) -> list[tuple[int, int]]:
    """(teacher_layer, student_layer) pairs, 1-based.

    uniform: TinyBERT's g(m) = k * m with k = N / M; when N / M is not an integer we take
      g(m) = floor(m * N / M), which keeps g(M) = N (last layers always paired).
    last: MiniLM's choice, the last student layer learns from the last teacher layer.
    explicit: the given pairs, validated against both depths.
    """
    if layer_map == "uniform":
        if n_student > n_teacher:
            raise UserError(f"distill.layer_map: uniform needs a student no deeper than the teacher ({n_student} > {n_teacher})")
        return [((m * n_teacher) // n_student, m) for m in range(1, n_student + 1)]
    if layer_map == "last":
        return [(n_teacher, n_student)]
    pairs = [(int(t), int(s)) for t, s in layer_map]
    for t, s in pairs:
        if not 1 <= t <= n_teacher or not 1 <= s <= n_student:
            raise UserError(
                f"distill.layer_map: pair [{t}, {s}] is out of range (teacher has {n_teacher} layers, student {n_student})"
            )
    if len({s for _, s in pairs}) != len(pairs):
        raise UserError("distill.layer_map: a student layer appears twice")
    return pairs
