"""Device choice and mixed precision for inference (pure torch)."""

from __future__ import annotations

import contextlib
import re

import torch

from ..core.errors import DualDError

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


class DeviceError(DualDError):
    """A device that does not exist or is not available; one sentence for the user."""


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` → the first CUDA GPU, then Apple MPS, then the CPU; a named device must exist."""
    text = str(name).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", 0)
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not _mps_available():
            raise DeviceError("the Apple MPS device was requested but this PyTorch cannot use it")
        return torch.device("mps")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match is None:
        raise DeviceError(f"unknown device {name!r}; choose one of {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        raise DeviceError(f"device {text} was requested but this PyTorch sees no CUDA GPU")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise DeviceError(f"device {text} was requested but only {torch.cuda.device_count()} CUDA GPU(s) exist")
    return torch.device("cuda", index)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on GPUs that support it, else fp16; the CPU and MPS run in float32."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_cached_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def auto_batch_size(device: torch.device, slice_pixels: int, bytes_per_pixel: int) -> int:
    """Slices per batch: activations of about 128 MB on the CPU (larger batches gain nothing there and
    make cancelling coarser), a quarter of the free memory on a GPU."""
    per_slice = max(1, slice_pixels * bytes_per_pixel)
    budget = 128 * 2**20
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        budget = free // 4
    elif device.type == "mps":
        budget = 1024 * 2**20
    return int(max(1, min(64, budget // per_slice)))
