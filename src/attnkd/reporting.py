"""Small writers for DVC plots and the report's tables."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from attnkd.data import SPLITS
from attnkd.io import atomic_write_text


def write_curve(path: Path, history: list[dict]) -> None:
    """Per-epoch training curve as TSV (a DVC plot: x=epoch)."""
    atomic_write_text(path, pd.DataFrame(history).to_csv(sep="\t", index=False, float_format="%.6g"))


def collect_metrics(metrics_dir: Path, models: list[str]) -> list[dict]:
    """Read reports/metrics/<model>.json for every evaluated model; the teacher must be there."""
    from attnkd.errors import UserError
    from attnkd.io import read_json

    if "teacher" not in models:
        raise UserError("evaluate.models: the report compares against the teacher; include 'teacher'")
    return [read_json(Path(metrics_dir) / f"{name}.json") for name in models]


def comparison_table(rows: list[dict]) -> pd.DataFrame:
    """One row per model, with speed-up and accuracy kept relative to the teacher."""
    teacher = next(r for r in rows if r["model"] == "teacher")
    table = pd.DataFrame(
        {
            "model": r["model"],
            "accuracy": r["accuracy"],
            "f1_macro": r["f1_macro"],
            "roc_auc": r["roc_auc"],
            "params_M": r["params"] / 1e6,
            "size_MB": r["size_mb"],
            "latency_ms": r["latency_ms"],
            "speed_up": teacher["latency_ms"] / r["latency_ms"],
            "acc_kept_%": 100.0 * r["accuracy"] / teacher["accuracy"],
        }
        for r in rows
    )
    return table


def data_table(report: dict) -> pd.DataFrame:
    """The data report as one row per split: where it came from, what cleaning dropped, balance, lengths."""
    rows = []
    for name in SPLITS:
        s = report["splits"][name]
        rows.append(
            {
                "split": name,
                "examples": s["examples"],
                "rows read": s.get("rows_read", "-"),
                "empty": s.get("dropped_empty_text", "-"),
                "no label": s.get("dropped_missing_label", "-"),
                "duplicates": s.get("dropped_duplicates", "-"),
                "classes": ", ".join(f"{k} {v}" for k, v in s["class_counts"].items()),
                "tokens p50/p95/max": f"{s['tokens_p50']}/{s['tokens_p95']}/{s['tokens_max']}",
                "truncated": f"{100 * s['truncated_fraction']:.1f}%",
            }
        )
    return pd.DataFrame(rows)


def data_section(report: dict) -> list[str]:
    overlap = report["train_rows_also_in_evaluation"]
    sources = "; ".join(f"{k}: {report['splits'][k]['from']}" for k in SPLITS)
    fallback = sum(s.get("decoded_as_cp1252", 0) for s in report["splits"].values())
    return [
        "## Data",
        "",
        data_table(report).to_markdown(index=False),
        "",
        f"Task: {report['task']}; truncated at {report['max_length']} tokens. Sources: {sources}. "
        f"Training rows also found in an evaluation split: {overlap['count']} ({'removed' if overlap['removed'] else 'kept'}). "
        + (f"Rows decoded as Windows-1252: {fallback}." if fallback else ""),
        "",
    ]


def render_report(title: str, rows: list[dict], meta: dict, data_report: dict, params, digits: int) -> str:
    table = comparison_table(rows)
    student = params.distill.student
    splits = ", ".join(f"{k} {v['examples']}" for k, v in meta["splits"].items())
    methods = "\n".join(
        f"| `{name}` | " + ", ".join(f"{k} {v:g}" for k, v in m.weights().items()) + " |"
        for name, m in params.methods.items()
        if name in table["model"].values
    )
    lines = [
        f"# {title}",
        "",
        "## Comparison on the test split",
        "",
        table.to_markdown(index=False, floatfmt=f".{digits}f"),
        "",
        "Latency: median batch-1 CPU forward time on one thread over the same test examples for every model. "
        "Speed-up and accuracy kept are relative to the teacher.",
        "",
        *data_section(data_report),
        "## Setup",
        "",
        f"- data: {meta['source']}, {len(meta['label_names'])} classes ({', '.join(meta['label_names'])}); "
        f"splits: {splits}; max length {meta['max_length']} tokens",
        f"- student: {student.num_layers} layers, hidden {student.hidden_size}, {student.num_heads} heads, "
        f"init `{student.init}`; layer map `{params.distill.layer_map}`; temperature {params.distill.temperature:g}",
        f"- seed: {params.seed}",
        "",
        "| method | loss weights |",
        "|---|---|",
        methods,
        "",
    ]
    return "\n".join(lines)
