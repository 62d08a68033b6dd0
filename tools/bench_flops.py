"""Training throughput against the machine's limit: teacher fine-tuning and distillation of
each student of a profile, in tokens/s, examples/s, model FLOPs per token and the fraction of
this machine's fp32 matrix-multiply peak.

    python tools/bench_flops.py --profile sst2            # ~5 min on 2 cores

Every figure comes from one process with the same thread count (torch's default: the cores):
  1. the peak: median GFLOP/s of an fp32 (4096 x 4096) @ (4096 x 4096) matmul;
  2. teacher training: the real training loop (`train.fit`, AdamW, length-grouped batches of
     teacher.batch_size) on the first --examples training examples of the profile's data;
  3. distillation of each student in distill.students with --method, the signals read from a
     store extracted from those examples, batches of distill.batch_size.
Model FLOPs count the useful work of a training step on real tokens (padding excluded):
3 x forward, forward = per layer 2 x (4 H^2 + 2 H I) per token for the projections and the
feed-forward, plus 4 H n per token of an n-token example for attention scores and mixing;
embeddings, pooler and head are left out. Utilisation = model FLOP/s / measured peak.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace  # the head needs only the label names of a prepared meta

import numpy as np
import pandas as pd
import torch

from attnkd import data, signals
from attnkd.io import sha256_file
from attnkd.losses import resolve_layer_map
from attnkd.models import load_model, load_tokenizer, resolve_init, weights_file
from attnkd.objective import wanted_tensors
from attnkd.params import StudentParams
from attnkd.tasks import get_task, hard_label_loss
from attnkd.tracking import NoRun
from attnkd.train import Budget, budget_of, fit
from bench_signals import layer_flops, read_sst2, write_prepared
from profiles import REPO, profile_params


def matmul_peak(n: int = 4096, repeats: int = 5) -> float:
    """Median GFLOP/s of an fp32 n x n matmul (2 n^3 FLOPs), after one warm-up."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / float(np.median(times)) / 1e9


def train_flops(lengths: np.ndarray, layers: int, hidden: int, intermediate: int) -> float:
    """Model FLOPs of one training pass (forward + backward = 3 x forward) over examples of these real lengths."""
    return 3 * layer_flops(layers, hidden, intermediate, lengths)


def timed_fit(model, train: data.Split, val: data.Split, budget: Budget, step_loss, pad_id: int, extra=None) -> float:
    """Seconds of one epoch of the real training loop over `train`."""
    t0 = time.perf_counter()
    fit(model, get_task("classification"), train, val, replace(budget, epochs=1, max_steps=0), step_loss, pad_id, NoRun(), "bench", extra=extra)
    return time.perf_counter() - t0


def report(name: str, seconds: float, train: data.Split, layers: int, hidden: int, intermediate: int, peak: float) -> dict:
    tokens = int(train.lengths.sum())
    flops = train_flops(train.lengths, layers, hidden, intermediate)
    row = {"model": name, "shape": f"{layers}x{hidden}", "seconds": round(seconds, 1), "examples/s": round(len(train) / seconds, 1),
           "tokens/s": round(tokens / seconds), "MFLOP/token": round(flops / tokens / 1e6, 1),
           "GFLOP/s": round(flops / seconds / 1e9, 1), "% of peak": round(100 * flops / seconds / 1e9 / peak, 1)}
    print("  " + ", ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="sst2", help="a profile in profiles/ with a GLUE-style sentence/label TSV (its teacher, students, batch sizes)")
    p.add_argument("--examples", type=int, default=2048, help="training examples timed per model (one epoch over them)")
    p.add_argument("--method", default="kd_at", help="the distillation method timed")
    args = p.parse_args()

    params = profile_params(args.profile)
    dp, tp, dcfg = params.distill, params.teacher, params.data
    frame = read_sst2(REPO / dcfg.dir / dcfg.splits.train).sample(frac=1.0, random_state=params.seed).reset_index(drop=True)
    threads = torch.get_num_threads()
    print(f"profile {args.profile}: {args.examples} training examples of {REPO / dcfg.dir / dcfg.splits.train}; torch {torch.__version__}, "
          f"{threads} threads", flush=True)
    peak = matmul_peak()
    print(f"fp32 matmul peak (4096^3, median of 5): {peak:.1f} GFLOP/s", flush=True)

    init = resolve_init(tp.init)
    tokenizer = load_tokenizer(init)
    work = Path(tempfile.mkdtemp(prefix="attnkd-flops-"))
    write_prepared(work / "prepared", frame.iloc[: args.examples], frame.iloc[-32:], tokenizer, dcfg.max_length)
    train, val = data.load_split(work / "prepared", "train"), data.load_split(work / "prepared", "validation")
    print(f"mean {train.lengths.mean():.1f} real tokens per example", flush=True)
    rows = []

    task = get_task("classification")
    teacher = load_model(init, task, head=task.head_config(SimpleNamespace(label_names=["negative", "positive"])))
    cfg = teacher.config
    print(f"teacher training (batch {tp.batch_size}):", flush=True)
    seconds = timed_fit(teacher, train, val, budget_of(tp, params.seed), hard_label_loss(task), tokenizer.pad_token_id)
    rows.append(report("teacher", seconds, train, cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, peak))
    teacher.eval().save_pretrained(work / "teacher")

    weights = params.methods[args.method].weights()
    for name in dp.students:
        sp: StudentParams = params.students[name]
        wanted = wanted_tensors([weights], resolve_layer_map(dp.layer_map, cfg.num_hidden_layers, sp.num_layers), dp.attn_mse_on)
        store_dir = work / f"signals-{name}"
        store_dir.mkdir()
        signals.extract(teacher, train, wanted, params.extract.dtype, params.extract.batch_size, tokenizer.pad_token_id, store_dir,
                        {"inputs_sha256": data.ids_digest(train.input_ids), "teacher_sha256": sha256_file(weights_file(work / "teacher"))}, task)
        run = task.assemble(params, name, args.method, params.seed, teacher, signals.SignalStore(store_dir))
        print(f"distillation of {name} with {args.method} from the store (batch {dp.batch_size}):", flush=True)
        seconds = timed_fit(run.student, train, val, run.budget, run.step_loss, tokenizer.pad_token_id, extra=run.objective)
        rows.append(report(name, seconds, train, sp.num_layers, sp.hidden_size, sp.intermediate_size, peak))

    print()
    print(pd.DataFrame(rows).to_markdown(index=False))
    print(f"\npeak {peak:.1f} GFLOP/s ({threads} threads); work dir {work}")


if __name__ == "__main__":
    main()
