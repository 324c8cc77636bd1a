"""Process-group plumbing for ``torchrun``: one process per GPU (or CPU worker), no DDP wrapper.

``DualDTrainer`` takes a ``grad_sync`` callback instead of DDP (the critic's gradient penalty needs
a double backward, which DDP's reducer does not support): :meth:`DistContext.grad_sync` all-reduces
(averages) a network's gradients in one flat buffer. That buffer carries one extra element, a
"poison" flag: a rank whose loss became NaN/inf raises *before* its backward, so its peers would wait
forever in the all-reduce; instead it calls :meth:`DistContext.poison` with a buffer of the same size
and the flag set, which completes its peers' all-reduce and makes every rank raise the same error.

Single-process runs use the same object with ``world_size == 1``, where every collective is a no-op.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from .errors import TrainingError
from .step import NonFiniteLossError

T = TypeVar("T")

# Index of each loss term in the poison flag (0 = healthy); which network a failing term belongs to.
_TERMS = ("D1", "D2", "G", "G_reconstruction", "G_adv_global", "G_adv_local")
TERM_NETWORK = {"D1": "critic", "D2": "local", "G": "generator", "G_reconstruction": "generator",
                "G_adv_global": "generator", "G_adv_local": "generator"}


class PeerNonFiniteError(NonFiniteLossError):
    """Another rank hit a non-finite loss; raised on every rank so all stop together."""


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialised: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    # ------------------------------------------------------------------ collectives

    def broadcast_module(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers to every rank (start of training: identical replicas)."""
        if not self.active:
            return
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=0)

    def sync_buffers(self, module: nn.Module) -> None:
        """BatchNorm running statistics follow rank 0, as DDP's ``broadcast_buffers`` does."""
        if not self.active:
            return
        with torch.no_grad():
            for b in module.buffers():
                dist.broadcast(b.data, src=0)

    def _flat_size(self, module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters() if p.requires_grad) + 1

    def grad_sync(self, module: nn.Module) -> None:
        """Average the gradients of ``module`` over all ranks (``DualDTrainer``'s ``grad_sync``)."""
        if not self.active:
            return
        params = [p for p in module.parameters() if p.requires_grad]
        flat = torch.zeros(self._flat_size(module), device=self.device, dtype=torch.float32)
        offset = 0
        for p in params:
            n = p.numel()
            if p.grad is not None:
                flat[offset : offset + n].copy_(p.grad.detach().reshape(-1))
            offset += n
        dist.all_reduce(flat)
        code = round(float(flat[-1]))
        if code:
            term = _TERMS[min(code, len(_TERMS)) - 1] if code <= len(_TERMS) else "unknown"
            raise PeerNonFiniteError(term, float("nan"), -1)
        flat /= self.world_size
        offset = 0
        for p in params:
            n = p.numel()
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n

    def poison(self, module: nn.Module, term: str) -> None:
        """Complete the peers' pending :meth:`grad_sync` of ``module`` with the NaN flag set."""
        if not self.active:
            return
        flat = torch.zeros(self._flat_size(module), device=self.device, dtype=torch.float32)
        flat[-1] = float(_TERMS.index(term) + 1) if term in _TERMS else float(len(_TERMS) + 1)
        dist.all_reduce(flat)

    def any_flag(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank (signals: all ranks stop together)."""
        if not self.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def mean_dict(self, values: dict[str, float]) -> dict[str, float]:
        """Average a dict of floats (same keys on every rank) over ranks, for logging."""
        if not self.active or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], device=self.device, dtype=torch.float64)
        dist.all_reduce(t)
        t /= self.world_size
        return dict(zip(keys, t.tolist(), strict=True))

    def gather_objects(self, obj: Any) -> list[Any]:
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.initialised and dist.is_initialized():
            dist.destroy_process_group()
            self.initialised = False


def stop_together(ctx: DistContext, networks: dict[str, nn.Module], exc: NonFiniteLossError) -> None:
    """After ``DualDTrainer.step`` raised ``exc`` on this rank: release the peers waiting in the
    gradient all-reduce of the failing network (they then raise :class:`PeerNonFiniteError`)."""
    if not isinstance(exc, PeerNonFiniteError):
        ctx.poison(networks[TERM_NETWORK.get(exc.term, "generator")], exc.term)


def on_main(ctx: DistContext, fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 and hand its result (or its user-facing error) to every rank."""
    result: Any = None
    error: str | None = None
    if ctx.is_main:
        try:
            result = fn()
        except (ValueError, OSError, RuntimeError) as exc:  # DiscoveryError/PreprocessError are ValueErrors
            error = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
    result, error = ctx.broadcast_object((result, error))
    if error is not None:
        raise TrainingError(error)
    return result


def resolve_device(name: str | None, local_rank: int = 0) -> torch.device:
    """``auto``/empty → CUDA when available else CPU; ``cuda`` under torchrun → ``cuda:LOCAL_RANK``."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but this PyTorch sees no CUDA GPU")
        if name == "cuda":
            return torch.device("cuda", local_rank)
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None


def init_from_env(device_name: str | None, timeout_minutes: float = 30.0) -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment, or run alone.

    NCCL on CUDA devices, gloo on CPU. Each rank drives the GPU of its ``LOCAL_RANK``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world <= 1:
        return DistContext(0, 1, 0, device, False)
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {"backend": backend, "timeout": timedelta(minutes=timeout_minutes)}
    if device.type == "cuda":
        kwargs["device_id"] = device
    dist.init_process_group(**kwargs)
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device, True)
