"""Stage report: one comparison table of the teacher and every student."""

from __future__ import annotations

from pathlib import Path

from attnkd import data
from attnkd.errors import run_stage
from attnkd.io import atomic_write_text, read_json
from attnkd.reporting import collect_metrics, render_report
from attnkd.stage import parser, setup


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--metrics-dir", type=Path, required=True)
    p.add_argument("--prepared", type=Path, required=True)
    p.add_argument("--data-report", type=Path, required=True, help="prepare's data report (JSON)")
    p.add_argument("--out", type=Path, required=True, help="report markdown")
    args = p.parse_args()
    params = setup(args.params)

    rows = collect_metrics(args.metrics_dir, params.evaluate.models)
    text = render_report(params.report.title, rows, data.load_meta(args.prepared), read_json(args.data_report), params, params.report.digits)
    atomic_write_text(args.out, text)
    print(f"report: {len(rows)} models -> {args.out}")


if __name__ == "__main__":
    run_stage(main)
