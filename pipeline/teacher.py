"""Stage teacher: fine-tune the pretrained encoder with the task's head (params `task`); for
task translation, train an encoder-decoder of teacher.seq2seq from scratch.

Keeps the epoch with the best validation score (the task's selection metric) and saves it as a Hugging Face
save_pretrained dir (safetensors) with its tokenizer and the params that built it. Checkpoints
every teacher.checkpoint_every steps into <out>.ckpt/; re-running after a crash resumes there.
Runs on compute.device at compute.precision; under torchrun, data-parallel over the processes.
"""

from __future__ import annotations


import numpy as np

from attnkd import data
from attnkd.checkpoint import Checkpoints
from attnkd.errors import run_stage
from attnkd.stage import parser, save_trained, setup
from attnkd.tasks import get_task
from attnkd.compute import finish, start
from attnkd.tracking import stage_run
from attnkd.train import budget_of, fit


def main() -> None:
    p = parser(__doc__, prepared="prepared data dir", out="teacher model dir", metrics="training metrics JSON", curve="per-epoch training curve TSV")
    args = p.parse_args()
    params = setup(args.params)
    tp = params.teacher
    compute = start(params.compute.device, params.compute.precision)

    meta = data.load_meta(args.prepared)
    train, val = data.load_split(args.prepared, "train"), data.load_split(args.prepared, "validation")
    if not train.labelled.all():  # few labels: the teacher learns from the gold rows only
        train = train.take(np.flatnonzero(train.labelled))
    task = get_task(params.task).bind(args.prepared)
    model, tokenizer = task.new_teacher(params, meta)

    record = {"role": "teacher", "seed": params.seed, "params": tp.used(params.task), "label_names": meta.label_names,
              "examples": {"labelled": len(train), "unlabelled": 0}}
    ckpt = Checkpoints.beside(args.out, record | {"inputs": meta.model_dump()["splits"]}, tp.checkpoint_every)
    resume = ckpt.load()
    logged = {"seed": params.seed, "teacher": tp.used(params.task), "compute": compute.describe(tp.batch_size, tp.learning_rate)}
    with stage_run(compute.main, "teacher", "teacher", logged, params.seed, resume and resume["run_id"]) as run:
        history = fit(model, task, train, val, budget_of(tp, params.seed), task.teacher_loss(params), tokenizer.pad_token_id, run, "teacher", ckpt=ckpt, resume=resume, compute=compute)
        if compute.main:
            best = save_trained(run, task, model.cpu(), tokenizer, history, record, args.out, args.metrics, args.curve)
    if compute.main:
        ckpt.clear()
        print(f"teacher: best validation {task.select_by} {best[f'val_{task.select_by}']:.4f} at epoch {best['best_epoch']} -> {args.out}")
    finish(compute)


if __name__ == "__main__":
    run_stage(main)
