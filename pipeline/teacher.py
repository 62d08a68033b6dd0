"""Stage teacher: fine-tune the pretrained encoder with a classification head.

Keeps the epoch with the best validation accuracy and saves it as a Hugging Face
save_pretrained dir (safetensors) with its tokenizer and the params that built it. Checkpoints
every teacher.checkpoint_every steps into <out>.ckpt/; re-running after a crash resumes there.
Runs on compute.device at compute.precision; under torchrun, data-parallel over the processes.
"""

from __future__ import annotations

from pathlib import Path

from attnkd import data
from attnkd.checkpoint import Checkpoints
from attnkd.errors import run_stage
from attnkd.losses import ce_loss
from attnkd.models import forward, load_classifier, load_tokenizer, resolve_init
from attnkd.stage import parser, save_trained, setup
from attnkd.compute import finish, start
from attnkd.tracking import stage_run
from attnkd.train import Budget, fit


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--prepared", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="teacher model dir")
    p.add_argument("--metrics", type=Path, required=True, help="training metrics JSON")
    p.add_argument("--curve", type=Path, required=True, help="per-epoch training curve TSV")
    args = p.parse_args()
    params = setup(args.params)
    tp = params.teacher
    compute = start(params.compute.device, params.compute.precision)

    meta = data.load_meta(args.prepared)
    train, val = data.load_split(args.prepared, "train"), data.load_split(args.prepared, "validation")
    init = resolve_init(tp.init)
    tokenizer = load_tokenizer(init)
    model = load_classifier(init, num_labels=len(meta["label_names"]), label_names=meta["label_names"])
    budget = Budget(tp.epochs, tp.batch_size, tp.learning_rate, tp.weight_decay, tp.warmup_ratio, tp.max_steps, tp.eval_batch_size, params.seed)

    def step_loss(model, batch, idx):
        out = forward(model, batch)
        loss = ce_loss(out.logits, batch["labels"])
        return loss, {"ce": loss}

    record = {"role": "teacher", "seed": params.seed, "params": tp.model_dump(), "label_names": meta["label_names"]}
    ckpt = Checkpoints.beside(args.out, record | {"inputs": meta["splits"]}, tp.checkpoint_every)
    resume = ckpt.load()
    logged = {"seed": params.seed, "teacher": tp.model_dump(), "compute": compute.describe(tp.batch_size, tp.learning_rate)}
    with stage_run(compute.main, "teacher", "teacher", logged, params.seed, resume and resume["run_id"]) as run:
        history = fit(model, train, val, budget, step_loss, tokenizer.pad_token_id, run, "teacher", ckpt=ckpt, resume=resume, compute=compute)
        if compute.main:
            best = save_trained(run, model.cpu(), tokenizer, history, record, args.out, args.metrics, args.curve)
    if compute.main:
        ckpt.clear()
        print(f"teacher: best validation accuracy {best['val_accuracy']:.4f} at epoch {best['best_epoch']} -> {args.out}")
    finish(compute)


if __name__ == "__main__":
    run_stage(main)
