"""Stage prepare: read the raw data set, clean it, split it and tokenise it (the task's `prepare`).

Sources (params data.source): the packaged BBC News set, local TSV/CSV/JSON Lines/Parquet files,
or a Hugging Face hub data set. Writes <out>/{train,validation,test}.parquet (text, text_pair,
label, input_ids, token_type_ids), <out>/meta.json (label names, sizes, input digests) and the
data report (rows read and dropped and why, evaluation overlap, class balance, token lengths).
"""

from __future__ import annotations

from pathlib import Path

from attnkd.errors import run_stage
from attnkd.io import atomic_dir, atomic_write_json
from attnkd.stage import parser, setup
from attnkd.tasks import get_task

REPO = Path(__file__).resolve().parents[1]  # a relative data.dir is relative to the repository


def main() -> None:
    p = parser(__doc__, out="prepared data dir", report="data report (JSON)")
    args = p.parse_args()
    params = setup(args.params)
    with atomic_dir(args.out) as tmp:
        meta, report = get_task(params.task).prepare(params, REPO, tmp)
        atomic_write_json(args.report, report)
    sizes = ", ".join(f"{k}: {v.examples}" for k, v in meta.splits.items())
    classes = f"{len(meta.label_names)} classes, " if meta.label_names else ""
    print(f"prepared {sizes} ({classes}{report['task']}) -> {args.out}; data report -> {args.report}")


if __name__ == "__main__":
    run_stage(main)
