"""Stage distill: train one student with one method's loss weights, from the signal store.

By default the teacher is never run: its signals come from the store written by extract
(distill.signals: store); distill.signals: online runs the teacher on every batch instead.
The matrix is distill.students x methods x student_seeds. For one student and seed, every
method builds the same initial student and sees the same batches in the same order, so methods
differ only in their loss weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from attnkd import data
from attnkd.checkpoint import Checkpoints
from attnkd.errors import UserError, run_stage
from attnkd.io import sha256_file
from attnkd.losses import resolve_layer_map
from attnkd.objective import Objective, check_compatible, wanted_tensors
from attnkd.models import build_student, load_classifier, load_tokenizer, weights_file
from attnkd.signals import SignalStore, teacher_batch
from attnkd.stage import parser, save_trained, seed_everything, setup, student_name
from attnkd.compute import finish, start
from attnkd.tracking import stage_run
from attnkd.train import Budget, fit


def make_step_loss(source: SignalStore | torch.nn.Module, objective: Objective, wanted: dict[str, list[int]]):
    """Get the batch's teacher signals the method needs (from the store, or from the teacher
    run online) and apply the method's objective."""

    def step_loss(model, batch, idx: np.ndarray):
        logits_t, tensors_t = teacher_batch(source, idx, batch, wanted)  # (B, C), {(kind, layer): ...}
        return objective(model, batch, logits_t, tensors_t)

    return step_loss


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--student", required=True, help="a name in distill.students (its architecture: students.<name>)")
    p.add_argument("--method", required=True, help="a key of `methods` in params")
    p.add_argument("--seed", type=int, required=True, help="student seed (initialisation and data order), one of student_seeds")
    p.add_argument("--prepared", type=Path, required=True)
    p.add_argument("--teacher", type=Path, required=True, help="teacher model dir (config, tokenizer, init weights)")
    p.add_argument("--signal-store", type=Path, required=True, help="signal store dir (not --signals: torchrun would take that for its --signals-to-handle)")
    p.add_argument("--out", type=Path, required=True, help="student model dir")
    p.add_argument("--metrics", type=Path, required=True)
    p.add_argument("--curve", type=Path, required=True)
    args = p.parse_args()
    params = setup(args.params)
    dp = params.distill
    compute = start(params.compute.device, params.compute.precision)
    if args.method not in params.methods:
        raise UserError(f"{args.params}: methods.{args.method}: no such method (have {', '.join(params.methods)})")
    if args.student not in params.distill.students:
        raise UserError(f"{args.params}: distill.students: {args.student!r} is not listed (have {params.distill.students})")
    if args.seed not in params.student_seeds:
        raise UserError(f"{args.params}: student_seeds: {args.seed} is not listed (have {params.student_seeds})")
    seed_everything(args.seed)
    weights = params.methods[args.method].weights()
    sp = params.students[args.student]
    name = student_name(args.student, args.method, args.seed)

    meta = data.load_meta(args.prepared)
    train, val = data.load_split(args.prepared, "train"), data.load_split(args.prepared, "validation")
    teacher = load_classifier(args.teacher)
    tokenizer = load_tokenizer(args.teacher)
    pairs = resolve_layer_map(dp.layer_map, teacher.config.num_hidden_layers, sp.num_layers)
    check_compatible(weights, dp, sp, teacher.config.num_attention_heads, teacher.config.hidden_size)
    wanted = wanted_tensors([weights], pairs, dp.attn_mse_on)
    teacher_sha256 = sha256_file(weights_file(args.teacher))
    if dp.signals == "store":
        source = SignalStore(args.signal_store)
        source.require(wanted, meta["splits"]["train"]["inputs_sha256"], teacher_sha256)
        if source.manifest["num_examples"] != len(train):
            raise UserError(f"{args.signal_store / 'manifest.json'}: {source.manifest['num_examples']} examples, training split has {len(train)}; re-run `dvc repro extract`")
    else:
        source = teacher.eval().to(compute.device)

    student = build_student(teacher, sp, pairs, args.seed)
    objective = Objective(weights, pairs, dp, sp, teacher.config.hidden_size, teacher.config.num_attention_heads)
    del teacher  # in store mode only its weights for initialisation were needed
    budget = Budget(dp.epochs, dp.batch_size, dp.learning_rate, dp.weight_decay, dp.warmup_ratio, dp.max_steps, dp.eval_batch_size, args.seed)
    record = {"seed": args.seed, "student": args.student, "method": args.method, "weights": weights, "architecture": sp.model_dump(),
              "distill": dp.model_dump(), "layer_pairs": pairs}

    inputs = {"prepared": meta["splits"], "teacher_sha256": teacher_sha256}
    ckpt = Checkpoints.beside(args.out, record | inputs, dp.checkpoint_every)
    resume = ckpt.load()
    logged = record | {"compute": compute.describe(dp.batch_size, dp.learning_rate)}
    with stage_run(compute.main, f"distill@{args.student}-{args.method}-{args.seed}", f"distill-{name}", logged, args.seed, resume and resume["run_id"]) as run:
        history = fit(student, train, val, budget, make_step_loss(source, objective, wanted), tokenizer.pad_token_id, run, f"distill {name}",
                      extra=objective, ckpt=ckpt, resume=resume, compute=compute)
        if compute.main:
            best = save_trained(run, student.cpu(), tokenizer, history, {"role": "student"} | record, args.out, args.metrics, args.curve)
    if compute.main:
        ckpt.clear()
        print(f"distill {name}: best validation accuracy {best['val_accuracy']:.4f} at epoch {best['best_epoch']} -> {args.out}")
    finish(compute)


if __name__ == "__main__":
    run_stage(main)
