"""Stage report: which method, how much better, how sure, at what speed.

Reads what evaluate measured for the teacher and every student (method x seed), and writes:
reports/summary.json (DVC metrics: per method mean and std over seeds, the paired test against
the ce student), reports/report.md and the self-contained reports/report.html, the figures
(reports/figures/*.png, DVC plots) and the accuracy-latency points (a DVC scatter plot). The
report and its figures are logged to MLflow as the artifacts of a summary run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from attnkd import data, figures
from attnkd.errors import UserError, run_stage
from attnkd.io import atomic_dir, atomic_write_json, atomic_write_text, read_json
from attnkd.models import forward, load_classifier, load_tokenizer
from attnkd.reporting import BASELINE, TEST_NAME, Document, agreement_table, data_note, data_table, efficiency_table, per_class_table, quality_table, seed_table, summarize
from attnkd.stage import group_label, model_groups, parser, setup
from attnkd.tracking import mlflow_run


def read_frame(path: Path, **kwargs) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"{path}: file not found (did the upstream stage run?)")
    return pd.read_csv(path, **kwargs)


def heatmap_examples(lengths: np.ndarray, k: int, min_tokens: int = 8) -> list[int]:
    """The k shortest test examples with at least `min_tokens` tokens (ties: first in the split)."""
    order = np.argsort(lengths, kind="stable")
    long_enough = [int(i) for i in order if lengths[i] >= min_tokens]
    return (long_enough or [int(i) for i in order])[:k]


@torch.no_grad()
def head_averaged(model, split: data.Split, i: int, pad_id: int) -> list[np.ndarray]:
    """Per layer, the head-averaged attention (T, T) of one example run alone (no padding)."""
    b = data.collate(split, np.array([i]), pad_id)
    return [a[0].mean(0).numpy() for a in forward(model.eval(), b, output_attentions=True).attentions]


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--metrics-dir", type=Path, required=True)
    p.add_argument("--predictions-dir", type=Path, required=True)
    p.add_argument("--curves-dir", type=Path, required=True)
    p.add_argument("--prepared", type=Path, required=True)
    p.add_argument("--data-report", type=Path, required=True, help="prepare's data report (JSON)")
    p.add_argument("--teacher", type=Path, required=True, help="teacher model dir (attention heatmaps)")
    p.add_argument("--students", type=Path, required=True, help="dir of the student model dirs")
    p.add_argument("--out", type=Path, required=True, help="report markdown; report.html and figures/ go beside it")
    p.add_argument("--summary", type=Path, required=True, help="summary metrics JSON")
    p.add_argument("--points", type=Path, required=True, help="accuracy-latency points CSV (DVC plot)")
    args = p.parse_args()
    params = setup(args.params)
    rp, digits = params.report, params.report.digits
    if "teacher" not in params.evaluate.models:
        raise UserError(f"{args.params}: evaluate.models: the report compares against the teacher; include 'teacher'")
    methods = [m for m in params.evaluate.models if m != "teacher"]
    students = params.distill.students
    groups = model_groups(students, ["teacher", *methods], params.student_seeds)
    rows = [g for g in groups if g != "teacher"]  # a method, or "<student> <method>" with several students
    names = [n for models in groups.values() for n in models]
    results = {n: read_json(args.metrics_dir / f"{n}.json") for n in names}
    correct = {}
    for n in names:
        pred = read_frame(args.predictions_dir / f"{n}.csv", usecols=["actual", "predicted"])
        correct[n] = (pred["actual"] == pred["predicted"]).to_numpy(dtype=np.int8)
    summary = summarize(results, correct, groups, rp.bootstrap_samples,
                        {group_label(students, s, m): group_label(students, s, BASELINE) for s in students for m in methods})

    meta, data_report = data.load_meta(args.prepared), read_json(args.data_report)
    curves = {m: [read_frame(args.curves_dir / f"{n}.tsv", sep="\t") for n in models] for m, models in groups.items()}
    points = pd.DataFrame([{"model": n, "method": m, "seed": results[n]["seed"], "latency_ms": results[n]["latency_ms"], "accuracy": results[n]["accuracy"]}
                           for m, models in groups.items() for n in models])
    images = {"curves.png": figures.training_curves(curves, rows), "accuracy_latency.png": figures.accuracy_vs_latency(points, rows)}
    heatmaps = attention_figures(args, params, meta["label_names"], {r: groups[r][0] for r in rows}, rp.heatmap_examples, rp.heatmap_tokens)
    images |= heatmaps

    doc = Document(rp.title)
    one_seed = len(params.student_seeds) == 1
    doc.heading("Quality on the test split")
    doc.table(quality_table(summary, digits))
    doc.para(
        f"Mean ± standard deviation over {len(params.student_seeds)} student seed(s) ({', '.join(map(str, params.student_seeds))}); "
        f"the teacher is one model (seed {params.seed}). ECE: expected calibration error over {params.evaluate.calibration_bins} confidence bins. "
        + ("One seed per method: the report cannot judge significance (seed-to-seed variation is unknown); list 3 or more `student_seeds`."
           if one_seed else
           f"Δ and p against the `{BASELINE}` student (the same student architecture trained with `{BASELINE}` alone): {TEST_NAME}, {rp.bootstrap_samples} resamples, two-sided; seeds paired "
           f"(the same seed gives both students the same initialisation and data order).")
    )
    doc.heading("Efficiency")
    doc.table(efficiency_table(summary))
    doc.para(f"All models measured in one process on the same test examples, one CPU thread, repeats round-robin over the models: "
             f"latency is the median batch-1 forward time over {params.evaluate.latency_examples} examples x {params.evaluate.latency_repeats}; "
             f"throughput the median over {params.evaluate.latency_repeats} passes of the first {params.evaluate.throughput_examples} examples "
             f"in batches of {params.evaluate.batch_size}. Speed-up: teacher latency / model latency.")
    doc.figure("figures/accuracy_latency.png", images["accuracy_latency.png"], "Accuracy versus batch-1 latency: a dot per seed, a marker with ± std bars per method.")
    agreement = agreement_table(summary, digits)
    if len(agreement):
        doc.heading("Attention agreement with the teacher")
        doc.table(agreement)
        doc.para("Mean Jensen-Shannon divergence (bits: 0 = the same attention, 1 = disjoint) between the student's and the teacher's "
                 "attention rows over the test split, per mapped pair `t<teacher layer>-s<student layer>`; per head when the head counts "
                 "match, else between head-averaged maps.")
    for name, image in heatmaps.items():
        doc.figure(f"figures/{name}", image, f"Head-averaged attention of the teacher and each method's first-seed student on test example {name.split('_')[1].split('.')[0]} "
                   f"(first {rp.heatmap_tokens} tokens at most; rows: queries, columns: keys), for each mapped layer pair.")
    doc.heading("Per class (F1, mean over seeds)")
    doc.table(per_class_table(summary, digits))
    doc.heading("Accuracy per seed")
    doc.table(seed_table(results, groups, digits))
    doc.heading("Training curves")
    doc.figure("figures/curves.png", images["curves.png"], "Validation accuracy and training loss per epoch: the mean over seeds, and the seeds' range as a band.")
    doc.heading("Data")
    doc.table(data_table(data_report))
    doc.para(data_note(data_report))
    splits = ", ".join(f"{k} {v['examples']}" for k, v in meta["splits"].items())
    doc.heading("Setup")
    doc.bullets([
        f"data: {meta['source']}, {len(meta['label_names'])} classes ({', '.join(meta['label_names'])}); "
        f"splits: {splits}; max length {meta['max_length']} tokens",
        *(f"student `{name}`: {sp.num_layers} layers, hidden {sp.hidden_size}, {sp.num_heads} heads, feed-forward {sp.intermediate_size}, "
          f"init `{sp.init}`" for name, sp in ((n, params.students[n]) for n in students)),
        f"layer map `{params.distill.layer_map}`; temperature {params.distill.temperature:g}; {params.distill.epochs} epochs, "
        f"batch {params.distill.batch_size}, learning rate {params.distill.learning_rate:g}",
        f"seeds: splits and teacher {params.seed}; students {', '.join(map(str, params.student_seeds))}",
        *(f"`{m}`: " + ", ".join(f"{k} {v:g}" for k, v in params.methods[m].weights().items()) for m in methods),
    ])

    with atomic_dir(args.out.parent / "figures") as tmp:
        for name, image in images.items():
            (tmp / name).write_bytes(image)
    atomic_write_text(args.points, points.to_csv(index=False))
    atomic_write_text(args.out.with_suffix(".html"), doc.to_html())
    atomic_write_text(args.out, doc.markdown())
    atomic_write_json(args.summary, summary)
    log_summary_run(params, summary, [args.out, args.out.with_suffix(".html"), args.summary, args.points], args.out.parent / "figures")
    print(f"report: {len(names)} models, {len(students)} student(s) x {len(methods)} methods x {len(params.student_seeds)} seeds -> {args.out}, {args.out.with_suffix('.html')}")


def attention_figures(args, params, label_names: list[str], first: dict[str, str], k: int, max_tokens: int) -> dict[str, bytes]:
    """One heatmap figure per chosen test example: the teacher and each row's first-seed student
    (`first`: row -> model name), for the rows whose layer map is the first row's."""
    if k == 0 or not first:
        return {}
    test = data.load_split(args.prepared, "test")
    tokenizer = load_tokenizer(args.teacher)
    pairs_of = {row: [tuple(p) for p in read_json(args.students / name / "attnkd.json")["layer_pairs"]] for row, name in first.items()}
    pairs = next(iter(pairs_of.values()))
    models = {"teacher": load_classifier(args.teacher)} | {row: load_classifier(args.students / name) for row, name in first.items() if pairs_of[row] == pairs}
    out = {}
    for i in heatmap_examples(test.lengths, k):
        maps = {}
        for name, model in models.items():
            layers = head_averaged(model, test, i, tokenizer.pad_token_id)
            maps[name] = {pair: layers[(pair[0] if name == "teacher" else pair[1]) - 1] for pair in pairs}
        tokens = tokenizer.convert_ids_to_tokens([int(t) for t in test.input_ids[i][:max_tokens]])
        title = f"test example {i} (label: {label_names[test.labels[i]]}), {len(test.input_ids[i])} tokens"
        out[f"attention_{i}.png"] = figures.attention_heatmaps(maps, tokens, title)
    return out


def log_summary_run(params, summary: dict, files: list[Path], figures_dir: Path) -> None:
    """A summary run in MLflow: per-method means as metrics, the report and its figures as artifacts."""
    record = {"seed": params.seed, "student_seeds": params.student_seeds, "students": {n: params.students[n].model_dump() for n in params.distill.students}, "methods": {m: w.weights() for m, w in params.methods.items()}}
    with mlflow_run("report", "report", record, params.seed) as run:
        metrics = {}
        for row, s in summary.items():
            key = row.replace(" ", "/")
            metrics |= {f"{key}/accuracy_mean": s["accuracy"]["mean"], f"{key}/speed_up": s["speed_up"]}
            if "vs_ce" in s:
                metrics[f"{key}/p_vs_ce"] = s["vs_ce"]["p_value"]
        run.log_metrics(metrics, 0)
        for path in files:
            run.log_artifact(path)
        run.log_artifact(figures_dir)


if __name__ == "__main__":
    run_stage(main)
