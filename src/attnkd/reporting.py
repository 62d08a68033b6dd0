"""The report: per-method summaries over seeds, its tables, and one document rendered both as
Markdown (reports/report.md) and as self-contained HTML (reports/report.html, images inlined)."""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from attnkd.io import atomic_write_text
from attnkd.signals import LAYER_FILE
from attnkd.stats import mean_std, paired_bootstrap, paired_bootstrap_corpus

BASELINE = "ce"
TEST_NAME = "two-level paired bootstrap (seeds and test examples resampled together)"


def write_curve(path: Path, history: list[dict]) -> None:
    """Per-epoch training curve as TSV (a DVC plot: x=epoch)."""
    atomic_write_text(path, pd.DataFrame(history).to_csv(sep="\t", index=False, float_format="%.6g"))


# ---------------------------------------------------------------------------- summaries


def _stat(values: list[float]) -> dict[str, float | None]:
    mean, std = mean_std(values)
    return {"mean": round(mean, 6), "std": None if math.isnan(std) else round(std, 6)}


def summarize(results: dict[str, dict], correct: dict[str, np.ndarray], groups: dict[str, list[str]], samples: int,
              baselines: dict[str, str] | None = None, quality: tuple[str, ...] = ("accuracy",), main: str = "accuracy",
              statistic=None) -> dict[str, dict]:
    """Per method (and the teacher): mean and std over seeds of the quality (the task's `quality`
    metrics), efficiency and agreement figures, and against the ce student (when evaluated with 2+
    seeds) the paired bootstrap of the difference in `main`. `groups`: row (method) -> its model
    names, seed order equal across rows; `baselines`: row -> the row it is compared with (default
    "ce"); `correct[model]`: (N,) the per-example score whose mean is `main` (0/1 for accuracy), or
    with `statistic` (N, K) per-example statistics whose sums it scores as `main` (corpus BLEU)."""
    teacher = results["teacher"]
    out = {}
    for method, models in groups.items():
        rows = [results[m] for m in models]
        s = {"seeds": len(rows)}
        for key in (*quality, "latency_ms", "throughput_eps", "attention_js_mean"):
            if key in rows[0]:
                s[key] = _stat([r[key] for r in rows])
        s["params"] = rows[0]["params"]
        if "examples" in rows[0]:
            s["examples"] = rows[0]["examples"]
        s["size_mb"] = rows[0]["size_mb"]
        s["speed_up"] = round(teacher["latency_ms"] / s["latency_ms"]["mean"], 4)
        s[f"{main}_kept_pct"] = round(100.0 * s[main]["mean"] / teacher[main], 4) if teacher[main] else None  # none of a teacher scoring 0
        if "attention_js" in rows[0]:
            s["attention_js"] = {k: _stat([r["attention_js"][k] for r in rows]) for k in rows[0]["attention_js"]}
        if "per_class" in rows[0]:
            s["per_class_f1"] = {c: round(float(np.mean([r["per_class"][c]["f1"] for r in rows])), 6) for c in rows[0]["per_class"]}
        base = (baselines or {}).get(method, BASELINE)
        if method not in ("teacher", base) and base in groups and len(models) > 1:
            a, b = np.stack([correct[m] for m in models]), np.stack([correct[m] for m in groups[base]])
            test = paired_bootstrap(a, b, samples) if statistic is None else paired_bootstrap_corpus(a, b, statistic, samples)
            s["vs_ce"] = {"delta": round(test.delta, 6), "ci_low": round(test.low, 6), "ci_high": round(test.high, 6), "p_value": round(test.p_value, 6),
                          "detectable": round(test.detectable, 6)}
        out[method] = s
    return out


def headline(summary: dict[str, dict], keys: dict[str, str] | None = None) -> dict[str, dict[str, float]]:
    """The DVC metrics of a run (reports/headline.json), few enough for `dvc exp show` to print in
    one screen: per row the mean over seeds of the task's headline metrics (`keys`: short name ->
    metric; classification: acc), and against ce the difference in points and the p-value
    (summary.json and reports/metrics/ keep the detail)."""
    out = {}
    for row, s in summary.items():
        out[row] = {short: round(s[key]["mean"], 4) for short, key in (keys or {"acc": "accuracy"}).items()}
        if "vs_ce" in s:
            out[row] |= {"delta": round(100 * s["vs_ce"]["delta"], 2), "p": round(s["vs_ce"]["p_value"], 3)}
    return out


# ---------------------------------------------------------------------------- tables


def pm(stat: dict | None, digits: int, scale: float = 1.0) -> str:
    """`mean ± std`, or the mean alone for one seed."""
    if stat is None:
        return "-"
    mean = f"{stat['mean'] * scale:.{digits}f}"
    return mean if stat["std"] is None else f"{mean} ± {stat['std'] * scale:.{digits}f}"


