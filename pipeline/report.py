"""Stage report: which method, how much better, how sure, at what speed.

Reads what evaluate measured for the teacher and every student (method x seed), and writes:
reports/headline.json (the DVC metrics: per method the mean accuracy, and its difference from the
ce student with the p-value), reports/summary.json (per method mean and std over seeds of every
figure, the paired test against the ce student with its interval), reports/report.md and the self-contained reports/report.html, the figures
(reports/figures/*.png, DVC plots) and the accuracy-latency points (a DVC scatter plot). The
report and its figures are logged to MLflow as the artifacts of a summary run. A pure function of
files: no model is loaded here (evaluate wrote the attention maps the heatmaps draw).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from attnkd import figures
from attnkd.artifacts import PreparedMeta
from attnkd.errors import UserError, run_stage
from attnkd.io import atomic_write_files, atomic_write_json, atomic_write_text, read_json
from attnkd.params import load_params
from attnkd.reporting import BASELINE, headline, report_document, summarize
from attnkd.stage import group_label, model_groups, parser
from attnkd.tasks import get_task
from attnkd.tracking import log_summary_run


def read_frame(path: Path, **kwargs) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"{path}: file not found (did the upstream stage run?)")
    return pd.read_csv(path, **kwargs)


def main() -> None:
    p = parser(__doc__, metrics_dir="evaluate's metrics", predictions_dir="evaluate's predictions", curves_dir="training curves",
               prepared="prepared data dir (meta.json)", data_report="prepare's data report (JSON)", store="the signal store's manifest.json", attention="evaluate's attention heatmap data (JSON)",
               out="report markdown; report.html and figures/ go beside it", summary="summary JSON (every figure per method)", headline="headline metrics JSON (DVC metrics)", points="accuracy-latency points CSV (DVC plot)")
    args = p.parse_args()
    params = load_params(args.params)
    students, methods = params.distill.students, list(params.methods)
    groups = model_groups(students, ["teacher", *methods], params.student_seeds)
    rows = [g for g in groups if g != "teacher"]  # a method, or "<student> <method>" with several students
    names = [n for models in groups.values() for n in models]
    task = get_task(params.task)
    main, label = task.compare_by, task.quality[task.compare_by]
    results = {n: read_json(args.metrics_dir / f"{n}.json") for n in names}
    predictions = {n: read_frame(args.predictions_dir / f"{n}.csv", keep_default_na=False) for n in names}
    scores = {n: task.per_example(frame) for n, frame in predictions.items()}  # (N,) per test example, its mean is `main`; or (N, K) statistics
    summary = summarize(results, scores, groups, params.report.bootstrap_samples,
                        {group_label(students, s, m): group_label(students, s, BASELINE) for s in students for m in methods}, tuple(task.quality), main,
                        task.corpus_statistic)

    curves = {m: [read_frame(args.curves_dir / f"{n}.tsv", sep="\t") for n in models] for m, models in groups.items()}
    points = pd.DataFrame([{"model": n, "method": m, "seed": results[n]["seed"], "latency_ms": results[n]["latency_ms"], main: results[n][main]}
                           for m, models in groups.items() for n in models])
    images = {"curves.png": figures.training_curves(curves, rows, main, label), "accuracy_latency.png": figures.accuracy_vs_latency(points, rows, main, label)}
    order = ["teacher", *rows]  # the JSON's keys are sorted; the figures show the teacher first, then the rows in order
    in_order = lambda d: {m: d[m] for m in order if m in d}  # noqa: E731
    heatmaps = figures.attention_figures([h | {k: in_order(h[k]) for k in ("maps", "rows") if k in h} for h in read_json(args.attention)])
    images |= heatmaps
    examples = task.examples({m: predictions[models[0]] for m, models in groups.items()}, 5)
    doc = report_document(params, summary, results, groups, images, heatmaps, PreparedMeta.read(args.prepared), read_json(args.data_report), task, examples,
                          task.read_manifest(args.store.parent))

    atomic_write_files(args.out.parent / "figures", images)
    atomic_write_text(args.points, points.to_csv(index=False))
    atomic_write_text(args.out.with_suffix(".html"), doc.to_html())
    atomic_write_text(args.out, doc.markdown())
    atomic_write_json(args.summary, summary)
    atomic_write_json(args.headline, headline(summary, task.headline))
    log_summary_run(params, summary, [args.out, args.out.with_suffix(".html"), args.summary, args.headline, args.points], args.out.parent / "figures", main)
    print(f"report: {len(names)} models, {len(students)} student(s) x {len(methods)} methods x {len(params.student_seeds)} seeds -> {args.out}, {args.out.with_suffix('.html')}")


if __name__ == "__main__":
    run_stage(main)
