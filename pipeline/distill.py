"""Stage distill: train one student with one method's loss weights, from the signal store.

The teacher is never run: soft logits and attention maps come from the store written by
extract. Every method of the matrix builds the same student from the same seed and sees the
same batches in the same order, so methods differ only in their loss weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from attnkd import data
from attnkd.errors import UserError, run_stage
from attnkd.io import atomic_dir, atomic_write_json, sha256_file
from attnkd.losses import ATTENTION_LOSSES, LOSSES, resolve_layer_map
from attnkd.models import build_student, load_classifier, load_tokenizer, weights_file
from attnkd.reporting import write_curve
from attnkd.signals import SignalStore
from attnkd.stage import parser, setup
from attnkd.tracking import mlflow_run
from attnkd.train import Budget, fit


def make_step_loss(store: SignalStore, weights: dict[str, float], pairs: list[tuple[int, int]], temperature: float):
    """The method's objective: sum_i w_i * L_i, returning every unweighted term for logging."""
    needs_attention = bool(ATTENTION_LOSSES & weights.keys())

    def step_loss(model, batch, idx: np.ndarray):
        mask = batch["attention_mask"]  # (B, T)
        out = model(input_ids=batch["input_ids"], attention_mask=mask, output_attentions=needs_attention)
        logits_t, maps_t = store.batch(idx, mask.shape[1])  # (B, C), {layer: (B, H, T, T)}
        terms = {}
        if "ce" in weights:
            terms["ce"] = LOSSES["ce"](out.logits, batch["labels"])
        if "kd" in weights:
            terms["kd"] = LOSSES["kd"](out.logits, logits_t, temperature)
        if "attn_kl" in weights:
            per_pair = [LOSSES["attn_kl"](out.attentions[s - 1], maps_t[t], mask) for t, s in pairs]
            terms["attn_kl"] = torch.stack(per_pair).mean()
        total = sum(weights[k] * v for k, v in terms.items())
        return total, terms

    return step_loss


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--method", required=True, help="a key of `methods` in params")
    p.add_argument("--prepared", type=Path, required=True)
    p.add_argument("--teacher", type=Path, required=True, help="teacher model dir (config, tokenizer, init weights)")
    p.add_argument("--signals", type=Path, required=True, help="signal store dir")
    p.add_argument("--out", type=Path, required=True, help="student model dir")
    p.add_argument("--metrics", type=Path, required=True)
    p.add_argument("--curve", type=Path, required=True)
    args = p.parse_args()
    params = setup(args.params)
    dp = params.distill
    if args.method not in params.methods:
        raise UserError(f"{args.params}: methods.{args.method}: no such method (have {', '.join(params.methods)})")
    weights = params.methods[args.method].weights()

    meta = data.load_meta(args.prepared)
    train, val = data.load_split(args.prepared, "train"), data.load_split(args.prepared, "validation")
    teacher = load_classifier(args.teacher)
    tokenizer = load_tokenizer(args.teacher)
    pairs = resolve_layer_map(dp.layer_map, teacher.config.num_hidden_layers, dp.student.num_layers)
    store = SignalStore(args.signals)
    store.require([t for t, _ in pairs], meta["splits"]["train"]["inputs_sha256"], sha256_file(weights_file(args.teacher)))
    if store.manifest["num_examples"] != len(train):
        raise UserError(f"{args.signals / 'manifest.json'}: {store.manifest['num_examples']} examples, training split has {len(train)}; re-run `dvc repro extract`")

    student = build_student(teacher, dp.student, pairs, params.seed)
    del teacher  # only its weights for initialisation were needed; distillation reads the store
    budget = Budget(dp.epochs, dp.batch_size, dp.learning_rate, dp.weight_decay, dp.warmup_ratio, dp.max_steps, dp.eval_batch_size, params.seed)
    record = {"seed": params.seed, "method": args.method, "weights": weights, "distill": dp.model_dump(), "layer_pairs": pairs}

    with mlflow_run(f"distill@{args.method}", f"distill-{args.method}", record, params.seed) as run:
        step_loss = make_step_loss(store, weights, pairs, dp.temperature)
        history = fit(student, train, val, budget, step_loss, tokenizer.pad_token_id, run, f"distill {args.method}")
        best = max(history, key=lambda h: h["val_accuracy"])
        summary = {"best_epoch": best["epoch"], "val_accuracy": best["val_accuracy"], "val_f1_macro": best["val_f1_macro"]}
        run.log_metrics({f"best/{k}": v for k, v in summary.items()}, best["epoch"])
        with atomic_dir(args.out) as tmp:
            student.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            atomic_write_json(tmp / "attnkd.json", {"role": "student"} | record)
        write_curve(args.curve, history)
        atomic_write_json(args.metrics, summary)
        run.log_artifact(args.curve)
        run.log_artifact(args.out / "attnkd.json")
    print(f"distill {args.method}: best validation accuracy {best['val_accuracy']:.4f} at epoch {best['epoch']} -> {args.out}")


if __name__ == "__main__":
    run_stage(main)
