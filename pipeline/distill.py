"""Stage distill: train one student with one method's loss weights, from the signal store.

By default the teacher is never run: its signals come from the store written by extract
(distill.signals: store); distill.signals: online runs the teacher on every batch instead.
The matrix is distill.students x methods x student_seeds. For one student and seed, every
method builds the same initial student and sees the same batches in the same order, so methods
differ only in their loss weights.
"""

from __future__ import annotations


from pathlib import Path

from attnkd import data
from attnkd.checkpoint import Checkpoints
from attnkd.compute import finish, start
from attnkd.distillation import StoreInputs
from attnkd.errors import UserError, run_stage
from attnkd.io import sha256_file
from attnkd.models import load_model, load_tokenizer, weights_file
from attnkd.stage import parser, save_trained, seed_everything, setup, student_name
from attnkd.tasks import get_task
from attnkd.tracking import stage_run
from attnkd.train import fit


def main() -> None:
    p = parser(__doc__, prepared="prepared data dir", teacher="teacher model dir (config, tokenizer, init weights)",
               signal_store="signal store dir (not --signals: torchrun would take that for its --signals-to-handle)",
               out="student model dir", metrics="best-epoch metrics JSON", curve="per-epoch training curve TSV")
    p.add_argument("--student", required=True, help="a name in distill.students (its architecture: students.<name>)")
    p.add_argument("--method", required=True, help="a key of `methods` in params")
    p.add_argument("--seed", type=int, required=True, help="student seed (initialisation and data order), one of student_seeds")
    p.add_argument("--transfer", type=Path, help="the transfer set dir written by augment (unlabelled rows after the training split)")
    args = p.parse_args()
    params = setup(args.params)
    if args.method not in params.methods:
        raise UserError(f"{args.params}: methods.{args.method}: no such method (have {', '.join(params.methods)})")
    if args.student not in params.distill.students:
        raise UserError(f"{args.params}: distill.students: {args.student!r} is not listed (have {params.distill.students})")
    if args.seed not in params.student_seeds:
        raise UserError(f"{args.params}: student_seeds: {args.seed} is not listed (have {params.student_seeds})")
    compute = start(params.compute.device, params.compute.precision)
    seed_everything(args.seed)
    name = student_name(args.student, args.method, args.seed)

    meta = data.load_meta(args.prepared)
    training, val = data.load_training(args.prepared, args.transfer), data.load_split(args.prepared, "validation")
    task = get_task(params.task).bind(args.prepared)
    teacher, tokenizer = load_model(args.teacher, task), load_tokenizer(args.teacher)
    inputs = {"prepared": meta.model_dump()["splits"], "teacher_sha256": sha256_file(weights_file(args.teacher))}
    online = params.distill.signals == "online"
    expect = StoreInputs(task.inputs_digest(training), inputs["teacher_sha256"], len(training))
    run = task.assemble(params, args.student, args.method, args.seed, teacher.to(compute.device) if online else teacher,
                        None if online else task.open_store(args.signal_store), expect)
    if run.live:  # tensors the store left out (over extract.max_gb): the teacher computes them on every batch
        run.teacher.to(compute.device)
        print(f"distill {name}: {run.live} from the teacher on every batch (over the store's extract.max_gb)")
    del teacher  # in store mode only its weights for initialisation were needed, unless run.live
    train = run.rows(training)  # gold rows only for a method that reads nothing of the teacher
    run.budget = run.budget_for(len(train), len(training), params.distill.gold_steps)
    run.record["examples"] = {"labelled": int(train.labelled.sum()), "unlabelled": int((~train.labelled).sum()), "epochs": run.budget.epochs}

    ckpt = Checkpoints.beside(args.out, run.record | inputs, params.distill.checkpoint_every)
    resume = ckpt.load()
    logged = run.record | {"compute": compute.describe(params.distill.batch_size, params.distill.learning_rate)}
    with stage_run(compute.main, f"distill@{args.student}-{args.method}-{args.seed}", f"distill-{name}", logged, args.seed, resume and resume["run_id"]) as mlrun:
        history = fit(run.student, run.task, train, val, run.budget, run.step_loss, tokenizer.pad_token_id, mlrun, f"distill {name}",
                      extra=run.objective, ckpt=ckpt, resume=resume, compute=compute)
        if compute.main:
            best = save_trained(mlrun, run.task, run.student.cpu(), tokenizer, history, {"role": "student"} | run.record, args.out, args.metrics, args.curve)
    if compute.main:
        ckpt.clear()
        print(f"distill {name}: best validation {run.task.select_by} {best[f'val_{run.task.select_by}']:.4f} at epoch {best['best_epoch']} -> {args.out}")
    finish(compute)


if __name__ == "__main__":
    run_stage(main)
