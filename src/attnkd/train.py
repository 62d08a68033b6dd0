"""The training loop shared by the teacher and every student.

Data order is drawn from its own generator seeded by the stage's seed, and fixed for all epochs
before training starts, so every method of one distillation matrix sees the same batches in the
same order. The checkpoint with the best validation score (the task's `select_by`) is kept (earliest on ties).

With N processes (torchrun), the global batches are those of one process with N times the
batch size; process r takes every N-th example of each from r. DistributedDataParallel
averages the gradients, and each process's loss is weighted by its share of the batch, so the
update equals the one-process update on the whole batch (exactly for per-example losses).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm
from transformers import get_linear_schedule_with_warmup

from attnkd.checkpoint import Checkpoints, rng_state, set_rng_state
from attnkd.compute import CPU, Compute, to_device
from attnkd.data import Split, length_batches, padded_fraction
from attnkd.errors import UserError

if TYPE_CHECKING:
    from attnkd.tasks.base import Task

# (model, batch, example indices) -> unweighted loss terms and the weighted total
StepLoss = Callable[[torch.nn.Module, dict, np.ndarray], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass(frozen=True)
class Budget:
    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    warmup_ratio: float
    max_steps: int
    eval_batch_size: int
    seed: int


def budget_of(section, seed: int) -> Budget:
    """The budget of a training section of params (teacher or distill: params.TrainingParams)."""
    return Budget(section.epochs, section.batch_size, section.learning_rate, section.weight_decay, section.warmup_ratio,
                  section.max_steps, section.eval_batch_size, seed)


def epoch_orders(train: Split, budget: Budget, world: int = 1) -> list[list[np.ndarray]]:
    """Global batches of batch_size x world examples per epoch (those too small to give every
    process an example are dropped)."""
    rng = np.random.default_rng(budget.seed)
    orders = [length_batches(train.lengths, budget.batch_size * world, rng) for _ in range(budget.epochs)]
    return [[b for b in order if len(b) >= world] for order in orders]


class Step(torch.nn.Module):
    """The model and the objective's trainable parts as one module whose forward is a training
    step's loss, so DistributedDataParallel sees every parameter the step trains."""

    def __init__(self, model: torch.nn.Module, extra: torch.nn.Module | None, step_loss: StepLoss):
        super().__init__()
        self.model, self.extra, self.step_loss = model, extra or torch.nn.Module(), step_loss

    def forward(self, batch: dict, idx: np.ndarray):
        return self.step_loss(self.model, batch, idx)


