"""Training-step benchmark (not a test): the hardware floor and every variant's ``DualDTrainer.step``.

    .venv/bin/python benchmarks/bench_training.py                 # CPU: batch 8 of 160×192, shipped width
    .venv/bin/python benchmarks/bench_training.py --device cuda   # GPU: issue 12's setting, bf16 autocast

Prints, in one run, median milliseconds per step of:

- **floor**: the generator alone, forward + L1 backward + ``Adam(fused=True)``, channels_last and bf16
  autocast on CUDA, on a batch already on the device: what one G update costs at best;
- **each variant** (``unet`` … ``dual_attention``): ``DualDTrainer.step`` on batches drawn by
  :class:`DeviceSliceSampler` from synthetic subjects resident on the device (draw + step timed), and
  ``unet`` once more with the host :class:`SliceSampler` (draw, copy to the device, step) for comparison;
- the ratios the issue sets targets for: ``unet / floor`` (≤ 1.3) and ``dual_attention / unet`` (≤ 2);
- with ``--also "gp_every=4;gp_every=4,gp_batch=4,d1_precision=fp32"``: one more ``dual_attention`` row per
  set of D1 settings (``duald-train``'s ``--gp-every``, ``--gp-batch``, ``--d1-precision``, ``--d1-layout``),
  each with its ratio to ``unet``: issue 24's levers measured in one process.

Defaults by device: CPU as before this benchmark learnt the floor (batch 8 of 160×192, the shipped
``g_base_width`` 8, fp32, 5 timed steps); CUDA as issue 12 measured (batch 16 of 256×240, 32-wide
generator, bf16 autocast, 8 subjects × 155 slices resident, 60 timed steps). Steps are timed in chunks
between ``synchronize`` calls; the median over chunks is reported, after warm-up steps.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "DualDSynthesis"), str(ROOT / "DualDTraining")]

from DualDSynthesisLib.imaging.defaults import DEFAULT_ARCHITECTURE  # noqa: E402
from DualDSynthesisLib.model.intensity import ScaleParams  # noqa: E402
from DualDSynthesisLib.model.networks import ArchitectureConfig  # noqa: E402
from DualDTrainingLib.dataset import PreparedSubject, SliceSampler  # noqa: E402
from DualDTrainingLib.device_sampler import DeviceSliceSampler  # noqa: E402
from DualDTrainingLib.step import DualDTrainer, TrainingConfig, Variant  # noqa: E402
from DualDTrainingLib.training_config import D1_LAYOUTS, D1_PRECISIONS  # noqa: E402

CPU_DEFAULTS = {"batch": 8, "height": 160, "width": 192, "g_base_width": DEFAULT_ARCHITECTURE.g_base_width,
                "steps": 5, "warmup": 2, "chunk": 1, "subjects": 2, "slices": 24}
CUDA_DEFAULTS = {"batch": 16, "height": 256, "width": 240, "g_base_width": 32,
                 "steps": 60, "warmup": 15, "chunk": 10, "subjects": 8, "slices": 155}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(step: Callable[[], object], device: torch.device, steps: int, warmup: int, chunk: int) -> float:
    """Median over chunks of ``chunk`` steps of the mean step time, in ms, after ``warmup`` steps."""
    for _ in range(warmup):
        step()
    _sync(device)
    per_step = []
    for _ in range(max(1, steps // chunk)):
        t = time.perf_counter()
        for _ in range(chunk):
            step()
        _sync(device)
        per_step.append((time.perf_counter() - t) / chunk * 1e3)
    return statistics.median(per_step)


def synthetic_subjects(n: int, k: int, h: int, w: int, seed: int = 0) -> list[PreparedSubject]:
    """``n`` random 'heads' (an ellipse of foreground with a small tumour): the step time does not
    depend on the values, only the sampler's weights do, and these have the real data's shape."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    ellipse = ((yy - h / 2) / (0.4 * h)) ** 2 + ((xx - w / 2) / (0.33 * w)) ** 2 < 1
    fg = np.broadcast_to(ellipse, (k, h, w)).copy()
    fg[: k // 10] = False  # a few empty slices, as above the head
    tumour = np.zeros_like(fg)
    tumour[k // 2 : k // 2 + max(1, k // 8), h // 2 - 8 : h // 2 + 8, w // 2 - 8 : w // 2 + 8] = True
    out = []
    for i in range(n):
        src = (rng.random((k, h, w), dtype=np.float32) * fg).astype(np.float32)
        tgt = (rng.random((k, h, w), dtype=np.float32) * fg).astype(np.float32)
        unit = ScaleParams(1.0)
        out.append(PreparedSubject(f"synthetic{i}", src, tgt, fg, tumour, unit, unit, context=None))  # type: ignore[arg-type]
    return out


def floor_step(arch: ArchitectureConfig, device: torch.device, batch: int, h: int, w: int,
               amp: bool) -> Callable[[], object]:
    """One G update at its best: fused Adam, autocast, data already on the device, channels_last on CUDA
    (on the CPU, oneDNN's blocked layouts make the default layout the faster one)."""
    torch.manual_seed(0)
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    g = arch.generator().to(device, memory_format=fmt).train()
    try:
        opt = torch.optim.Adam(g.parameters(), 2e-4, (0.5, 0.999), fused=True)
    except RuntimeError:  # a device without the fused kernel: the default implementation
        opt = torch.optim.Adam(g.parameters(), 2e-4, (0.5, 0.999))
    src = torch.rand(batch, arch.in_channels, h, w, device=device).contiguous(memory_format=fmt)
    tgt = torch.rand(batch, 1, h, w, device=device).contiguous(memory_format=fmt)
    cast = torch.autocast("cuda", dtype=torch.bfloat16) if amp else nullcontext()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with cast:
            loss = (g(src).float() - tgt).abs().mean()
        loss.backward()
        opt.step()

    return step


def trainer_step(arch: ArchitectureConfig, variant: Variant, device: torch.device, amp: bool,
                 draw: Callable[[], tuple[torch.Tensor, torch.Tensor]], gp_every: int = 1, gp_batch: int = 0,
                 d1_precision: str = "auto", d1_layout: str = "auto") -> Callable[[], object]:
    """``DualDTrainer.step`` as ``duald-train`` runs it in one process: finiteness checked on the device,
    read only every 10 steps (``--log-every``'s default), so no host sync per step."""
    torch.manual_seed(0)
    trainer = DualDTrainer(arch, TrainingConfig(variant=variant, gp_every=gp_every, gp_batch=gp_batch), device,
                           amp=amp, defer_checks=True, d1_precision=d1_precision, d1_layout=d1_layout)

    def step() -> object:
        terms = trainer.step(*draw())
        if trainer.step_count % 10 == 0:
            trainer.check_finite()
        return terms

    return step


def parse_d1_settings(text: str) -> dict[str, int | str]:
    """``"gp_every=4,d1_precision=bf16"`` → ``{"gp_every": 4, "d1_precision": "bf16"}`` (names checked)."""
    known = {"gp_every": int, "gp_batch": int, "d1_precision": str, "d1_layout": str}
    settings: dict[str, int | str] = {}
    for item in text.split(","):
        name, _, value = item.strip().partition("=")
        if name not in known or not value:
            raise ValueError(f"{item.strip()!r} is not NAME=VALUE with NAME one of {', '.join(known)}")
        settings[name] = known[name](value)
    return settings


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    p.add_argument("--batch", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--g-base-width", type=int, help="generator width (CPU: the shipped model's; CUDA: 32)")
    p.add_argument("--steps", type=int, help="timed steps per row")
    p.add_argument("--warmup", type=int, help="untimed steps before each row")
    p.add_argument("--chunk", type=int, help="steps per timed chunk (median over chunks)")
    p.add_argument("--subjects", type=int, help="synthetic subjects resident in the sampler")
    p.add_argument("--slices", type=int, help="slices per synthetic subject")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--gp-every", type=int, default=1, help="lazy gradient penalty of D1 (duald-train --gp-every)")
    p.add_argument("--gp-batch", type=int, default=0, help="penalty on a sub-batch (duald-train --gp-batch)")
    p.add_argument("--d1-precision", default="auto", choices=D1_PRECISIONS, help="duald-train --d1-precision")
    p.add_argument("--d1-layout", default="auto", choices=D1_LAYOUTS, help="duald-train --d1-layout")
    p.add_argument("--also", default="", help="';'-separated sets of D1 settings (k=v,...) for extra "
                   "dual_attention rows, e.g. 'gp_every=4;gp_every=4,gp_batch=4'")
    p.add_argument("--variants", default=",".join(v.value for v in Variant), help="comma-separated variants")
    p.add_argument("--cpu-threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda asked for, but torch sees no CUDA device", file=sys.stderr)
        return 2
    for key, value in (CUDA_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        variants = [Variant(v.strip()) for v in args.variants.split(",") if v.strip()]
    except ValueError as exc:
        print(f"--variants: {exc}", file=sys.stderr)
        return 2
    try:
        extra = [parse_d1_settings(text) for text in args.also.split(";") if text.strip()]
    except ValueError as exc:
        print(f"--also: {exc}", file=sys.stderr)
        return 2
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    amp = device.type == "cuda" and not args.fp32
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        name = f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    else:
        name = f"cpu ({torch.get_num_threads()} threads), torch {torch.__version__}"
    arch = ArchitectureConfig(**{**DEFAULT_ARCHITECTURE.to_dict(), "g_base_width": args.g_base_width})
    b, h, w = args.batch, args.height, args.width
    timing = {"device": device, "steps": args.steps, "warmup": args.warmup, "chunk": min(args.chunk, args.steps)}
    print(f"{name}\nbatch {b} of {h}×{w} slices, {'bf16 autocast' if amp else 'fp32'}, architecture {arch.to_dict()}")
    print(f"{args.steps} timed steps after {args.warmup} warm-up steps, median of chunks of {timing['chunk']}")
    d1 = {"gp_every": args.gp_every, "gp_batch": args.gp_batch, "d1_precision": args.d1_precision,
          "d1_layout": args.d1_layout}
    print("D1: " + ", ".join(f"{k} {v}" for k, v in d1.items()))

    t0 = time.perf_counter()
    subjects = synthetic_subjects(args.subjects, args.slices, h, w)
    sampler = DeviceSliceSampler(subjects, device, seed=0)
    host = SliceSampler(subjects, np.random.default_rng(0))
    del subjects
    _sync(device)
    print(f"{len(sampler)} synthetic slices resident on {device} ({sampler.source.dtype}), "
          f"set up in {time.perf_counter() - t0:.1f} s")
    if device.type == "cuda":  # the sampler's promise: a batch is drawn without waiting for the GPU
        sampler.batch(b)
        torch.cuda.synchronize(device)
        torch.cuda.set_sync_debug_mode("error")
        try:
            sampler.batch(b)
            syncs = "no"
        except RuntimeError as exc:
            syncs = f"YES ({str(exc).splitlines()[0]})"
        finally:
            torch.cuda.set_sync_debug_mode("default")
        print(f"DeviceSliceSampler.batch synchronises with the host: {syncs}")
    print()

    def on_device() -> tuple[torch.Tensor, torch.Tensor]:
        return sampler.batch(b)

    def from_host() -> tuple[torch.Tensor, torch.Tensor]:
        src, tgt = host.batch(b)
        if device.type == "cuda":
            src, tgt = src.pin_memory(), tgt.pin_memory()
        return src.to(device, non_blocking=True), tgt.to(device, non_blocking=True)

    print(f"{'what':<58}{'ms/step':>10}{'slices/s':>10}{'× floor':>9}")
    times: dict[str, float] = {}

    def row(label: str, ms: float) -> None:
        times[label] = ms
        print(f"{label:<58}{ms:>10.1f}{b / ms * 1e3:>10.0f}{ms / times['floor']:>9.2f}", flush=True)

    row("floor", median_ms(floor_step(arch, device, b, h, w, amp), **timing))
    for variant in variants:
        row(variant.value, median_ms(trainer_step(arch, variant, device, amp, on_device, **d1), **timing))
    for settings in extra:
        label = "dual_attention " + " ".join(f"{k}={v}" for k, v in settings.items())
        row(label, median_ms(trainer_step(arch, Variant.DUAL_ATTENTION, device, amp, on_device, **{**d1, **settings}),
                             **timing))
        if "unet" in times:
            print(f"    {label} / unet = {times[label] / times['unet']:.2f}")
    if Variant.UNET in variants:
        row("unet (host SliceSampler)", median_ms(trainer_step(arch, Variant.UNET, device, amp, from_host), **timing))
    print()
    if Variant.UNET in variants:
        r = times["unet"] / times["floor"]
        print(f"unet / floor = {r:.2f} ({'meets' if r <= 1.3 else 'MISSES'} the ≤ 1.3 target)")
        if Variant.DUAL_ATTENTION in variants:
            r = times["dual_attention"] / times["unet"]
            print(f"dual_attention / unet = {r:.2f} ({'meets' if r <= 2.0 else 'MISSES'} the ≤ 2 target)")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
