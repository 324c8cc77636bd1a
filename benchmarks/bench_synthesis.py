"""Benchmark of the synthesis engine (not a test): time and peak memory.

    .venv/bin/python benchmarks/bench_synthesis.py                # all cases, CPU
    .venv/bin/python benchmarks/bench_synthesis.py --device cuda  # on a GPU
    .venv/bin/python benchmarks/bench_synthesis.py --case small --repeat 5

Cases, each in a fresh child process so peak memory is its own:
- ``small``: a 240×240×155 T1 (../shared/data BraTS-GLI-00001-000 if present, else a phantom):
  ``SynthesisEngine.run`` with the heatmap, end to end (file read excluded; preprocessing, G, D2 and
  restore included; first run, best and median of ``--repeat``), seconds per slice, peak RSS; then its
  parts: host preprocessing (``prepare_volume``), the device path (``device_prepare``, on CUDA), and
  the networks alone (G + D2 over the volume's foreground slices, host↔device copies included).
- ``large``: issue 21's memory case, ``duald-synthesize`` on a 512×512×300 phantom (a body-sized ellipsoid,
  0.8 mm in-plane, written as int16 NIfTI) with ``--heatmap``: the whole command in a fresh child process
  (reading, synthesis, writing both files), its peak RSS (``getrusage(RUSAGE_CHILDREN)``), its wall time and
  the engine's own time (target ≤ 1.6 GB peak RSS on the CPU).
- ``startup``: ``duald-synthesize --help`` (best of 5; target ≤ 0.3 s) and the whole command on the small
  case's volume with ``--heatmap`` (best of ``--repeat``): wall time minus the engine's reported time, i.e.
  start-up, imports, model loading, reading and writing (target ≤ 1.5 s on the CPU).
- ``cohort``: issue 24's user case, ``duald-synthesize FOLDER -o OUT --heatmap HEAT`` on 10 copies of the small
  case's volume in one command (model loading and, on CUDA, its initialisation paid once): wall time, the engines'
  summed time, and what each volume after the first adds.
- ``pix2pix``: issue 12's yardstick, a pix2pix ``unet_256`` generator (8 down-samplings, 64 base
  filters, ~54.4 M parameters, written out below as pix2pix defines it) alone on as many 256×256 slices
  as the small case has, batch 8, same device; ``all`` prints the ratio small / pix2pix (target ≤ 0.45).

The model is the shipped one when it exists, else a random-weight bundle of the default
architecture (same compute). Peak RSS is the kernel's high-water mark (VmHWM), reset just before
the run, so it counts the input volume, the model and everything the engine allocates.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

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


class UnetSkipConnectionBlock(nn.Module):
    """pix2pix's block (junyanz/pytorch-CycleGAN-and-pix2pix, models/networks.py), BatchNorm, as published:
    down = [LeakyReLU(0.2), Conv 4×4/2, BN], up = [ReLU, ConvTranspose 4×4/2, BN], skip by concatenation."""

    def __init__(self, outer_nc: int, inner_nc: int, input_nc: int | None = None, submodule: nn.Module | None = None,
                 outermost: bool = False, innermost: bool = False, use_dropout: bool = False) -> None:
        super().__init__()
        self.outermost = outermost
        input_nc = outer_nc if input_nc is None else input_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=False)
        downrelu, downnorm = nn.LeakyReLU(0.2, True), nn.BatchNorm2d(inner_nc)
        uprelu, upnorm = nn.ReLU(True), nn.BatchNorm2d(outer_nc)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            model = [downconv, submodule, uprelu, upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1, bias=False)
            model = [downrelu, downconv, uprelu, upconv, upnorm]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1, bias=False)
            model = [downrelu, downconv, downnorm, submodule, uprelu, upconv, upnorm]
            model += [nn.Dropout(0.5)] if use_dropout else []
        self.model = nn.Sequential(*model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


def unet_256(input_nc: int = 1, output_nc: int = 1, num_downs: int = 8, ngf: int = 64) -> nn.Module:
    """pix2pix's ``UnetGenerator(input_nc, output_nc, 8, 64, BatchNorm2d, use_dropout=True)``."""
    block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, innermost=True)
    for _ in range(num_downs - 5):
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=block, use_dropout=True)
    block = UnetSkipConnectionBlock(ngf * 4, ngf * 8, submodule=block)
    block = UnetSkipConnectionBlock(ngf * 2, ngf * 4, submodule=block)
    block = UnetSkipConnectionBlock(ngf, ngf * 2, submodule=block)
    return UnetSkipConnectionBlock(output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t)
    return out


