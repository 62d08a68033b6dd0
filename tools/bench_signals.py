"""Benchmark of the teacher signal store on SST-2: what extracting once costs and saves.

    python tools/bench_signals.py --sst2 ../shared/data/sst2/train.tsv
    python tools/bench_signals.py --profile sst2     # that profile's students (s1, s2)

Prints, for the default teacher (packaged all-MiniLM-L6-v2) and the students and layer map of
params.yaml (or of a profile), with the kd_at method (soft labels + attention maps):
  1. extraction throughput (examples/s) and store size against the ragged fp16 bound;
  2. for each student, time per distillation step from the store against online distillation
     (the teacher run on every batch), same student, same batches, the two taking turns on each
     batch, their ratio, and the ratio's ceiling from model FLOPs: (student training + teacher forward) /
     student training, the ratio a store step with no cost beyond the student's arithmetic gives;
  3. peak resident memory of the real `distill` entry script (first student) at two data-set sizes;
  4. the padded-token fraction with and without length-grouped batches.
The teacher gets a fresh 2-class head and is not fine-tuned: costs do not depend on its weights.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace  # the head needs only the label names of a prepared meta

import numpy as np
import pandas as pd
import psutil
import torch
import yaml

from attnkd import data, signals
from attnkd.artifacts import PreparedMeta, SplitInfo
from attnkd.compute import CPU
from attnkd.distillation import DistillRun
from attnkd.io import sha256_file
from attnkd.losses import resolve_layer_map
from attnkd.models import load_model, load_tokenizer, resolve_init, weights_file
from attnkd.objective import wanted_tensors
from attnkd.params import Params
from attnkd.students import get_family
from attnkd.tasks import get_task
from attnkd.train import apply_gradients, make_optimizer
from profiles import profile_params

METHOD = {"ce": 0.5, "kd": 0.5, "attn_kl": 1.0}
REPO = Path(__file__).resolve().parents[1]


def read_sst2(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, dtype={"sentence": str, "label": int})


def write_prepared(out: Path, train: pd.DataFrame, val: pd.DataFrame, tokenizer, max_length: int) -> None:
    """A prepared dir in the layout `prepare` writes, so the real entry scripts can read it."""
    out.mkdir(parents=True)
    splits = {}
    for name, part in (("train", train), ("validation", val), ("test", val)):
        texts = part["sentence"].tolist()
        enc = data.tokenize(tokenizer, texts, None, max_length)
        data.write_split(out / f"{name}.parquet", texts, [""] * len(texts), part["label"].tolist(), enc)
        splits[name] = SplitInfo(examples=len(part), inputs_sha256=data.ids_digest(enc.input_ids), sha256=sha256_file(out / f"{name}.parquet"))
    PreparedMeta(label_names=["negative", "positive"], max_length=max_length, source="sst2", pair=False, tokenizer="all-MiniLM-L6-v2", splits=splits).write(out)


def ragged_bound(lengths: np.ndarray, wanted: dict[str, list[int]], heads: int, width: int, bytes_per: int = 2) -> int:
    """Bytes of the stored tensors with no padding and no file overhead."""
    return int(sum(len(ls) * signals.offsets(lengths, k, heads, width)[-1] * bytes_per for k, ls in wanted.items()))


def time_modes(runs: dict[str, DistillRun], split: data.Split, batches) -> dict[str, float]:
    """Median seconds per training step of each mode (signal source), each training its own copy
    of the same initial student. The modes take turns on every batch, in alternating order, so
    both meet the same machine; the first 3 batches are warm-up. A step is that of train.fit:
    collate, teacher signals, loss, then train.apply_gradients (backward, clipping, AdamW, schedule)."""
    state = {}
    for mode, run in runs.items():
        trainable = torch.nn.ModuleList([run.student, run.objective])
        opt, sched = make_optimizer(trainable, run.budget, len(batches))
        run.student.train()
        state[mode] = (run, trainable, opt, sched, CPU.scaler())
    times: dict[str, list[float]] = {mode: [] for mode in state}
    for i, idx in enumerate(batches):
        for mode in list(state) if i % 2 == 0 else list(reversed(state)):
            run, trainable, opt, sched, scaler = state[mode]
            t0 = time.perf_counter()
            batch = data.collate(split, idx, 0)
            loss, _ = run.step_loss(run.student, batch, idx)
            apply_gradients(loss, trainable, opt, sched, scaler)
            if i >= 3:
                times[mode].append(time.perf_counter() - t0)
    return {mode: float(np.median(t)) for mode, t in times.items()}


def layer_flops(layers: int, hidden: int, intermediate: int, lengths: np.ndarray) -> float:
    """Forward FLOPs of the encoder layers over examples of these real lengths: per token and layer
    2 x (4 H^2 + 2 H I) for projections and feed-forward, plus 4 H n for attention over n tokens."""
    n = lengths.astype(np.float64)
    return float(layers * (2 * (4 * hidden**2 + 2 * hidden * intermediate) * n.sum() + 4 * hidden * (n**2).sum()))


def peak_rss_mib(cmd: list[str], env: dict) -> float:
    """Peak resident memory of a process (sampled every 50 ms), in MiB."""
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ps, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr.read()[-2000:]}")
    return peak / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sst2", type=Path, default=REPO.parent / "shared/data/sst2/train.tsv")
    p.add_argument("--sizes", type=int, nargs=2, default=[10_000, 60_000], help="two training-set sizes")
    p.add_argument("--steps", type=int, default=200, help="timed distillation steps per mode")
    p.add_argument("--rss-steps", type=int, default=100, help="distill steps in the memory runs")
    p.add_argument("--profile", default="", help="a profile in profiles/ whose students, layer map, max length and batch size to use")
    args = p.parse_args()

    params = profile_params(args.profile)  # teacher, students, layer map, max length, batch size
    dp, max_length = params.distill, params.data.max_length
    df = read_sst2(args.sst2).sample(frac=1.0, random_state=params.seed).reset_index(drop=True)
    val = df.iloc[-500:]
    torch.manual_seed(0)
    init = resolve_init(params.teacher.init)
    tokenizer = load_tokenizer(init)
    work = Path(tempfile.mkdtemp(prefix="attnkd-bench-"))
    task = get_task("classification")
    teacher = load_model(init, task, head=task.head_config(SimpleNamespace(label_names=["negative", "positive"]))).eval()
    teacher.save_pretrained(work / "teacher")
    tokenizer.save_pretrained(work / "teacher")
    cfg = teacher.config
    pairs = {name: resolve_layer_map(dp.layer_map, cfg.num_hidden_layers, get_family(params.students[name].family).layers(params.students[name])) for name in dp.students}
    wanted = wanted_tensors([METHOD], sorted({p for ps in pairs.values() for p in ps}), dp.attn_mse_on)  # the union, as extract stores
    shapes = ", ".join(f"{n} {params.students[n].num_layers}x{params.students[n].hidden_size} (pairs {pairs[n]})" for n in dp.students)
    print(f"teacher all-MiniLM-L6-v2 (6x384, 12 heads); students {shapes}; stored {wanted}; max_length {max_length}; "
          f"batch {dp.batch_size}; torch threads {torch.get_num_threads()}")

    rss = {}
    for size in args.sizes:
        root = work / f"n{size}"
        write_prepared(root / "prepared", df.iloc[:size], val, tokenizer, max_length)
        train = data.load_split(root / "prepared", "train")
        (root / "signals").mkdir()
        t0 = time.perf_counter()
        manifest = signals.extract(teacher, train, wanted, "float16", params.extract.batch_size, tokenizer.pad_token_id, root / "signals",
                                   {"inputs_sha256": json.loads((root / "prepared/meta.json").read_text())["splits"]["train"]["inputs_sha256"],
                                    "teacher_sha256": sha256_file(weights_file(work / "teacher"))}, task)
        seconds = time.perf_counter() - t0
        size_bytes = sum(f.bytes for f in manifest.files.values())
        bound = ragged_bound(train.lengths, wanted, 12, 384)
        print(f"\n[{size} examples, mean {train.lengths.mean():.1f} tokens]")
        print(f"  extraction: {seconds:.1f} s, {size / seconds:.0f} examples/s")
        print(f"  store: {size_bytes / 2**20:.1f} MiB = {size_bytes / size:.0f} B/example; ragged fp16 bound of the stored maps "
              f"{bound / 2**20:.1f} MiB; store/bound = {size_bytes / bound:.3f} (logits, lengths and .npy headers are the rest)")
        padded = data.padded_fraction(train.lengths, data.length_batches(train.lengths, dp.batch_size, np.random.default_rng(0)))
        perm = np.random.default_rng(0).permutation(size)
        plain = data.padded_fraction(train.lengths, [perm[i : i + dp.batch_size] for i in range(0, size, dp.batch_size)])
        print(f"  padded tokens: {padded:.3f} with length grouping, {plain:.3f} with random batches (batch {dp.batch_size})")

        doc = params.model_dump() | {"methods": {"kd_at": METHOD}}
        doc["distill"] = doc["distill"] | {"max_steps": args.rss_steps, "epochs": 1}
        (root / "params.yaml").write_text(yaml.safe_dump(doc))
        env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}", "TQDM_DISABLE": "1"}
        cmd = [sys.executable, "pipeline/distill.py", "--params", str(root / "params.yaml"), "--student", dp.students[0], "--method", "kd_at", "--seed", str(params.student_seeds[0]),
               "--prepared", str(root / "prepared"), "--teacher", str(work / "teacher"), "--signal-store", str(root / "signals"),
               "--out", str(root / "student"), "--metrics", str(root / "m.json"), "--curve", str(root / "c.tsv")]
        rss[size] = peak_rss_mib(cmd, env)
        print(f"  distill peak RSS ({args.rss_steps} steps, store mode): {rss[size]:.0f} MiB")

    # store vs online: same student init, same batches, one process, first size
    root = work / f"n{args.sizes[0]}"
    train = data.load_split(root / "prepared", "train")
    store = signals.SignalStore(root / "signals")
    batches = data.length_batches(train.lengths, dp.batch_size, np.random.default_rng(params.seed))[: args.steps + 3]
    steps_per_epoch = int(np.ceil(args.sizes[0] / dp.batch_size))
    teacher_forward = layer_flops(cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, train.lengths)
    print(f"\n[distillation, {args.sizes[0]} examples, {args.steps} timed steps of batch {dp.batch_size}, method kd_at]")
    bench = Params.model_validate(params.model_dump() | {"methods": {"kd_at": METHOD}})
    for name in dp.students:
        s = params.students[name]
        runs = {mode: task.assemble(bench, name, "kd_at", params.seed, teacher, source) for mode, source in (("store", store), ("online", None))}
        per_step = time_modes(runs, train, batches)
        student_training = 3 * layer_flops(s.num_layers, s.hidden_size, s.intermediate_size, train.lengths)  # forward + backward
        print(f"  {name} ({s.num_layers}x{s.hidden_size}):")
        for mode, sec in per_step.items():
            print(f"    {mode:6s}: {sec * 1000:.1f} ms/step median -> {sec * steps_per_epoch:.0f} s per epoch")
        print(f"    online / store time per epoch: {per_step['online'] / per_step['store']:.2f}x "
              f"(FLOP ceiling {(student_training + teacher_forward) / student_training:.2f}x: teacher forward "
              f"{teacher_forward / student_training:.2f} x student training)", flush=True)
    a, b = args.sizes
    print(f"\n[memory] distill peak RSS {rss[a]:.0f} MiB at {a} vs {rss[b]:.0f} MiB at {b} examples: {100 * (rss[b] / rss[a] - 1):+.1f}%")
    print(f"(work dir {work})")


if __name__ == "__main__":
    main()
