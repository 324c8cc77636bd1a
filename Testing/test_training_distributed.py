"""torchrun on CPU/gloo: identical replicas, the loss goes down, and a NaN on one rank stops every rank."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _training_data import ROOT, TINY_ARCH_FLAGS, cli_env, write_subjects
from DualDSynthesisLib.model.networks import ArchitectureConfig
from DualDTrainingLib.distributed import DistContext, PeerNonFiniteError, stop_together
from DualDTrainingLib.loop import PARAM_DIGEST_ENV
from DualDTrainingLib.step import DualDTrainer, NonFiniteLossError, TrainingConfig

TORCHRUN = ROOT / ".venv" / "bin" / "torchrun"
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not found in .venv")
def test_torchrun_two_ranks_identical_replicas_and_loss_goes_down(tmp_path: Path) -> None:
    data = write_subjects(tmp_path / "data", n=3)
    out, digests = tmp_path / "out", tmp_path / "digests"
    env = cli_env() | {PARAM_DIGEST_ENV: str(digests)}
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "DualDTrainingLib.cli",
           "--data", str(data), "--source", "t1", "--target", "t2", "--variant", "dual_attention",
           "--iterations", "30", "--output", str(out), "--batch-size", "4", "--lr-g", "2e-3", "--val-every", "0",
           "--log-every", "5", "--checkpoint-every", "10", "--device", "cpu", "--no-error-head", *TINY_ARCH_FLAGS]
    proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = sorted(digests.glob("params-rank*.txt"))
    assert [p.name for p in ranks] == ["params-rank0.txt", "params-rank1.txt"]
    assert ranks[0].read_text(encoding="utf-8") == ranks[1].read_text(encoding="utf-8")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    l1 = [r["l1"] for r in records if r["kind"] == "train"]
    # the arithmetic of two ranks is what is tested here: the plain generator (no expected-error head,
    # which is covered elsewhere) must learn. Each l1 is a 5-step mean over both ranks. l1[-1] / l1[0]
    # measured (issue 21): seed 0 (this run) 0.283 native AVX512, 0.286 with torch's and oneDNN's AVX2
    # kernels; seeds 1 and 2 0.688-0.692 and 0.670 (their first l1 is far higher or lower). Kernels move it
    # by < 0.005, seeds by 0.4, so the bound sits above the worst seed (0.69) by 0.16 and still below the
    # ~1 of a generator that does not learn (equal windows of the same data).
    assert len(l1) == 6 and l1[-1] < 0.85 * l1[0], l1
    start = next(r for r in records if r.get("event") == "start")
    assert start["world_size"] == 2
    assert (out / "model-final.safetensors").is_file()
    assert "Traceback" not in proc.stderr


def _nan_worker(rank: int, port: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    ctx = DistContext(rank, 2, rank, torch.device("cpu"), True)
    arch = ArchitectureConfig(g_base_width=4, g_depth=2, d2_base_width=4)
    torch.manual_seed(0)
    trainer = DualDTrainer(arch, TrainingConfig(variant="local"), grad_sync=ctx.grad_sync)
    src, tgt = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    trainer.step(src, tgt)
    if rank == 1:
        src = src.clone()
        src[0, 0, 0, 0] = float("nan")  # only rank 1 sees a NaN: its D2 loss becomes NaN
    try:
        trainer.step(src, tgt)
        results[rank] = "no error"
    except NonFiniteLossError as exc:
        stop_together(ctx, trainer.networks(), exc)
        results[rank] = f"{type(exc).__name__}:{exc.term}"
    finally:
        dist.destroy_process_group()


def test_nan_on_one_rank_stops_both_without_hanging() -> None:
    with mp.Manager() as manager:
        results = manager.dict()
        mp.start_processes(_nan_worker, args=(_free_port(), results), nprocs=2, join=True, start_method="spawn")
        got = dict(results)
    assert got == {1: "NonFiniteLossError:D2", 0: f"{PeerNonFiniteError.__name__}:D2"}
