"""Stage prepare: read the raw data set, clean it, split it and tokenise it.

Writes <out>/{train,validation,test}.parquet (text, label, input_ids) and <out>/meta.json
(label names, sizes, cleaning and length statistics).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from attnkd import data
from attnkd.errors import UserError, run_stage
from attnkd.io import atomic_dir, atomic_write_json
from attnkd.models import load_tokenizer, resolve_init
from attnkd.stage import parser, setup


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--out", type=Path, required=True, help="prepared data dir")
    args = p.parse_args()
    params = setup(args.params)
    dp = params.data

    raw, read_stats = data.read_bbc_news(data.bbc_news_dir(), dp.decode)
    df, clean_stats = data.clean(raw)
    label_names = sorted(df["label_name"].unique())
    if len(label_names) < 2:
        raise UserError(f"{data.bbc_news_dir()}: only one class ({label_names}); classification needs two or more")
    df["label"] = df["label_name"].map({n: i for i, n in enumerate(label_names)}).astype("int64")
    if dp.limit_per_class:
        df = df.groupby("label", sort=False).head(dp.limit_per_class).reset_index(drop=True)
    splits = data.stratified_split(df, dp.val_fraction, dp.test_fraction, params.seed)

    tokenizer = load_tokenizer(resolve_init(params.teacher.init))
    meta = {"label_names": label_names, "max_length": dp.max_length, "source": dp.source, "tokenizer": params.teacher.init}
    meta |= {"rows": read_stats | clean_stats, "splits": {}}
    with atomic_dir(args.out) as tmp:
        for name, part in splits.items():
            full = data.tokenize(tokenizer, part["text"].tolist(), 100_000)
            ids = [seq[: dp.max_length - 1] + [seq[-1]] if len(seq) > dp.max_length else seq for seq in full]
            data.write_split(tmp / f"{name}.parquet", part["text"].tolist(), part["label"].tolist(), ids)
            lengths = np.array([len(s) for s in full])
            meta["splits"][name] = {
                "examples": len(part),
                "class_counts": {label_names[k]: int(v) for k, v in sorted(part["label"].value_counts().items())},
                "tokens_p50": int(np.percentile(lengths, 50)),
                "tokens_p95": int(np.percentile(lengths, 95)),
                "truncated_fraction": float((lengths > dp.max_length).mean()),
                "inputs_sha256": data.ids_digest(ids),
            }
        atomic_write_json(tmp / "meta.json", meta)
    sizes = ", ".join(f"{k}: {v['examples']}" for k, v in meta["splits"].items())
    print(f"prepared {sizes} -> {args.out}")


if __name__ == "__main__":
    run_stage(main)
