"""Measurements every task shares: speed, attention agreement with the teacher and the report's
attention maps (a task's own quality scores live in its package)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch

from attnkd.data import Split, collate, length_batches
from attnkd.artifacts import ModelRecord
from attnkd.models import count_parameters, forward, layer_tensor, weights_file
from attnkd.students import family_of


def _seconds(model, batches: list[dict[str, torch.Tensor]]) -> list[float]:
    times = []
    for b in batches:
        t0 = time.perf_counter()
        forward(model, b)
        times.append(time.perf_counter() - t0)
    return times


@torch.no_grad()
def efficiency(models: dict[str, torch.nn.Module], split: Split, pad_id: int, latency_examples: int, throughput_examples: int,
               batch_size: int, repeats: int) -> dict[str, dict[str, float]]:
    """Batch-1 latency (median ms over the first `latency_examples` x repeats) and throughput
    (median examples/s of a pass over the first `throughput_examples` in batches of `batch_size`)
    of every model on the same inputs, in the calling process.

    After one warm-up pass per model, the repeats go round-robin over the models, so a slow
    spell of a shared machine lands on all of them rather than on one. Runs on one thread:
    comparable across models and machines, not hostage to the core count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _efficiency(models, split, pad_id, latency_examples, throughput_examples, batch_size, repeats)
    finally:
        torch.set_num_threads(threads)


