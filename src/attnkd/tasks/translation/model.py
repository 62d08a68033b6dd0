"""Sequence-to-sequence models for translation: a Transformer encoder-decoder built from config,
batches of sentence pairs, the teacher's per-token signals, and decoding.

The model is transformers' Marian encoder-decoder (Vaswani et al. 2017: post-LayerNorm blocks,
sinusoidal positions, one embedding table shared by encoder, decoder and output layer) with eager
attention, so a forward pass with `output_attentions=True` returns encoder self-attention (B, H, n, n),
decoder self-attention (B, H, m, m) and cross-attention (B, H, m, n) per layer, post-softmax. It is
built from an architecture (`Architecture`) and the vocabulary size, never loaded from a hub.

Shapes: B sentence pairs, n source tokens, m target tokens (both padded), V vocabulary. A source
is its subword ids then </s>; a target is its ids then </s>; the decoder reads <s> then the
target shifted right (teacher forcing) and predicts the target, so position j of the decoder
output scores target token j.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from attnkd.tasks.translation.text import BOS, EOS, PAD, SPECIALS

PAD_ID, BOS_ID, EOS_ID = (SPECIALS.index(t) for t in (PAD, BOS, EOS))
IGNORE = -1  # the label of a padded target position


@dataclass(frozen=True)
class Architecture:
    encoder_layers: int
    decoder_layers: int
    d_model: int
    heads: int
    ffn: int  # feed-forward width
    dropout: float = 0.1
    attention_dropout: float = 0.0  # HF returns attention after dropout: 0 keeps the transferred maps clean
    max_positions: int = 256


def build_model(arch: Architecture, vocab_size: int, seed: int):
    """A fresh encoder-decoder of the architecture, initialised from the seed, eager attention."""
    from transformers import MarianConfig, MarianMTModel

    torch.manual_seed(seed)
    config = MarianConfig(
        vocab_size=vocab_size, d_model=arch.d_model, encoder_layers=arch.encoder_layers, decoder_layers=arch.decoder_layers,
        encoder_attention_heads=arch.heads, decoder_attention_heads=arch.heads, encoder_ffn_dim=arch.ffn, decoder_ffn_dim=arch.ffn,
        dropout=arch.dropout, attention_dropout=arch.attention_dropout, activation_dropout=0.0, activation_function="relu",
        max_position_embeddings=arch.max_positions, scale_embedding=True, share_encoder_decoder_embeddings=True, tie_word_embeddings=True,
        pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID, decoder_start_token_id=BOS_ID, forced_eos_token_id=None,
    )
    config._attn_implementation = "eager"
    return MarianMTModel(config)


def encode(tokenizer, texts: list[str], max_length: int) -> list[np.ndarray]:
    """Each text's subword ids (a `tokenizers.Tokenizer`, no specials), cut to max_length - 1, then </s>."""
    return cut(tokenizer.encode_batch(texts), max_length)


def cut(encodings: list, max_length: int) -> list[np.ndarray]:
    """Encodings (`tokenizers.Encoding`) as ids cut to max_length - 1, then </s>."""
    return [np.array([*enc.ids[: max_length - 1], EOS_ID], dtype=np.int32) for enc in encodings]


def pad_rows(rows: list[np.ndarray], fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) ids padded with `fill` to the longest row, and its (B, L) mask (1 on real tokens)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), fill, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.from_numpy(np.asarray(r, dtype=np.int64))
        mask[i, : len(r)] = 1
    return ids, mask


def collate_pairs(sources: list[np.ndarray], targets: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """One batch: input_ids, attention_mask (B, n); decoder_input_ids = <s> + target[:-1] and
    decoder_attention_mask (B, m); labels = target (B, m), IGNORE on padding."""
    input_ids, attention_mask = pad_rows(sources, PAD_ID)
    decoder_input_ids, decoder_mask = pad_rows([np.concatenate([[BOS_ID], t[:-1]]) for t in targets], PAD_ID)
    labels, _ = pad_rows(targets, IGNORE)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "decoder_input_ids": decoder_input_ids,
            "decoder_attention_mask": decoder_mask, "labels": labels}


def forward(model, batch: dict[str, torch.Tensor], **kwargs):
    """The model under teacher forcing (labels are not passed: no loss inside the model)."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=batch["decoder_input_ids"],
                 decoder_attention_mask=batch["decoder_attention_mask"], **kwargs)


def label_smoothed_ce(logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Cross-entropy with label smoothing (Szegedy et al. 2016), mean over real target positions:
    L = mean_j [ (1 - eps) (-log q_j[y_j]) + eps * mean_v (-log q_j[v]) ].
    logits (B, m, V); labels (B, m), IGNORE on padding."""
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE, label_smoothing=smoothing)


