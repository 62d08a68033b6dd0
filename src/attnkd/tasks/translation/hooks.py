"""Translation's implementations of the pipeline's capabilities: the encoder-decoder teacher's
store plan and extract (attnkd.tasks.translation.store), the distillation run of an
encoder-decoder student, and evaluate's measures (decoding speed, cross-attention agreement)."""

from __future__ import annotations

from pathlib import Path

from attnkd.errors import UserError
from attnkd.io import atomic_dir, sha256_file
from attnkd.losses import LOSSES, LossConfig, resolve_layer_map
from attnkd.models import load_model, weights_file
from attnkd.objective import Objective, Pairs, check_compatible, check_students
from attnkd.params import Params
from attnkd.students import get_family
from attnkd.tasks.translation.store import PairSource, PairStore, extract_pairs


def translation_plan(params: Params, teacher_config: dict, task) -> dict[str, list[int]]:
    """What an encoder-decoder teacher's store must hold (attnkd.tasks.translation.store): per method, on its
    targets (the teacher's translations for a method with a teacher-targets loss, else the
    references), the top-k for an output-level loss and, for a per-layer loss, the maps it reads
    (cross-attention, encoder or decoder self-attention) of the layers the layer map pairs with
    a student's: decoder layers, and for the encoder's maps the encoder layers of the same
    numbers (which the teacher's encoder must have)."""
    dp = params.distill
    layers, heads, width = task.layer_shape(teacher_config)
    check_students(params, heads, width, task)
    wanted: dict[str, set[int]] = {}
    for name in dp.students:
        sp = params.students[name]
        pairs = resolve_layer_map(dp.layer_map, layers, get_family(sp.family).layers(sp))
        deepest = max(t for t, _ in pairs)
        for method, weights in params.methods.items():
            w = weights.weights()
            if any(LOSSES[k].source_queries for k in w) and deepest > teacher_config["encoder_layers"]:
                raise UserError(f"methods.{method}: an encoder self-attention loss reads the teacher layers distill.layer_map pairs in the encoder too, "
                                f"up to layer {deepest}, but the teacher has {teacher_config['encoder_layers']} encoder layers (teacher.seq2seq); "
                                "map onto layers both stacks have (e.g. distill.layer_map: [[1, 1]])")
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


def write_store(params: Params, teacher_dir: Path, train, planned: dict[str, list[int]], out: Path, compute, task) -> str:
    """An encoder-decoder teacher's store (attnkd.tasks.translation.store): its translations, top-k and
    cross-attention, as the plan lists them for the methods' targets."""
    ep = params.extract
    model = load_model(teacher_dir, task).to(compute.device)
    describe = {"teacher_sha256": sha256_file(weights_file(teacher_dir)), "inputs_sha256": task.inputs_digest(train)}
    with atomic_dir(out) as tmp:
        manifest = extract_pairs(model, train, planned, ep.topk, ep.beam, ep.dtype, ep.batch_size, tmp, describe, compute.device)
        size = sum(f.bytes for f in manifest.files.values())
        if size > ep.max_gb * 2**30:
            raise UserError(f"params.yaml: extract.max_gb: the translation store takes {size / 2**30:.2f} GiB, over {ep.max_gb:g}; "
                            "raise it, or lower extract.topk or the mapped decoder layers")
    return f"extract: {len(train)} pairs, {planned}, {size / 2**20:.1f} MiB of extract.max_gb {ep.max_gb:g} GiB -> {out}"


def store_line(manifest) -> str:
    """Where the students' teacher signals came from: the pair store, what and how big."""
    size = sum(f.bytes for f in manifest.files.values())
    stored = ", ".join(f"{k}" + (f" of decoder layers {ls}" if ls else "") for k, ls in manifest.tensors.items())
    return (f"teacher signals: from the signal store, {manifest.num_examples} training pairs: {stored} (top-{manifest.topk}; translations "
            f"{'greedy' if manifest.beam == 1 else f'beam {manifest.beam}'}; {size / 2**20:.1f} MiB, maps in {manifest.dtype})")


def assemble_seq2seq(params: Params, student: str, method: str, seed: int, teacher, store: PairStore | None, expect, task):
    """An encoder-decoder student of translation: the layer map pairs decoder layers; the method
    trains on the teacher's translations (a loss with teacher targets) or the references, and
    reads the teacher's top-k and cross-attention under those targets from the store."""
    from attnkd.distillation import DistillRun, recorded
    from attnkd.train import budget_of

    dp, sp = params.distill, params.students[student]
    weights = params.methods[method].weights()
    if store is None:
        raise UserError("params.yaml: distill.signals: online does not take task translation; use store (extract writes the teacher's translations)")
    cfg = teacher.config
    pairs = resolve_layer_map(dp.layer_map, cfg.decoder_layers, sp.num_layers)
    check_compatible(weights, dp, sp, cfg.decoder_attention_heads, cfg.d_model, task)
    target, wanted = seq2seq_wanted(weights, pairs)
    if expect is not None:
        store.require({f"{target}/{k}": v for k, v in wanted.items()} | ({"teacher/ids": []} if target == "teacher" else {}),
                      expect.inputs_sha256, expect.teacher_sha256, expect.examples)
    model = task.new_student(teacher, sp, pairs, seed)  # seeds its own initialisation
    objective = Objective(weights, pairs, dp, sp, cfg.d_model, cfg.decoder_attention_heads, task)
    record = {"seed": seed, "student": student, "method": method, "weights": weights, "architecture": sp.model_dump(),
              "distill": recorded(dp), "layer_pairs": pairs, "targets": target}
    return DistillRun(task, model, objective, PairSource(store, target), wanted, pairs, budget_of(dp, seed), record,
                      targets=store.translations() if target == "teacher" else None)


def translation_measures(models, students, records, groups, test, meta, task, tokenizer, params) -> tuple[dict, dict, list]:
    """Cross-attention agreement per mapped decoder-layer pair (teacher-forced on the test
    references), greedy decoding latency per sentence and throughput, and the alignment maps of
    the teacher and each row's first-seed student on the report's test pairs."""
    from attnkd.metrics import heatmap_examples
    from attnkd.tasks.translation.model import cross_agreement, cross_snapshot, decoding_efficiency

    ep, rp = params.evaluate, params.report
    sub = test.head(ep.agreement_examples)
    sources, targets = list(test.input_ids), list(test.extra["target_ids"])
    agreement = cross_agreement(models["teacher"], students, list(sub.input_ids), list(sub.extra["target_ids"]), ep.batch_size)
    timing = decoding_efficiency(models, sources, ep.latency_examples, ep.throughput_examples, ep.batch_size, ep.latency_repeats)
    firsts = {row: names[0] for row, names in groups.items() if row != "teacher"}
    heatmaps = []
    if rp.heatmap_examples and firsts:
        pairs = records[next(iter(firsts.values()))].layer_pairs
        drawn = {"teacher": models["teacher"]} | {row: models[n] for row, n in firsts.items() if records[n].layer_pairs == pairs}
        words = lambda ids: [tokenizer.decode([int(t)]) for t in ids[: rp.heatmap_tokens]]  # noqa: E731
        for i in heatmap_examples(test.lengths, rp.heatmap_examples):
            heatmaps.append({"example": i, "tokens": words(sources[i]), "target_tokens": words(targets[i]), "pairs": pairs,
                             "title": f"test pair {i} ({task.caption(test, i, meta)}): cross-attention, target rows by source columns",
                             "maps": cross_snapshot(drawn, pairs, sources[i], targets[i], rp.heatmap_tokens)})
    return agreement, timing, heatmaps
