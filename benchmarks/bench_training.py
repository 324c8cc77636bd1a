"""Training-step benchmark (not a test): step time and slices/s of every variant on a fixed batch.

    .venv/bin/python benchmarks/bench_training.py [--batch 8] [--height 160] [--width 192] [--steps 5]

Default architecture (the shipped ``ArchitectureConfig(g_base_width=8, g_depth=4, d2_base_width=16)``),
random normalised slices, n_critic = 1; CPU always, CUDA too when available (fp32 and bf16 autocast).
The issue's target: a ``dual_attention`` step costs at most 2× a ``unet`` step on the same batch.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "DualDSynthesis"), str(ROOT / "DualDTraining")]

from DualDSynthesisLib.defaults import DEFAULT_ARCHITECTURE  # noqa: E402
from DualDSynthesisLib.networks import ArchitectureConfig  # noqa: E402
from DualDTrainingLib.step import DualDTrainer, TrainingConfig, Variant  # noqa: E402


def bench(arch: ArchitectureConfig, variant: Variant, device: torch.device, batch: int, h: int, w: int, steps: int,
          warmup: int, amp: bool) -> float:
    torch.manual_seed(0)
    trainer = DualDTrainer(arch, TrainingConfig(variant=variant), device, amp=amp)
    src = torch.rand(batch, 1, h, w, device=device)
    tgt = torch.rand(batch, 1, h, w, device=device)
    for _ in range(warmup):
        trainer.step(src, tgt)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.step(src, tgt)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--height", type=int, default=160)
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant (CUDA: ×10)")
    p.add_argument("--cpu-threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--no-cpu", action="store_true", help="skip the CPU runs (e.g. on a GPU server)")
    p.add_argument("--g-base-width", type=int, default=DEFAULT_ARCHITECTURE.g_base_width,
                   help="generator width (default: the shipped model's; 64 = the classic UNet)")
    args = p.parse_args()
    arch = ArchitectureConfig(**{**DEFAULT_ARCHITECTURE.to_dict(), "g_base_width": args.g_base_width})
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    runs: list[tuple[str, torch.device, bool, int]] = []
    if not args.no_cpu:
        runs.append((f"cpu ({torch.get_num_threads()} threads)", torch.device("cpu"), False, args.steps))
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        runs.append((f"cuda fp32 ({name})", torch.device("cuda"), False, args.steps * 10))
        runs.append((f"cuda bf16 ({name})", torch.device("cuda"), True, args.steps * 10))
    print(f"batch {args.batch} of {args.height}×{args.width} slices, architecture {arch.to_dict()}")
    for label, device, amp, steps in runs:
        print(f"\n{label}")
        print(f"{'variant':<16}{'step (ms)':>12}{'slices/s':>12}{'× unet':>10}")
        times = {}
        for variant in Variant:
            times[variant] = bench(arch, variant, device, args.batch, args.height, args.width, steps,
                                   warmup=2 if device.type == "cpu" else 5, amp=amp)
            ratio = times[variant] / times[Variant.UNET]
            print(f"{variant.value:<16}{times[variant] * 1e3:>12.1f}{args.batch / times[variant]:>12.1f}{ratio:>10.2f}",
                  flush=True)
        ratio = times[Variant.DUAL_ATTENTION] / times[Variant.UNET]
        verdict = "meets" if ratio <= 2.0 else "MISSES"
        print(f"dual_attention / unet = {ratio:.2f} ({verdict} the ≤ 2× target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
