"""Classification's scores (scikit-learn) and its report tables: the quality columns, the data report."""

from __future__ import annotations

import numpy as np
import pandas as pd

from attnkd.data import SPLITS

LABELS = {"accuracy": "accuracy", "f1_macro": "F1 macro", "roc_auc": "ROC-AUC", "ece": "ECE"}  # the report's quality columns


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Accuracy, macro P/R/F1 and ROC-AUC (binary, or macro one-vs-rest for more classes)."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score  # imported here, as below: every stage loads this module, and sklearn takes a second

    pred = probs.argmax(1)
    p, r, f1, _ = precision_recall_fscore_support(labels, pred, average="macro", zero_division=0)
    n_classes = probs.shape[1]
    try:
        if n_classes == 2:
            auc = roc_auc_score(labels, probs[:, 1])
        else:
            auc = roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=list(range(n_classes)))
    except ValueError:  # a class absent from this split: AUC is undefined
        auc = float("nan")
    return {"accuracy": accuracy_score(labels, pred), "precision_macro": p, "recall_macro": r, "f1_macro": f1, "roc_auc": auc}


def calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int) -> float:
    """Expected calibration error of the top-label confidence: over `bins` equal-width confidence
    bins, the example-weighted mean of |accuracy - mean confidence| (Guo et al., 2017)."""
    conf = probs.max(1)
    correct = probs.argmax(1) == labels
    which = np.minimum((conf * bins).astype(int), bins - 1)  # bin of each example; conf 1.0 -> last bin
    ece = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(ece)


def per_class(labels: np.ndarray, pred: np.ndarray, names: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support of every class."""
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f1, support = precision_recall_fscore_support(labels, pred, labels=list(range(len(names))), zero_division=0)
    return {n: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f1[i]), "support": int(support[i])} for i, n in enumerate(names)}


def confusion(labels: np.ndarray, pred: np.ndarray, n_classes: int) -> list[list[int]]:
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(labels, pred, labels=list(range(n_classes))).tolist()


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
                "classes": ", ".join(f"{k} {v}" for k, v in s["class_counts"].items()) + (f", unlabelled {s['unlabelled']}" if "unlabelled" in s else ""),
                "tokens p50/p95/max": f"{s['tokens_p50']}/{s['tokens_p95']}/{s['tokens_max']}",
                "truncated": f"{100 * s['truncated_fraction']:.1f}%",
            }
        )
    return pd.DataFrame(rows)


def data_note(report: dict) -> str:
    overlap = report["train_rows_also_in_evaluation"]
    sources = "; ".join(f"{k}: {report['splits'][k]['from']}" for k in SPLITS)
    fallback = sum(s.get("decoded_as_cp1252", 0) for s in report["splits"].values())
    return (
        f"Task: {report['task']}; truncated at {report['max_length']} tokens. Sources: {sources}. "
        f"Training rows also found in an evaluation split: {overlap['count']} ({'removed' if overlap['removed'] else 'kept'})."
        + (f" Rows decoded as Windows-1252: {fallback}." if fallback else "")
        + (" Unlabelled texts from {from}: {lines} lines, {added} added to the training split, {dropped_seen_or_repeated} already "
           "in a split or repeated.".format(**report["unlabelled_file"]) if "unlabelled_file" in report else "")
    )