def run_pix2pix(args: argparse.Namespace) -> dict:
    """unet_256 alone on ``args.slices`` random 256×256 slices, batch 8, inference mode (as the engine runs G)."""
    from DualDSynthesisLib.imaging.devices import autocast, resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    fmt = torch.channels_last if device.type == "cuda" and not args.no_channels_last else torch.contiguous_format
    g = unet_256().to(device, memory_format=fmt).eval()
    params = sum(p.numel() for p in g.parameters())
    x = torch.rand(args.slices, 1, 256, 256)

    def run() -> None:
        with torch.inference_mode(), autocast(device):
            for i in range(0, len(x), 8):
                batch = x[i : i + 8].to(device).contiguous(memory_format=fmt)
                g(batch).float().cpu()

    times = _timed(run, device, args.pix2pix_repeat)
    return {"case": "pix2pix", "params": params, "slices": args.slices, "device": str(device),
            "torch_threads": torch.get_num_threads(), "first_s": round(times[0], 3), "best_s": round(min(times), 3)}


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
    from DualDSynthesisLib.imaging.defaults import DEFAULT_ARCHITECTURE, DEFAULT_MODEL
    from DualDSynthesisLib.inference.engine import SynthesisEngine

    path = model or (DEFAULT_MODEL if DEFAULT_MODEL.exists() else None)
    label = str(path)
    if path is None:
        from bundles import make_bundle

        path = make_bundle(Path(tempfile.mkdtemp()) / "default_arch.safetensors", DEFAULT_ARCHITECTURE)
        label = f"random weights, {DEFAULT_ARCHITECTURE}"
    return SynthesisEngine(path, device=device, batch_size=batch_size, channels_last=channels_last), label


def _noop(*_args) -> None:
    return None


def _small_source(args: argparse.Namespace):
    """(image, name) of the small case: the BraTS T1 when present (and 155 slices asked), else the phantom."""
    import SimpleITK as sitk

    if BRATS_T1.exists() and not args.phantom and args.slices == 155:
        return sitk.ReadImage(str(BRATS_T1)), BRATS_T1.name
    return _phantom((args.slices, 240, 240), (1.0, 1.0, 1.0)), "phantom"