def quality_table(summary: dict[str, dict], digits: int, labels: dict[str, str] | None = None, main: str = "accuracy", short: str = "acc") -> pd.DataFrame:
    """A row per model: the quality metrics (`labels`: metric -> column), the share of the
    teacher's `main` kept, and Δ `main` vs ce with its interval and p."""
    rows = []
    for name, s in summary.items():
        vs = s.get("vs_ce")
        rows.append({
            "model": name,
            "seeds": s["seeds"],
            **{label: pm(s[key], digits) for key, label in (labels or {main: main}).items()},
            f"{short} kept %": "-" if s[f"{main}_kept_pct"] is None else f"{s[f'{main}_kept_pct']:.1f}",
            f"Δ {short} vs ce, points [95% CI]": f"{100 * vs['delta']:+.1f} [{100 * vs['ci_low']:+.1f}, {100 * vs['ci_high']:+.1f}]" if vs else "-",
            "p vs ce": f"{vs['p_value']:.3g}" if vs else "-",
            "detectable Δ, points": f"{100 * vs['detectable']:.1f}" if vs else "-",
        })
    return pd.DataFrame(rows)


def efficiency_table(summary: dict[str, dict]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "model": name,
            "params (M)": f"{s['params'] / 1e6:.2f}",
            "size (MB)": f"{s['size_mb']:.1f}",
            "latency, batch 1 (ms)": pm(s["latency_ms"], 2),
            "throughput (examples/s)": pm(s["throughput_eps"], 0),
            "speed-up": f"{s['speed_up']:.2f}x",
        }
        for name, s in summary.items()
    )


def agreement_table(summary: dict[str, dict], digits: int) -> pd.DataFrame:
    rows = []
    for name, s in summary.items():
        if "attention_js" in s:
            rows.append({"model": name, **{f"JS {k}": pm(v, digits) for k, v in s["attention_js"].items()}, "JS mean": pm(s["attention_js_mean"], digits)})
    return pd.DataFrame(rows)


def per_class_table(summary: dict[str, dict], digits: int) -> pd.DataFrame:
    return pd.DataFrame({"model": name, **{c: f"{f1:.{digits}f}" for c, f1 in s["per_class_f1"].items()}} for name, s in summary.items())


def seed_table(results: dict[str, dict], groups: dict[str, list[str]], digits: int, main: str = "accuracy") -> pd.DataFrame:
    rows = []
    for method, models in groups.items():
        rows.append({"model": method, **{f"seed {results[m]['seed']}": f"{results[m][main]:.{digits}f}" for m in models}})
    return pd.DataFrame(rows).fillna("-")


