"""Where one whole-volume synthesis spends its time (not a test): issue 24's "0.4 s, of which ..." question.

    .venv/bin/python benchmarks/profile_synthesis.py --out /tmp/prof                 # CPU
    .venv/bin/python benchmarks/profile_synthesis.py --device cuda --out "$OUT/profile"

The small case of ``bench_synthesis.py`` (the 240×240×155 BraTS T1, else the phantom; the shipped model),
``SynthesisEngine.run(image, heatmap=True)`` after ``--warmup`` untimed runs, then:

- ``spans.txt``: wall seconds of the engine's steps (validation + preparation, the networks with the
  statistics beside them, the restore to the input's grid, the rest), best of ``--repeat`` runs; each step is
  also a ``record_function`` range, so it shows in the torch profile;
- ``torch_profile.txt`` and ``torch_trace.json.gz``: one run under ``torch.profiler`` (CPU, and CUDA when on a
  GPU): the operator table by self CPU time and by device time, and the Chrome trace (chrome://tracing);
- ``cprofile.txt``: one run under ``cProfile`` (host Python: numpy, SimpleITK, the engine's own code), the top
  40 by cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import gzip
import io
import pstats
import shutil
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_synthesis as bench  # (its path insert makes DualDSynthesisLib importable)

# (label, object path, attribute): the engine's steps, wrapped for the spans and the profiler's ranges
STEPS = [
    ("prepare input (validation, skull decision, preparation)", "engine", "_prepare_input"),
    ("network step (networks + statistics + sanity check)", "engine", "_network_step"),
    ("  networks (G + heatmap, copies included)", "engine", "_run_networks"),
    ("restore outputs to the input grid", "module", "restore_outputs"),
]


def _wrap(spans: dict[str, list[float]], label: str, fn: Callable) -> Callable:
    def wrapped(*args, **kwargs):
        t = time.perf_counter()
        with torch.profiler.record_function(label.strip()):
            try:
                return fn(*args, **kwargs)
            finally:
                spans[label].append(time.perf_counter() - t)
    return wrapped


def instrument(engine) -> dict[str, list[float]]:
    """Wrap the engine's steps (on this instance and the engine module) so each run records its spans."""
    from DualDSynthesisLib.inference import engine as engine_module

    spans: dict[str, list[float]] = defaultdict(list)
    for label, where, name in STEPS:
        owner = engine if where == "engine" else engine_module
        setattr(owner, name, _wrap(spans, label, getattr(owner, name)))
    return spans


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the reports (created)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--slices", type=int, default=155, help="slices of the volume (not 155: the phantom)")
    p.add_argument("--phantom", action="store_true", help="the phantom even when the BraTS T1 exists")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    engine, label = bench._engine(args.model, args.device, None, True)
    image, source = bench._small_source(args)
    device = engine.device
    for _ in range(args.warmup):
        engine.run(image, heatmap=True)
    spans = instrument(engine)
    totals = bench._timed(lambda: engine.run(image, heatmap=True), device, args.repeat)
    lines = [f"{source} {'×'.join(map(str, image.GetSize()))} on {device}, model {label}, torch {torch.__version__}",
             f"whole run: best {min(totals):.4f} s, median {statistics.median(totals):.4f} s ({args.repeat} runs)",
             f"{'step':<58}{'best s':>9}{'median s':>10}"]
    for name, values in spans.items():
        lines.append(f"{name:<58}{min(values):>9.4f}{statistics.median(values):>10.4f}")
    outside = [t - sum(v[i] for k, v in spans.items() if not k.startswith("  ")) for i, t in enumerate(totals)]
    lines.append(f"{'other (request checks, masking, the result object)':<58}{min(outside):>9.4f}"
                 f"{statistics.median(outside):>10.4f}")
    (args.out / "spans.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))

    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        engine.run(image, heatmap=True)
        bench._sync(device)
    table = prof.key_averages()
    report = ["by self CPU time", table.table(sort_by="self_cpu_time_total", row_limit=40)]
    if device.type == "cuda":
        report += ["by device time", table.table(sort_by="self_device_time_total", row_limit=40)]
    (args.out / "torch_profile.txt").write_text("\n".join(report), encoding="utf-8")
    trace = args.out / "torch_trace.json"
    prof.export_chrome_trace(str(trace))
    with trace.open("rb") as raw, gzip.open(f"{trace}.gz", "wb", compresslevel=6) as packed:
        shutil.copyfileobj(raw, packed)
    trace.unlink()

    profiler = cProfile.Profile()
    profiler.runcall(engine.run, image, heatmap=True)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(40)
    (args.out / "cprofile.txt").write_text(text.getvalue(), encoding="utf-8")
    print(f"reports in {args.out}: spans.txt, torch_profile.txt, torch_trace.json.gz, cprofile.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