def make_optimizer(model: torch.nn.Module, budget: Budget, total_steps: int):
    """AdamW without decay on biases and LayerNorm weights; linear warm-up then linear decay.

    The fused kernel updates all parameters in one pass: on CPU it takes a third of the time of
    the per-tensor loop, which matters because the 11.7M-value word embedding dominates a small
    student's step.
    """
    decay, no_decay = [], []
    for p in (p for p in model.parameters() if p.requires_grad):  # frozen ones (students.*.train_embeddings: false) are not updated
        (no_decay if p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": budget.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=budget.learning_rate, fused=True)
    sched = get_linear_schedule_with_warmup(opt, int(budget.warmup_ratio * total_steps), total_steps)
    return opt, sched


def apply_gradients(loss: torch.Tensor, trainable: torch.nn.Module, opt, sched, scaler) -> None:
    """One optimiser step from a loss: backward (scaled for fp16), gradient clipping to norm 1.0,
    AdamW, the learning-rate schedule. The step of `fit`, and of the benchmarks that time it."""
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(trainable.parameters(), 1.0)
    scaler.step(opt)
    scaler.update()
    sched.step()
    opt.zero_grad(set_to_none=True)


def fit(model, task: Task, train: Split, val: Split, budget: Budget, step_loss: StepLoss, pad_id: int, run, desc: str,
        extra: torch.nn.Module | None = None, ckpt: Checkpoints | None = None, resume: dict | None = None,
        compute: Compute = CPU) -> list[dict]:
    """Train `model` in place, leave it at its best validation epoch by the task's selection
    metric; return the per-epoch history.

    `extra` holds trainable parts of the objective that are not the model (e.g. projections).
    With `ckpt`, the whole training state is saved every `ckpt.every` steps and at each epoch
    end (by the main process); `resume` (a state `ckpt.load()` returned) continues from one,
    with the same result as a run that was never interrupted (bit for bit with one process).
    `compute` sets the device, mixed precision and the processes sharing each batch.
    """
    orders = epoch_orders(train, budget, compute.world)
    total = sum(len(o) for o in orders)
    if budget.max_steps:
        total = min(total, budget.max_steps)
    stepper = Step(model, extra, step_loss).to(compute.device)
    trainable = torch.nn.ModuleList([model, stepper.extra])
    opt, sched = make_optimizer(trainable, budget, total)
    scaler = compute.scaler()
    history, best, best_state, step = [], -1.0, None, 0
    sums: dict[str, float] = {}
    n_steps = 0
    if resume:
        trainable.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        history, best, best_state, step = resume["history"], resume["best"], resume["best_state"], resume["step"]
        sums, n_steps = resume["epoch_sums"], resume["epoch_steps"]
        set_rng_state(resume["rng"])
    if compute.distributed:  # after loading any checkpoint: DDP broadcasts rank 0's weights
        stepper = torch.nn.parallel.DistributedDataParallel(stepper, find_unused_parameters=True)

    def save() -> None:
        if not compute.main:
            return
        run.flush()  # the run's metrics up to this step are in the store before a resume continues it
        ckpt.save({
            "step": step, "epoch_sums": sums, "epoch_steps": n_steps, "history": history, "best": best, "best_state": best_state,
            "model": trainable.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": rng_state(), "run_id": run.id,
        })

    epoch_start = 0
    for epoch, order in enumerate(orders, start=1):
        done, epoch_start = max(0, step - epoch_start), epoch_start + len(order)
        if epoch <= len(history):  # finished and evaluated before the resume
            continue
        model.train()
        bar = tqdm(order[done:], desc=f"{desc} epoch {epoch}/{budget.epochs}", unit="batch", mininterval=2.0, disable=not compute.main)
        for idx in bar:
            if step >= total:
                break
            local = compute.shard(idx)
            with compute.autocast():
                loss, terms = stepper(to_device(task.collate(train, local, pad_id), compute.device), local)
            check_finite(loss, terms, step)
            share = len(local) * compute.world / len(idx)  # DDP averages processes: weight each by its examples
            apply_gradients(loss * share, trainable, opt, sched, scaler)  # share is 1.0 with one process: the same gradient bit for bit
            step += 1
            n_steps += 1
            names = ["loss", *terms]
            local_values = torch.tensor([loss.item(), *(v.item() for v in terms.values())], dtype=torch.float64)
            reduced = compute.sum(local_values * len(local)) / len(idx)  # example-weighted mean over the global batch
            values = dict(zip(names, reduced.tolist()))
            for k, v in values.items():
                if "/" not in k:  # per-layer-pair terms (attn_kl/t3-s1) go to MLflow only, not the epoch curve
                    sums[k] = sums.get(k, 0.0) + v
            run.log_metrics({f"train/{k}": v for k, v in values.items()} | {"train/lr": sched.get_last_lr()[0]}, step)
            bar.set_postfix(loss=f"{values['loss']:.4f}")
            if ckpt and ckpt.every and step % ckpt.every == 0:
                save()
        metrics = task.metrics(val, task.predict(model, val, budget.eval_batch_size, pad_id, compute))
        run.log_metrics({f"val/{k}": v for k, v in metrics.items()}, step)
        row = {"epoch": epoch, "steps": n_steps, "padded_fraction": padded_fraction(train.lengths, order)}
        row |= {f"train_{k}": v / max(n_steps, 1) for k, v in sums.items()} | {f"val_{k}": v for k, v in metrics.items()}
        history.append(row)
        if metrics[task.select_by] > best:
            best, best_state = metrics[task.select_by], {k: v.detach().clone() for k, v in model.state_dict().items()}
        sums, n_steps = {}, 0
        if ckpt and ckpt.every:
            save()
        if step >= total:
            break
    model.load_state_dict(best_state)
    return history


def check_finite(loss: torch.Tensor, terms: dict[str, torch.Tensor], step: int) -> None:
    if math.isfinite(loss.item()):
        return
    bad = [k for k, v in terms.items() if not math.isfinite(v.item())]
    raise UserError(f"training stopped: non-finite loss at step {step + 1} (terms: {', '.join(bad) or 'total'}); lower the learning rate or check the inputs")