def _efficiency(models: dict[str, torch.nn.Module], split: Split, pad_id: int, latency_examples: int, throughput_examples: int,
                batch_size: int, repeats: int) -> dict[str, dict[str, float]]:
    ones = [collate(split, np.array([i]), pad_id) for i in range(min(latency_examples, len(split)))]
    first = np.arange(min(throughput_examples, len(split)))
    batched = [collate(split, first[idx], pad_id) for idx in length_batches(split.lengths[first], batch_size)]
    for model in models.values():
        model.eval()
        _seconds(model, ones + batched)
    latencies = {name: [] for name in models}
    rates = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            latencies[name] += _seconds(model, ones)
            rates[name].append(len(first) / sum(_seconds(model, batched)))
    return {name: {"latency_ms": 1000.0 * statistics.median(latencies[name]), "throughput_eps": statistics.median(rates[name])} for name in models}


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence in bits (0 = equal, 1 = disjoint) between distributions on the last axis."""
    m = 0.5 * (p + q)
    kl = lambda a: torch.special.xlogy(a, a).sum(-1) - torch.special.xlogy(a, m).sum(-1)  # noqa: E731
    return 0.5 * (kl(p) + kl(q)) / np.log(2.0)


@torch.no_grad()
def attention_agreement(teacher, students: dict[str, tuple[torch.nn.Module, list[tuple[int, int]]]], split: Split,
                        batch_size: int, pad_id: int) -> dict[str, dict[str, float]]:
    """For every student and mapped (teacher_layer, student_layer) pair: the mean Jensen-Shannon
    divergence (bits) between the student's and the teacher's attention rows, over heads (per
    head with equal head counts, else head-averaged maps), non-padding query tokens and examples.
    A student with one attention row per example (the BiLSTM's pooling) is compared with the
    teacher's [CLS] query row, head-averaged, averaged over examples. Keys are `t<teacher_layer>-s<student_layer>`."""
    teacher.eval()
    for model, _ in students.values():
        model.eval()
    sums = {name: {} for name in students}
    counts = dict.fromkeys(students, 0)
    families = {name: family_of(model) for name, (model, _) in students.items()}
    for idx in length_batches(split.lengths, batch_size):
        b = collate(split, idx, pad_id)
        rows = b["attention_mask"].bool()  # (B, T) real query tokens
        out_t = forward(teacher, b, output_attentions=True)
        att_t = out_t.attentions
        for name, (model, pairs) in students.items():
            out = forward(model, b, output_attentions=True)
            family = families[name]
            pooled = family.attention == "row"
            counts[name] += len(idx) if pooled else int(rows.sum())
            for t_layer, s_layer in pairs:
                if pooled:  # one row per example: (B, T) against the teacher's [CLS] row
                    js = js_divergence(family.layer_tensor("cls", s_layer, out, {}).double(), layer_tensor("cls", t_layer, out_t, {}).double())  # (B,)
                else:
                    a_s, a_t = out.attentions[s_layer - 1].double(), att_t[t_layer - 1].double()  # (B, H, T, T)
                    if a_s.shape[1] != a_t.shape[1]:  # different head counts: compare head-averaged maps (B, 1, T, T)
                        a_s, a_t = a_s.mean(1, keepdim=True), a_t.mean(1, keepdim=True)
                    js = js_divergence(a_s, a_t).mean(1)[rows]  # (B, T) -> real queries
                key = f"t{t_layer}-s{s_layer}"
                sums[name][key] = sums[name].get(key, 0.0) + float(js.sum())
    return {name: {k: v / counts[name] for k, v in layers.items()} for name, layers in sums.items()}



def heatmap_examples(lengths: np.ndarray, k: int, min_tokens: int = 8) -> list[int]:
    """The k shortest examples with at least `min_tokens` tokens (ties: first in the split)."""
    order = np.argsort(lengths, kind="stable")
    long_enough = [int(i) for i in order if lengths[i] >= min_tokens]
    return (long_enough or [int(i) for i in order])[:k]


@torch.no_grad()
def attention_snapshot(models: dict[str, torch.nn.Module], pairs: list[tuple[int, int]], split: Split, i: int, max_tokens: int,
                       pad_id: int) -> dict[str, dict[str, list[list[float]]]]:
    """Per model ("teacher" reads the pair's teacher layer, every other model its student layer)
    and mapped pair `t<l>-s<l>`: the head-averaged attention of example i run alone (no padding),
    cut to its first min(max_tokens, length) tokens: (n, n) as nested lists, queries first."""
    b = collate(split, np.array([i]), pad_id)
    n = min(max_tokens, len(split.input_ids[i]))
    out = {}
    for name, model in models.items():
        layers = forward(model.eval(), b, output_attentions=True).attentions
        out[name] = {f"t{t}-s{s}": layers[(t if name == "teacher" else s) - 1][0].mean(0)[:n, :n].tolist() for t, s in pairs}
    return out


@torch.no_grad()
def pooling_snapshot(teacher, students: dict[str, torch.nn.Module], layer: int, split: Split, i: int, max_tokens: int, pad_id: int
                     ) -> dict[str, list[float]]:
    """The teacher's [CLS] query row at `layer`, averaged over heads, and each pooling student's
    attention-pooling row, on example i run alone, cut to its first min(max_tokens, length) tokens."""
    b = collate(split, np.array([i]), pad_id)
    n = min(max_tokens, len(split.input_ids[i]))
    rows = {"teacher": layer_tensor("cls", layer, forward(teacher.eval(), b, output_attentions=True), {})[0, :n].tolist()}
    return rows | {name: family_of(model).layer_tensor("cls", 1, forward(model.eval(), b), {})[0, :n].tolist() for name, model in students.items()}


def heatmap_data(models: dict, records: dict, groups: dict[str, list[str]], test: Split, meta: dict, task, tokenizer, rp) -> list[dict]:
    """The report's heatmaps: on its chosen test examples, the teacher and the first-seed student of
    each row whose layer map is the first row's, per mapped pair (`maps`); and for the BiLSTM rows,
    which have no (n, n) map, their pooling rows beside the teacher's [CLS] row (`rows`)."""
    firsts = {row: names[0] for row, names in groups.items() if row != "teacher"}
    pooled = {row: n for row, n in firsts.items() if family_of(models[n]).attention == "row"}
    first = {row: n for row, n in firsts.items() if family_of(models[n]).attention == "maps"}
    if not rp.heatmap_examples or not (first or pooled):
        return []
    pairs = records[next(iter(first.values()))].layer_pairs if first else []
    drawn = {"teacher": models["teacher"]} | {row: models[n] for row, n in first.items() if records[n].layer_pairs == pairs}
    row_layer = records[next(iter(pooled.values()))].layer_pairs[0][0] if pooled else 0
    out = []
    for i in heatmap_examples(test.lengths, rp.heatmap_examples):
        tokens = tokenizer.convert_ids_to_tokens([int(t) for t in test.input_ids[i][: rp.heatmap_tokens]])
        entry = {"example": i, "tokens": tokens, "title": f"test example {i} ({task.caption(test, i, meta)}), {len(test.input_ids[i])} tokens"}
        if first:
            entry |= {"pairs": pairs, "maps": attention_snapshot(drawn, pairs, test, i, rp.heatmap_tokens, tokenizer.pad_token_id)}
        if pooled:
            students = {row: models[n] for row, n in pooled.items() if records[n].layer_pairs[0][0] == row_layer}
            entry |= {"row_layer": row_layer, "rows": pooling_snapshot(models["teacher"], students, row_layer, test, i, rp.heatmap_tokens, tokenizer.pad_token_id)}
        out.append(entry)
    return out


def encoder_measures(models, students, records, groups, test, meta, task, tokenizer, params) -> tuple[dict, dict, list]:
    """Attention agreement per mapped layer pair, forward-pass latency and throughput, heatmap data."""
    ep = params.evaluate
    attending = {n: s for n, s in students.items() if family_of(s[0]).attention != "none"}  # a BiLSTM tagger has no attention to compare
    agreement = attention_agreement(models["teacher"], attending, test.head(ep.agreement_examples), ep.batch_size, tokenizer.pad_token_id)
    timing = efficiency(models, test, tokenizer.pad_token_id, ep.latency_examples, ep.throughput_examples, ep.batch_size, ep.latency_repeats)
    return agreement, timing, heatmap_data(models, records, groups, test, meta, task, tokenizer, params.report)


def model_identity(name: str, record: ModelRecord | None, teacher_seed: int) -> dict:
    """Which model a metrics file is about: the teacher, or a student's architecture, method and
    seed; and the training rows it saw per epoch (labelled, unlabelled), when its record says."""
    student = record if record is not None and record.role == "student" else None
    return {"model": name, "student": student.student if student else "teacher", "method": student.method if student else "teacher",
            "seed": student.seed if student else teacher_seed} | ({"examples": record.examples} if record is not None and record.examples else {})


def model_size(model, model_dir: Path) -> dict:
    """Parameters and size on disk of a model's weights."""
    return {"params": count_parameters(model), "size_mb": round(weights_file(model_dir).stat().st_size / 1e6, 3)}
