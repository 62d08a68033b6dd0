"""Distillation losses: pure tensor functions, chosen by name from `LOSSES`.

Dimensions: B batch, H heads, T tokens (padded), C classes. `mask` is (B, T) with 1 on real
tokens and 0 on padding. Suffixes: `_s` student, `_t` teacher. Teacher tensors carry no gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnkd.errors import UserError


def ce_loss(logits_s: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Hard-label cross-entropy, mean over the batch. logits_s (B, C), labels (B,)."""
    return F.cross_entropy(logits_s, labels)


def kd_loss(logits_s: torch.Tensor, logits_t: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. 2015, "Distilling the Knowledge in a Neural Network".

    L_KD = T^2 * mean_b KL( softmax(z_t / T) || softmax(z_s / T) )

    The T^2 factor keeps the gradient scale of the soft term comparable across temperatures.
    logits_s, logits_t: (B, C).
    """
    log_p_s = F.log_softmax(logits_s / temperature, dim=-1)  # (B, C)
    log_p_t = F.log_softmax(logits_t.detach() / temperature, dim=-1)  # (B, C)
    return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean") * temperature**2


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


# name -> function; a method in params.yaml weights these by name
LOSSES = {"ce": ce_loss, "kd": kd_loss, "attn_kl": attn_kl_loss}
ATTENTION_LOSSES = frozenset({"attn_kl"})


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
