"""Quality and efficiency measurements (scikit-learn for the statistics)."""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, roc_auc_score

from attnkd.data import Split, collate, length_batches


@torch.no_grad()
def predict(model, split: Split, batch_size: int, pad_id: int) -> np.ndarray:
    """Class probabilities (N, C) in the split's original order."""
    model.eval()
    probs = np.zeros((len(split), model.config.num_labels), dtype=np.float64)
    for idx in length_batches(split.lengths, batch_size):
        b = collate(split, idx, pad_id)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"]).logits
        probs[idx] = torch.softmax(logits.double(), dim=-1).numpy()
    return probs


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Accuracy, macro P/R/F1 and ROC-AUC (binary, or macro one-vs-rest for more classes)."""
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


def confusion(labels: np.ndarray, pred: np.ndarray, n_classes: int) -> list[list[int]]:
    return confusion_matrix(labels, pred, labels=list(range(n_classes))).tolist()


@torch.no_grad()
def latency_ms(model, split: Split, n_examples: int, repeats: int, pad_id: int) -> float:
    """Median wall time of one batch-1 forward pass, in ms, over the first n examples x repeats.

    One warm-up pass over the examples first, so allocation and lazy init are not measured.
    """
    model.eval()
    inputs = [collate(split, np.array([i]), pad_id) for i in range(min(n_examples, len(split)))]
    for b in inputs:
        model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"])
    times = []
    for _ in range(repeats):
        for b in inputs:
            t0 = time.perf_counter()
            model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"])
            times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)
