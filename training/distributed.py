"""Data parallel training under `accelerate launch` (or torchrun): the same loop, N processes.

The only trainable tensors are a few vectors, so there is no model to wrap: every process
holds the same vectors and optimizer, takes its share of each step's batches, and averages
the vector gradients (and the loss) with one all-reduce before the optimizer step. The
vectors therefore stay identical everywhere. Only the main process writes files and events.

`accelerate launch` (and torchrun) set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
MASTER_PORT; `accelerate launch --cpu` also sets ACCELERATE_USE_CPU. We read those directly
and use gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str | None = None  # None: let training.device choose

    @classmethod
    def single(cls) -> "DistContext":
        return cls()

    @classmethod
    def from_env(cls) -> "DistContext":
        """Join the process group when launched by accelerate/torchrun; a single process otherwise."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") \
            or not torch.cuda.is_available()
        if not tdist.is_initialized():
            tdist.init_process_group(backend="gloo" if use_cpu else "nccl", rank=rank, world_size=world)
        device = "cpu" if use_cpu else f"cuda:{local}"
        if not use_cpu:
            torch.cuda.set_device(local)
        return cls(rank, world, local, device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return value
        out = value.detach().clone()
        tdist.all_reduce(out)
        return out / self.world

    def all_reduce_mean_(self, tensors: list[torch.Tensor]) -> None:
        """Average gradients in place across processes (one flat all-reduce)."""
        if self.world == 1 or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        tdist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset : offset + n].view_as(t))
            offset += n

    def gather_to_main(self, value: object) -> list[object] | None:
        """Every process's `value` (picklable), by rank, on the main process; None elsewhere.
        A collective: every process must call it at the same point of the loop."""
        if self.world == 1:
            return [value]
        out: list[object] | None = [None] * self.world if self.is_main else None
        tdist.gather_object(value, out, dst=0)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            tdist.barrier()

    def close(self) -> None:
        if self.world > 1 and tdist.is_initialized():
            tdist.destroy_process_group()
