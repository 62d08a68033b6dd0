"""Where and how a stage computes: the device, mixed precision, and data-parallel processes.

One process by default. Started by `torchrun --nproc_per_node N` (which sets RANK, WORLD_SIZE
and the rendezvous variables), the training stages join a process group (gloo on CPU, NCCL on
CUDA) and train with DistributedDataParallel: each process takes a distinct share of every
global batch, gradients are averaged, metrics are reduced, and only rank 0 writes artifacts
and logs to MLflow.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from attnkd.errors import UserError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Compute:
    device: torch.device
    precision: str  # fp32 | bf16 | fp16 (autocast; fp16 with a gradient scaler)
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """The process that writes artifacts and logs (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def autocast(self):
        """Mixed precision for forward passes and losses; a no-op at fp32."""
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def scaler(self) -> torch.amp.GradScaler:
        """Loss scaling for fp16 (disabled, a pass-through, otherwise)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def shard(self, idx: np.ndarray) -> np.ndarray:
        """This process's share of a global batch: every world-th example from its rank."""
        return idx[self.rank :: self.world]

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over the processes (itself with one process), on the tensor's device."""
        if not self.distributed:
            return values
        reduced = values.to(self.device, copy=True)
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        return reduced.to(values.device)

    def describe(self, batch_size: int, learning_rate: float) -> dict:
        """What a run record states: device, precision, processes, effective batch and learning rate."""
        return {"device": str(self.device), "precision": self.precision, "processes": self.world,
                "batch_size_per_process": batch_size, "effective_batch_size": batch_size * self.world, "learning_rate": learning_rate}


CPU = Compute(torch.device("cpu"), "fp32")


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """compute.device: auto (CUDA when present, else CPU), cpu, or cuda."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("compute.device: cuda was asked for, but PyTorch sees no CUDA device (use auto or cpu)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(f"cuda:{local_rank}") if name == "cuda" else torch.device("cpu")


def start(device: str, precision: str) -> Compute:
    """The stage's compute: joins the process group when started by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Compute(dev, precision, rank, world)


def finish(compute: Compute) -> None:
    """Leave the process group (after every process has finished its work)."""
    if compute.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
