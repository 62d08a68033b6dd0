"""Stage evaluate: quality and efficiency of one model on the test split.

Writes DVC metrics (accuracy, macro P/R/F1, ROC-AUC, parameters, size, batch-1 CPU latency)
and per-example predictions for the confusion-matrix plot.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from attnkd import data
from attnkd.errors import run_stage
from attnkd.io import atomic_write_json, atomic_write_text
from attnkd.metrics import classification_metrics, confusion, latency_ms, predict
from attnkd.models import count_parameters, load_classifier, load_tokenizer, weights_file
from attnkd.stage import parser, setup


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--model", required=True, help="model name (teacher or a method)")
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--prepared", type=Path, required=True)
    p.add_argument("--metrics", type=Path, required=True, help="metrics JSON")
    p.add_argument("--predictions", type=Path, required=True, help="predictions CSV (confusion plot)")
    args = p.parse_args()
    params = setup(args.params)
    ep = params.evaluate

    meta = data.load_meta(args.prepared)
    test = data.load_split(args.prepared, "test")
    model = load_classifier(args.model_dir)
    pad_id = load_tokenizer(args.model_dir).pad_token_id
    probs = predict(model, test, ep.batch_size, pad_id)
    names = meta["label_names"]
    pred = probs.argmax(1)
    metrics = classification_metrics(test.labels, probs)
    # Latency on one thread: comparable across models and machines, not hostage to core count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    latency = latency_ms(model, test, ep.latency_examples, ep.latency_repeats, pad_id)
    torch.set_num_threads(threads)
    result = {
        "model": args.model,
        **{k: round(float(v), 6) for k, v in metrics.items()},
        "params": count_parameters(model),
        "size_mb": round(weights_file(args.model_dir).stat().st_size / 1e6, 3),
        "latency_ms": round(latency, 3),
        "test_examples": len(test),
        "confusion": {"labels": names, "matrix": confusion(test.labels, pred, len(names))},
    }
    atomic_write_json(args.metrics, result)
    frame = pd.DataFrame({"actual": np.array(names)[test.labels], "predicted": np.array(names)[pred]})
    atomic_write_text(args.predictions, frame.to_csv(index=False))
    print(f"evaluate {args.model}: accuracy {metrics['accuracy']:.4f}, latency {latency:.2f} ms -> {args.metrics}")


if __name__ == "__main__":
    run_stage(main)