@torch.no_grad()
def teacher_topk(logits: torch.Tensor, target_mask: torch.Tensor, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per pair, the teacher's k most probable tokens at each real target position under teacher
    forcing: ids (m_i, k) int32 and log-probabilities (m_i, k) float32, most probable first.
    logits (B, m, V); target_mask (B, m)."""
    logp, ids = F.log_softmax(logits.float(), dim=-1).topk(k, dim=-1)  # (B, m, k)
    lengths = target_mask.sum(-1).tolist()
    return [(ids[b, :n].to(torch.int32).numpy(), logp[b, :n].numpy()) for b, n in enumerate(lengths)]


def pad_topk(rows: list[tuple[np.ndarray, np.ndarray]], m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stored top-k rows as (B, m, k) ids (PAD_ID beyond each pair's length) and log-probabilities
    (0 there): what losses.topk_kd_loss reads, with the target mask leaving the padding out."""
    k = rows[0][0].shape[1]
    ids = torch.full((len(rows), m, k), PAD_ID, dtype=torch.long)
    logp = torch.zeros((len(rows), m, k), dtype=torch.float32)
    for b, (i, p) in enumerate(rows):
        ids[b, : len(i)] = torch.from_numpy(i.astype(np.int64))
        logp[b, : len(p)] = torch.from_numpy(p.astype(np.float32))
    return ids, logp


@torch.no_grad()
def translate(model, sources: list[np.ndarray], beam: int, max_new_tokens: int | None = None, batch_size: int = 64, device="cpu") -> list[np.ndarray]:
    """Each source's translation as target ids without specials: greedy (beam 1) or beam search
    through `generate`, batched by source length, returned in the given order. At most
    `max_new_tokens` tokens, or, when None, twice the source's own length plus 10 (within the
    model's positions), so a translation does not depend on the batch it was decoded in."""
    from transformers import GenerationConfig

    model.eval()
    order = np.argsort([len(s) for s in sources], kind="stable")
    out: list[np.ndarray] = [np.zeros(0, dtype=np.int32)] * len(sources)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        input_ids, mask = pad_rows([sources[i] for i in idx], PAD_ID)
        limits = [max_new_tokens or min(2 * len(sources[i]) + 10, model.config.max_position_embeddings - 1) for i in idx]
        limit = max(limits)
        config = GenerationConfig(num_beams=beam, do_sample=False, max_new_tokens=limit, decoder_start_token_id=BOS_ID, bos_token_id=BOS_ID,
                                  eos_token_id=EOS_ID, pad_token_id=PAD_ID, early_stopping=beam > 1)
        generated = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device), generation_config=config)  # (B, 1 + steps): <s> first
        for row, i, own in zip(generated[:, 1:].tolist(), idx, limits):
            row = row[:own]
            ids = row[: row.index(EOS_ID)] if EOS_ID in row else row
            out[i] = np.array([t for t in ids if t != PAD_ID], dtype=np.int32)
    return out


def _decode_seconds(model, sources: list[np.ndarray], batch_size: int) -> float:
    t0 = time.perf_counter()
    translate(model, sources, beam=1, batch_size=batch_size)
    return time.perf_counter() - t0


@torch.no_grad()
def decoding_efficiency(models: dict[str, torch.nn.Module], sources: list[np.ndarray], latency_examples: int, throughput_examples: int,
                        batch_size: int, repeats: int) -> dict[str, dict[str, float]]:
    """Greedy decoding speed of every model on the same sources, one thread: batch-1 latency
    (median ms per sentence over the first `latency_examples` x repeats) and throughput (median
    sentences/s of the first `throughput_examples` in batches of `batch_size`). After one warm-up
    pass per model, the repeats go round-robin over the models (as metrics.efficiency)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ones, many = sources[:latency_examples], sources[:throughput_examples]
        for model in models.values():
            _decode_seconds(model.eval(), ones[:2] + many[:batch_size], batch_size)
        latencies = {name: [] for name in models}
        rates = {name: [] for name in models}
        for _ in range(repeats):
            for name, model in models.items():
                latencies[name] += [_decode_seconds(model, [s], 1) for s in ones]
                rates[name].append(len(many) / _decode_seconds(model, many, batch_size))
        return {name: {"latency_ms": 1000.0 * statistics.median(latencies[name]), "throughput_eps": statistics.median(rates[name])} for name in models}
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def cross_agreement(teacher, students: dict[str, tuple[torch.nn.Module, list[tuple[int, int]]]], sources: list[np.ndarray],
                    targets: list[np.ndarray], batch_size: int) -> dict[str, dict[str, float]]:
    """For every student and mapped (teacher decoder layer, student decoder layer) pair: the mean
    Jensen-Shannon divergence (bits) between the student's and the teacher's head-averaged
    cross-attention rows (each target token's alignment over the source), teacher-forced on the
    same pairs, over real target tokens. Keys are `t<teacher_layer>-s<student_layer>`."""
    from attnkd.metrics import js_divergence

    sums = {name: {} for name in students}
    count = 0
    for start in range(0, len(sources), batch_size):
        batch = collate_pairs(sources[start : start + batch_size], targets[start : start + batch_size])
        rows = batch["decoder_attention_mask"].bool()  # (B, m)
        cross_t = forward(teacher.eval(), batch, output_attentions=True).cross_attentions
        count += int(rows.sum())
        for name, (model, pairs) in students.items():
            cross_s = forward(model.eval(), batch, output_attentions=True).cross_attentions
            for t, s in pairs:
                js = js_divergence(cross_s[s - 1].double().mean(1), cross_t[t - 1].double().mean(1))[rows]  # (B, m) -> real target tokens
                sums[name][f"t{t}-s{s}"] = sums[name].get(f"t{t}-s{s}", 0.0) + float(js.sum())
    return {name: {k: v / count for k, v in layers.items()} for name, layers in sums.items()}


@torch.no_grad()
def cross_snapshot(models: dict[str, torch.nn.Module], pairs: list[tuple[int, int]], source: np.ndarray, target: np.ndarray, max_tokens: int
                   ) -> dict[str, dict[str, list[list[float]]]]:
    """Per model ("teacher" reads the pair's teacher layer, every other model its student layer)
    and mapped pair `t<l>-s<l>`: the head-averaged cross-attention of one pair run alone, target
    rows by source columns, cut to the first max_tokens of each: (m, n) as nested lists."""
    batch = collate_pairs([source], [target])
    m, n = min(max_tokens, len(target)), min(max_tokens, len(source))
    out = {}
    for name, model in models.items():
        layers = forward(model.eval(), batch, output_attentions=True).cross_attentions
        out[name] = {f"t{t}-s{s}": layers[(t if name == "teacher" else s) - 1][0].mean(0)[:m, :n].tolist() for t, s in pairs}
    return out