def _children_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def _command(args: argparse.Namespace, model: Path, *extra: str) -> tuple[float, str]:
    """(wall seconds, stdout) of ``duald-synthesize *extra`` in a child process running this checkout's code;
    its CPU seconds (user + sys, what a single-threaded start takes on an idle machine) in ``_command.cpu``."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "DualDSynthesis"), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "DualDSynthesisLib.cli.synthesize", *extra]
    if "--help" not in extra:
        cmd += ["--model", str(model), "--device", args.device, "--overwrite", "-q"]
        cmd += ["--batch-size", str(args.batch_size)] if args.batch_size else []
    t, cpu = time.perf_counter(), _children_cpu()
    done = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", env=env, check=False)
    wall = time.perf_counter() - t
    _command.cpu = _children_cpu() - cpu
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr[-1500:]}")
    return wall, done.stdout


def _engine_seconds(stdout: str) -> float:
    """The engine's own time from the command's summary line ``in → out (4.2 s on cpu)``."""
    found = re.findall(r"\(([0-9.]+) s on ", stdout)
    if not found:
        raise RuntimeError(f"no engine time in the command's output: {stdout[-500:]}")
    return float(found[-1])


def _model_path(model: Path | None) -> Path:
    from DualDSynthesisLib.imaging.defaults import DEFAULT_ARCHITECTURE, DEFAULT_MODEL

    path = model or (DEFAULT_MODEL if DEFAULT_MODEL.exists() else None)
    if path is None:
        from bundles import make_bundle

        path = make_bundle(Path(tempfile.mkdtemp()) / "default_arch.safetensors", DEFAULT_ARCHITECTURE)
    return path


def run_command_case(args: argparse.Namespace) -> dict:
    """``large`` and ``startup``: the command line as a user runs it, in child processes of this one."""
    import SimpleITK as sitk

    model = _model_path(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        outputs = ["-o", str(folder / "synthetic.nii.gz"), "--heatmap", str(folder / "heatmap.nii.gz")]
        if args.case == "cohort":
            return _cohort(args, model, folder)
        if args.case == "large":
            source = folder / "large.nii.gz"
            sitk.WriteImage(_phantom((300, 512, 512), (0.8, 0.8, 1.0)), str(source))
            wall, stdout = _command(args, model, str(source), *outputs)
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the command is the only child
            return {"case": "large", "size": [512, 512, 300], "source": "phantom", "model": str(model),
                    "device": args.device, "command_s": round(wall, 2), "engine_s": _engine_seconds(stdout),
                    "peak_rss_mb": round(peak)}
        helps, help_cpu = [], []
        for _ in range(5):
            helps.append(_command(args, model, "--help")[0])
            help_cpu.append(_command.cpu)
        image, name = _small_source(args)
        source = folder / "small.nii.gz"
        sitk.WriteImage(image, str(source))
        runs = [_command(args, model, str(source), *outputs) for _ in range(args.repeat)]
        overhead = [wall - _engine_seconds(stdout) for wall, stdout in runs]
        return {"case": "startup", "help_s": round(min(helps), 3), "help_median_s": round(statistics.median(helps), 3),
                "help_cpu_s": round(min(help_cpu), 3),
                "source": name, "size": list(image.GetSize()), "device": args.device,
                "command_s": round(min(w for w, _ in runs), 2), "engine_s": min(_engine_seconds(o) for _, o in runs),
                "outside_engine_s": round(min(overhead), 2), "outside_median_s": round(statistics.median(overhead), 2)}


def _cohort(args: argparse.Namespace, model: Path, folder: Path, n: int = 10) -> dict:
    import SimpleITK as sitk

    image, name = _small_source(args)
    cohort = folder / "cohort"
    cohort.mkdir()
    for i in range(n):
        sitk.WriteImage(image, str(cohort / f"volume{i:02d}.nii.gz"))
    one, one_out = _command(args, model, str(cohort / "volume00.nii.gz"), "-o", str(folder / "one.nii.gz"),
                            "--heatmap", str(folder / "one_heat.nii.gz"))
    wall, stdout = _command(args, model, str(cohort), "-o", str(folder / "out"), "--heatmap", str(folder / "heat"))
    engines = [float(t) for t in re.findall(r"\(([0-9.]+) s on ", stdout)]
    if len(engines) != n:
        raise RuntimeError(f"the cohort command reported {len(engines)} engine times, not {n}: {stdout[-800:]}")
    return {"case": "cohort", "source": name, "size": list(image.GetSize()), "device": args.device, "volumes": n,
            "one_command_s": round(one, 2), "one_engine_s": _engine_seconds(one_out), "command_s": round(wall, 2),
            "engines_s": round(sum(engines), 2), "per_extra_volume_s": round((wall - one) / (n - 1), 2)}


def run_case(args: argparse.Namespace) -> dict:
    import numpy as np
    from DualDSynthesisLib.imaging.preprocess import prepare_volume

    if args.case == "pix2pix":
        return run_pix2pix(args)
    if args.case in ("large", "startup", "cohort"):
        return run_command_case(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    engine, label = _engine(args.model, args.device, args.batch_size, not args.no_channels_last)
    image, source = _small_source(args)
    reset = _reset_peak()
    results = []

    def run() -> None:
        results.append(engine.run(image, heatmap=True))

    times = _timed(run, engine.device, args.repeat)
    result = results[-1]
    slices = image.GetSize()[2]
    out = {
        "case": args.case, "size": list(image.GetSize()), "source": source, "model": label,
        "device": result.device, "torch_threads": torch.get_num_threads(),
        "first_s": round(times[0], 3), "best_s": round(min(times), 3),
        "median_s": round(statistics.median(times), 3),
        "s_per_slice": round(min(times) / slices, 4), "peak_rss_mb": round(_peak_rss_mb()),
        "peak_reset": reset, "warnings": result.warnings,
    }
    # the parts of one run, each best of --repeat
    prep = _timed(lambda: prepare_volume(image, engine.spec, role="source"), torch.device("cpu"), args.repeat)
    out["prepare_host_s"] = round(min(prep), 4)
    if engine.device.type == "cuda":
        from DualDSynthesisLib.imaging.device_prepare import prepare_volume_on_device

        dev = _timed(lambda: prepare_volume_on_device(image, engine.spec, engine.device), engine.device,
                     args.repeat)
        out["prepare_device_s"] = round(min(dev), 4)
    prepared = prepare_volume(image, engine.spec, role="source")
    indices = np.flatnonzero(prepared.foreground.any(axis=(1, 2)))
    box = engine._crop_box(prepared.foreground, engine.heatmap_source)
    nets = _timed(lambda: engine._run_networks(prepared.slices, indices, box, engine.heatmap_source, [], _noop,
                                               _noop), engine.device, args.repeat)
    out.update(networks_s=round(min(nets), 4), networks_slices=int(indices.size),
               crop=[box[1] - box[0], box[3] - box[2]])
    return out


def _report(r: dict) -> None:
    if r["case"] == "large":
        print(f"large 512×512×300 phantom, duald-synthesize --heatmap on {r['device']} (whole command, fresh process): "
              f"peak RSS {r['peak_rss_mb']} MB (target ≤ 1600), {r['command_s']} s, of which the engine "
              f"{r['engine_s']} s")
        return
    if r["case"] == "startup":
        print(f"duald-synthesize --help: best {r['help_s']} s, median {r['help_median_s']} s, CPU {r['help_cpu_s']} s "
              "(target ≤ 0.3 s; on a loaded machine the CPU time is the idle wall time)")
        size = "×".join(str(v) for v in r["size"])
        print(f"  whole command on {size} ({r['source']}) with --heatmap on {r['device']}: best {r['command_s']} s, "
              f"engine {r['engine_s']} s; outside the engine best {r['outside_engine_s']} s, median "
              f"{r['outside_median_s']} s (target ≤ 1.5 s)")
        return
    if r["case"] == "cohort":
        size = "×".join(str(v) for v in r["size"])
        print(f"duald-synthesize --heatmap on {r['device']}, {size} ({r['source']}): one volume {r['one_command_s']} s "
              f"(engine {r['one_engine_s']} s); a cohort of {r['volumes']} in one command {r['command_s']} s "
              f"(engines {r['engines_s']} s), each volume after the first {r['per_extra_volume_s']} s")
        return
    if r["case"] == "pix2pix":
        print(f"pix2pix unet_256 ({r['params'] / 1e6:.2f} M parameters) alone on {r['slices']} slices of 256×256, "
              f"batch 8, on {r['device']}, {r['torch_threads']} threads: first {r['first_s']} s, best {r['best_s']} s")
        return
    size = "×".join(str(v) for v in r["size"])
    print(f"{r['case']} {size} ({r['source']}) on {r['device']}, {r['torch_threads']} threads, model: {r['model']}")
    print(f"  synthetic + heatmap end to end (file read excluded): first {r['first_s']} s, best {r['best_s']} s, "
          f"median {r['median_s']} s, {r['s_per_slice']} s/slice; peak RSS {r['peak_rss_mb']} MB"
          + ("" if r["peak_reset"] else " (process lifetime peak)"))
    if "networks_s" in r:
        line = f"  parts: preprocessing on the host {r['prepare_host_s']} s"
        if "prepare_device_s" in r:
            line += f", on the device (device_prepare) {r['prepare_device_s']} s"
        print(line + f"; networks only (G + D2, {r['networks_slices']} slices cropped to "
              f"{r['crop'][0]}×{r['crop'][1]}, copies included) {r['networks_s']} s")
    for w in r["warnings"]:
        print(f"  warning: {w}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=["small", "large", "startup", "cohort", "pix2pix", "all"], default="all")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: the engine's choice)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pix2pix-repeat", type=int, default=2)
    parser.add_argument("--slices", type=int, default=155,
                        help="slices of the small case and of the pix2pix run (not 155: a phantom)")
    parser.add_argument("--skip-large", action="store_true", help="'all' without the large case")
    parser.add_argument("--phantom", action="store_true", help="use the phantom even when real data exists")
    parser.add_argument("--no-channels-last", action="store_true")
    args = parser.parse_args()
    if args.case != "all":
        result = run_case(args)
        _report(result)  # readable in a log; the JSON line stays the last one (what "all" reads)
        print(json.dumps(result))
        return
    results = {}
    for case in ("small", "startup", "pix2pix") if args.skip_large else ("small", "large", "startup", "pix2pix"):
        passed = [a for a in sys.argv[1:] if a not in ("--case", "all", "--case=all", "--skip-large")]
        cmd = [sys.executable, __file__, *passed, "--case", case]
        out = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", check=False)
        if out.returncode:
            print(f"{case}: failed\n{out.stderr[-2000:]}")
            continue
        results[case] = json.loads(out.stdout.strip().splitlines()[-1])
        _report(results[case])
    if "small" in results and "pix2pix" in results:
        ratio = results["small"]["best_s"] / results["pix2pix"]["best_s"]
        print(f"end-to-end synthesis / pix2pix unet_256 alone = {ratio:.3f} "
              f"({'meets' if ratio <= 0.45 else 'MISSES'} the ≤ 0.45 target)")


if __name__ == "__main__":
    main()
