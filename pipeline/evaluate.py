"""Stage evaluate: quality, efficiency and attention agreement of the teacher and every student.

What is measured beyond quality is the task's (`Task.measure`): for an encoder, forward-pass
latency and throughput and the agreement of the students' attention with the teacher's; for
translation, decoding speed and cross-attention agreement.

All models are measured in this one process on the same test examples: efficiency on one thread
with the repeats round-robin over the models, so their latencies and throughputs compare fairly.
Writes one DVC metrics file per model (reports/metrics/<model>.json), its per-example
predictions (reports/predictions/<model>.csv: the confusion plot, and the paired tests of the
report), and the attention maps the report draws (reports/attention.json).
"""

from __future__ import annotations


import numpy as np

from attnkd import data
from attnkd.artifacts import ModelRecord
from attnkd.errors import UserError, run_stage
from attnkd.io import atomic_write_files, atomic_write_json, json_text
from attnkd.metrics import model_identity, model_size
from attnkd.models import load_model, load_tokenizer
from attnkd.stage import model_groups, parser, setup
from attnkd.tasks import get_task


def main() -> None:
    p = parser(__doc__, prepared="prepared data dir", teacher="teacher model dir", students="dir of the student model dirs (<student>-<method>-s<seed>)",
               metrics_dir="one metrics JSON per model", predictions_dir="one predictions CSV per model",
               attention="the report's attention heatmap data (JSON)")
    args = p.parse_args()
    params = setup(args.params)
    ep = params.evaluate

    meta = data.load_meta(args.prepared)
    test = data.load_split(args.prepared, "test")
    groups = model_groups(params.distill.students, ["teacher", *params.methods], params.student_seeds)
    dirs = {n: args.teacher if n == "teacher" else args.students / n for group in groups.values() for n in group}
    for name, d in dirs.items():
        if not d.is_dir():
            raise UserError(f"{d}: no such model dir; distill.students, methods and student_seeds name {name} (train it with `dvc repro`)")
    task = get_task(params.task).bind(args.prepared).for_evaluation(ep)
    models = {name: load_model(d, task) for name, d in dirs.items()}
    records = {name: ModelRecord.read(d) if (d / ModelRecord.FILE).is_file() else None for name, d in dirs.items()}
    tokenizer = load_tokenizer(args.teacher)
    pad_id = tokenizer.pad_token_id

    results, predictions = {}, {}
    for name, model in models.items():
        quality, predictions[name] = task.evaluation(test, task.predict(model, test, ep.batch_size, pad_id), meta, ep.calibration_bins)
        results[name] = model_identity(name, records[name], params.seed) | quality | model_size(model, dirs[name]) | {"test_examples": len(test)}
        print(f"evaluate {name}: {task.select_by} {results[name][task.select_by]:.4f}")

    students = {n: (m, records[n].layer_pairs) for n, m in models.items() if n != "teacher"}
    agreement, timing, heatmaps = task.measure(models, students, records, groups, test, meta, tokenizer, params)
    for name, layers in agreement.items():
        results[name] |= {"attention_js": {k: round(v, 6) for k, v in layers.items()}, "attention_js_mean": round(float(np.mean(list(layers.values()))), 6)}
    for name, t in timing.items():
        results[name] |= {"latency_ms": round(t["latency_ms"], 3), "throughput_eps": round(t["throughput_eps"], 1)}
        print(f"evaluate {name}: latency {t['latency_ms']:.2f} ms, throughput {t['throughput_eps']:.0f} examples/s")

    atomic_write_files(args.metrics_dir, {f"{name}.json": json_text(result) for name, result in results.items()})
    atomic_write_files(args.predictions_dir, {f"{name}.csv": text for name, text in predictions.items()})
    atomic_write_json(args.attention, heatmaps)
    print(f"evaluate: {len(results)} models -> {args.metrics_dir}, {args.predictions_dir}, {args.attention}")


if __name__ == "__main__":
    run_stage(main)
