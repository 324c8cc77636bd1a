"""Benchmark of the synthesis engine (not a test): time and peak memory.

    .venv/bin/python benchmarks/bench_synthesis.py                # both cases, CPU
    .venv/bin/python benchmarks/bench_synthesis.py --device cuda  # on a GPU
    .venv/bin/python benchmarks/bench_synthesis.py --case small --repeat 5

Cases, each in a fresh child process so peak memory is its own:
- ``small``: a 240×240×155 T1 (../shared/data BraTS-GLI-00001-000 if present, else a phantom):
  synthetic + heatmap wall time (first run and best of ``--repeat``), seconds per slice, peak RSS.
- ``large``: a 512×512×300 phantom (a body-sized ellipsoid): time and peak RSS.

The model is the shipped one when it exists, else a random-weight bundle of the default
architecture (same compute). Peak RSS is the kernel's high-water mark (VmHWM), reset just before
the run, so it counts the input volume, the model and everything the engine allocates.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "DualDSynthesis"), str(ROOT / "Testing")]
BRATS_T1 = ROOT.parent / "shared" / "data" / "brain-mri" / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-t1n.nii.gz"


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _phantom(shape: tuple[int, int, int], spacing: tuple[float, float, float]):
    """int16 ellipsoid 'head' with smooth texture and a dark core, built slice by slice (few temporaries)."""
    import numpy as np
    import SimpleITK as sitk

    k, h, w = shape
    arr = np.zeros(shape, np.int16)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    for z in range(k):
        dz = (z - k / 2) / (0.42 * k)
        r2 = ((yy - h / 2) / (0.40 * h)) ** 2 + ((xx - w / 2) / (0.33 * w)) ** 2 + dz * dz
        tissue = (r2 < 1) * (600 + 250 * np.sin(xx / 9 + z / 7) * np.cos(yy / 11)) * (1 - 0.5 * (r2 < 0.1))
        arr[z] = tissue.astype(np.int16)
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing(spacing)
    return image


def _engine(model: Path | None, device: str, batch_size: int | None, channels_last: bool):
    from DualDSynthesisLib.defaults import DEFAULT_ARCHITECTURE, DEFAULT_MODEL
    from DualDSynthesisLib.engine import SynthesisEngine

    path = model or (DEFAULT_MODEL if DEFAULT_MODEL.exists() else None)
    label = str(path)
    if path is None:
        from bundles import make_bundle

        path = make_bundle(Path(tempfile.mkdtemp()) / "default_arch.safetensors", DEFAULT_ARCHITECTURE)
        label = f"random weights, {DEFAULT_ARCHITECTURE}"
    return SynthesisEngine(path, device=device, batch_size=batch_size, channels_last=channels_last), label


def run_case(args: argparse.Namespace) -> dict:
    import SimpleITK as sitk
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    engine, label = _engine(args.model, args.device, args.batch_size, not args.no_channels_last)
    if args.case == "small":
        if BRATS_T1.exists() and not args.phantom:
            image, source = sitk.ReadImage(str(BRATS_T1)), BRATS_T1.name
        else:
            image, source = _phantom((155, 240, 240), (1.0, 1.0, 1.0)), "phantom"
    else:
        image, source = _phantom((300, 512, 512), (0.8, 0.8, 1.0)), "phantom"
    reset = _reset_peak()
    times = []
    for _ in range(args.repeat if args.case == "small" else 1):
        t = time.perf_counter()
        result = engine.run(image, heatmap=True)
        if engine.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    slices = image.GetSize()[2]
    return {
        "case": args.case, "size": list(image.GetSize()), "source": source, "model": label,
        "device": result.device, "torch_threads": torch.get_num_threads(),
        "first_s": round(times[0], 3), "best_s": round(min(times), 3),
        "s_per_slice": round(min(times) / slices, 4), "peak_rss_mb": round(_peak_rss_mb()),
        "peak_reset": reset, "warnings": result.warnings,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=["small", "large", "all"], default="all")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: the engine's choice)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--phantom", action="store_true", help="use the phantom even when real data exists")
    parser.add_argument("--no-channels-last", action="store_true")
    args = parser.parse_args()
    if args.case != "all":
        print(json.dumps(run_case(args)))
        return
    for case in ("small", "large"):
        passed = [a for a in sys.argv[1:] if a not in ("--case", "all", "--case=all")]
        cmd = [sys.executable, __file__, *passed, "--case", case]
        out = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", check=False)
        if out.returncode:
            print(f"{case}: failed\n{out.stderr[-2000:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        size = "×".join(str(v) for v in r["size"])
        print(f"{case} {size} ({r['source']}) on {r['device']}, {r['torch_threads']} threads, model: {r['model']}")
        print(f"  synthetic + heatmap: first {r['first_s']} s, best {r['best_s']} s, "
              f"{r['s_per_slice']} s/slice; peak RSS {r['peak_rss_mb']} MB"
              + ("" if r["peak_reset"] else " (process lifetime peak)"))
        for w in r["warnings"]:
            print(f"  warning: {w}")


if __name__ == "__main__":
    main()