# ---------------------------------------------------------------------------- one document, two renderings

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1180px;margin:2rem auto;padding:0 1rem;color:#222;line-height:1.45}
h1{font-size:1.7rem;border-bottom:2px solid #333;padding-bottom:.3rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.6rem 0;font-size:.86rem}th,td{border:1px solid #ccc;padding:.25rem .55rem;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left;font-weight:600}tr:nth-child(even) td{background:#fafafa}
img{max-width:100%;height:auto;display:block;margin:.5rem 0;border:1px solid #eee}figcaption{font-size:.85rem;color:#555;margin-bottom:1rem}
code{background:#f4f4f4;padding:0 .2rem;border-radius:3px}.note{color:#555;font-size:.9rem}
"""


def _inline_html(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))


class Document:
    """Headings, paragraphs, tables and figures, kept as Markdown and HTML side by side."""

    def __init__(self, title: str):
        self.title = title
        self.md = [f"# {title}", ""]
        self.html = [f"<h1>{html.escape(title)}</h1>"]

    def heading(self, text: str) -> None:
        self.md += [f"## {text}", ""]
        self.html.append(f"<h2>{html.escape(text)}</h2>")

    def para(self, text: str) -> None:
        self.md += [text, ""]
        self.html.append(f'<p class="note">{_inline_html(text)}</p>')

    def bullets(self, items: list[str]) -> None:
        self.md += [*(f"- {i}" for i in items), ""]
        self.html.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in items) + "</ul>")

    def table(self, frame: pd.DataFrame) -> None:
        escaped = frame.map(lambda v: v.replace("|", "\\|") if isinstance(v, str) else v)  # a | in a cell would end it in Markdown
        self.md += [escaped.to_markdown(index=False, disable_numparse=True), ""]
        self.html.append(frame.to_html(index=False, border=0, escape=True))

    def figure(self, name: str, image: bytes, caption: str) -> None:
        """`name`: the PNG's path relative to the Markdown file."""
        self.md += [f"![{caption}]({name})", "", f"*{caption}*", ""]
        data = base64.b64encode(image).decode("ascii")
        self.html.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}"><figcaption>{_inline_html(caption)}</figcaption></figure>')

    def markdown(self) -> str:
        return "\n".join(self.md)

    def to_html(self) -> str:
        body = "\n".join(self.html)
        return f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(self.title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n'


# ---------------------------------------------------------------------------- the report document


def reading(summary: dict[str, dict]) -> str:
    """What the intervals allow one to say, and nothing more: the rows whose 95% interval of Δ
    excludes 0 and whose p is below 0.05, and a warning that the other rows are not told apart
    from ce by this run (at the edge the interval and p can disagree: such a row is not claimed)."""
    compared = {row: s["vs_ce"] for row, s in summary.items() if "vs_ce" in s}
    if not compared:
        return ""
    outside = [row for row, v in compared.items() if v["ci_low"] > 0 or v["ci_high"] < 0]
    apart = [row for row in outside if compared[row]["p_value"] < 0.05]
    edge = [row for row in outside if row not in apart]
    inside = [row for row in compared if row not in outside]
    rest = [*inside, *edge]
    told = ", ".join(f"{row} ({100 * compared[row]['delta']:+.1f} points, p {compared[row]['p_value']:.3g})" for row in apart)
    text = f"Told apart from `{BASELINE}` by this run (95% interval of Δ excludes 0, p < 0.05): {told or 'none'}."
    if inside:
        text += (f" For {', '.join(inside)} the interval contains 0: this run cannot rank them against `{BASELINE}`, and a re-run on another "
                 "machine, or with other seeds, may flip the sign of Δ.")
    if edge:
        text += (f" For {', '.join(edge)} the interval just excludes 0 but p is "
                 + ", ".join(f"{compared[row]['p_value']:.3g}" for row in edge) + ": at the edge of the 5% level, not claimed.")
    if rest:
        small = [row for row in rest if abs(compared[row]["delta"]) < compared[row]["detectable"]]
        if small:
            text += (" This run cannot tell differences of that size: it detects (with 80% power, at the 5% level) only differences of at least "
                     + ", ".join(f"{100 * compared[row]['detectable']:.1f} points for {row}" for row in small)
                     + " (the column 'detectable Δ'); more test examples or seeds shrink it, roughly as one over their square root.")
    return text


def examples_line(summary: dict[str, dict], params) -> str:
    """Few labels and the transfer set: how many training rows each row of the report saw per
    epoch, gold-labelled and unlabelled (labelled by the teacher only)."""
    ap, frac = params.augment, params.data.labelled_fraction
    made = []
    if frac < 1:
        made.append(f"{100 * frac:g}% of the training rows keep their gold label (`data.labelled_fraction`), the rest are unlabelled text")
    if ap.copies:
        made.append(f"a transfer set of {ap.copies} variant(s) per training text (mask {ap.mask_p:g}, substitute {ap.substitute_p:g}, "
                    f"n-gram {ap.ngram_p:g} up to {ap.ngram_max} words)")
    seen = "; ".join(f"{row} {s['examples']['labelled']:,} + {s['examples']['unlabelled']:,}"
                     + (f" x {e} epoch{'s' * (e != 1)}" if (e := s["examples"].get("epochs")) else "")
                     for row, s in summary.items() if "examples" in s)
    return (("; ".join(made) + ". ") if made else "") + f"Training rows per epoch, gold-labelled + unlabelled (teacher-labelled): {seen}"


def store_line(manifest) -> str:
    """Where the students' teacher signals came from (an encoder teacher's store, attnkd.signals): the store (what, how big) or the teacher run
    in distill for the tensors over the store's budget."""
    layers = sum(f.bytes for n, f in manifest.files.items() if LAYER_FILE.match(n))
    stored = ", ".join(f"{k} of layers {ls}" for k, ls in manifest.tensors.items()) or "no layer tensors"
    text = (f"teacher signals: from the signal store, {manifest.num_examples} training examples: the teacher's outputs and {stored} "
            f"({layers / 2**20:.1f} MiB in {manifest.dtype})")
    if manifest.online:
        text += (f"; over the store budget ({manifest.max_bytes / 2**30:g} GiB), computed by the teacher on every distill batch: "
                 + ", ".join(f"{k} of layers {ls}" for k, ls in manifest.online.items()))
    return text


def report_document(params, summary: dict, results: dict, groups: dict[str, list[str]], images: dict[str, bytes], heatmaps: dict[str, bytes],
                    meta: dict, data_report: dict, task, examples: pd.DataFrame | None = None, store=None) -> Document:
    """The whole report: quality, efficiency, attention agreement and heatmaps, per class, per
    seed, curves, data and setup, in the task's metrics (`task.quality`, its main metric
    `task.compare_by`). `images`: the figures by file name; `heatmaps`: those of them that are
    attention heatmaps (`attention_<example>.png`); `examples`: a table of test examples with each
    model's prediction, when the task makes one."""
    rp, digits = params.report, params.report.digits
    main, label = task.compare_by, task.quality[task.compare_by]
    capital = label[:1].upper() + label[1:]  # the label at the start of a caption or heading
    students = params.distill.students
    methods = list(params.methods)
    doc = Document(rp.title)
    one_seed = len(params.student_seeds) == 1
    doc.heading("Quality on the test split")
    doc.table(quality_table(summary, digits, task.quality, main, task.short))
    doc.para(
        f"Mean ± standard deviation over {len(params.student_seeds)} student seed(s) ({', '.join(map(str, params.student_seeds))}); "
        f"the teacher is one model (seed {params.seed}). "
        + task.quality_note(params)
        + ("One seed per method: the report cannot judge significance (seed-to-seed variation is unknown); list 3 or more `student_seeds`."
           if one_seed else
           f"Δ and p against the `{BASELINE}` student (the same student architecture trained with `{BASELINE}` alone): {TEST_NAME}, {rp.bootstrap_samples} resamples, two-sided; seeds paired "
           f"(the same seed gives both students the same initialisation and data order). " + reading(summary))
    )
    doc.heading("Efficiency")
    doc.table(efficiency_table(summary))
    doc.para(f"All models measured in one process on the same test examples, one CPU thread, repeats round-robin over the models: "
             f"latency is the median {task.timing} over {params.evaluate.latency_examples} examples x {params.evaluate.latency_repeats}; "
             f"throughput the median over {params.evaluate.latency_repeats} passes of the first {params.evaluate.throughput_examples} examples "
             f"in batches of {params.evaluate.batch_size}{task.throughput_unit}. Speed-up: teacher latency / model latency.")
    doc.figure("figures/accuracy_latency.png", images["accuracy_latency.png"], f"{capital} versus batch-1 latency: a dot per seed, a marker with ± std bars per method.")
    agreement = agreement_table(summary, digits)
    if len(agreement):
        doc.heading("Attention agreement with the teacher")
        doc.table(agreement)
        over = f"the first {params.evaluate.agreement_examples} test examples" if params.evaluate.agreement_examples else "the test split"
        doc.para("Mean Jensen-Shannon divergence (bits: 0 = the same attention, 1 = disjoint) between the student's and the teacher's "
                 + task.agreement_note(over))
    for name, image in heatmaps.items():
        example = name.split("_")[1].split(".")[0]
        if name.startswith("pooling_"):
            doc.figure(f"figures/{name}", image, f"The teacher's [CLS] attention row (averaged over heads) and the attention-pooling weights of each BiLSTM row's "
                       f"first-seed student on test example {example} (first {rp.heatmap_tokens} tokens at most): the row its pooling learns from "
                       "in [CLS]-row transfer; one colour scale, proportional to the square root of the weight.")
            continue
        doc.figure(f"figures/{name}", image, task.heatmap_caption(example, rp.heatmap_tokens))
    if examples is not None and len(examples):
        doc.heading("Example predictions")
        doc.table(examples)
        doc.para(task.examples_note)
    if "per_class_f1" in next(iter(summary.values())):
        doc.heading(task.per_class_heading)
        doc.table(per_class_table(summary, digits))
    doc.heading(f"{capital} per seed")
    doc.table(seed_table(results, groups, digits, main))
    doc.heading("Training curves")
    doc.figure("figures/curves.png", images["curves.png"], f"Validation {label} and training loss per epoch: the mean over seeds, and the seeds' range as a band.")
    doc.heading("Data")
    table, note = task.data_table(data_report)
    doc.table(table)
    doc.para(note)
    splits = ", ".join(f"{k} {v.examples}" for k, v in meta.splits.items())
    doc.heading("Setup")
    doc.bullets([
        f"data: {meta.source}, " + (f"{len(meta.label_names)} classes ({', '.join(meta.label_names)}); " if meta.label_names else f"task {params.task}; ")
        + f"splits: {splits}; max length {meta.max_length} tokens",
        *task.describe_teacher(params),
        *(f"student `{name}`: {task.describe_student(sp)}, init `{sp.init}`" + ("" if sp.train_embeddings else ", word embeddings not trained")
          for name, sp in ((n, params.students[n]) for n in students)),
        f"layer map `{params.distill.layer_map}`; temperature {params.distill.temperature:g}; {params.distill.epochs} epochs, "
        f"batch {params.distill.batch_size}, learning rate {params.distill.learning_rate:g}",
        f"seeds: splits and teacher {params.seed}; students {', '.join(map(str, params.student_seeds))}",
        *([task.describe_store(store)] if store is not None else []),
        *([examples_line(summary, params)] if any(s.get("examples", {}).get("unlabelled") for s in summary.values()) else []),
        *(f"`{m}`: " + ", ".join(f"{k} {v:g}" for k, v in params.methods[m].weights().items()) for m in methods),
    ])

    return doc
