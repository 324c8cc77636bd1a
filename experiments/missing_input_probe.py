"""Probe (issue 23): how should a withheld input reach G — zeros plus an availability channel ("mask", the
product's ``InputDeclaration.missing``) or a learned per-input constant inside the head ("embedding")?

T1 (required) + optional T1c + optional FLAIR → T2, input dropout 0.5 in both arms (product sampler,
``input_dropout.input_batch``), leave-one-source-out over the shared subjects (experiments/brain_mri_sources.csv).
Kirby21 and Ljubljana-long have no T1c: their folds test the case the issue's first probe failed on (a whole
head without T1c). Each held-out subject is scored with every input subset it has (T1; T1+FLAIR; T1+T1c+FLAIR
where it has a T1c): foreground PSNR in the normalised units of the LOSO runs (the prediction clipped as the
product writes it). Small on purpose (a CPU probe): width-8 UNet, no discriminators, no error head.

    python experiments/missing_input_probe.py --data ../shared/data/brain-mri --steps 400 --seeds 0 \\
        --out experiments/results/missing-input-probe-cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "DualDSynthesis"), str(ROOT / "DualDTraining"), str(ROOT / "experiments")]

import torch  # noqa: E402
from DualDSynthesisLib.model import metrics  # noqa: E402
from DualDSynthesisLib.model.architecture import ArchitectureConfig  # noqa: E402
from DualDSynthesisLib.model.inputs import InputDeclaration  # noqa: E402
from DualDTrainingLib.augment import SourceAugmentation  # noqa: E402
from DualDTrainingLib.dataset import SliceSampler, base_spec, finish_spec, prepare_subject  # noqa: E402
from DualDTrainingLib.discovery import discover  # noqa: E402
from DualDTrainingLib.validation import predict  # noqa: E402
from folds import read_sources  # noqa: E402

INPUTS = InputDeclaration.parse("t1,t1c,flair")
CONTEXT = 1
STACK = 2 * CONTEXT + 1


class EmbeddingInput(torch.nn.Module):
    """G behind a learned stand-in for a withheld input: inside the reference's foreground its slices are a
    learned constant per input and channel (zeros outside, as the background of every input); the availability
    channels are read to know which input is withheld and not passed on."""

    def __init__(self, generator: torch.nn.Module) -> None:
        super().__init__()
        self.generator = generator
        self.optional = [INPUTS.names.index(n) for n in INPUTS.optional]
        self.embedding = torch.nn.Parameter(torch.full((len(self.optional), STACK), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(self.optional)
        images, flags = x[:, :-n], x[:, -n:, :1, :1]
        parts = list(images.split(STACK, 1))
        inside = (parts[0].abs().sum(1, keepdim=True) > 0).to(x.dtype)
        for j, i in enumerate(self.optional):
            given = flags[:, j : j + 1]
            parts[i] = parts[i] * given + (1 - given) * inside * self.embedding[j].view(1, STACK, 1, 1)
        return self.generator(torch.cat(parts, 1))


def build(mode: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    channels = INPUTS.channels(CONTEXT) if mode == "mask" else len(INPUTS) * STACK
    g = ArchitectureConfig(in_channels=channels, g_base_width=8, g_depth=4, g_error_head=False).generator()
    return g if mode == "mask" else EmbeddingInput(g)


def train(mode: str, seed: int, subjects: list, steps: int) -> torch.nn.Module:
    model = build(mode, seed)
    sampler = SliceSampler(subjects, np.random.default_rng(seed), 0.3, True, crop=128, context=CONTEXT,
                           inputs=INPUTS, input_dropout=0.5)
    augment = SourceAugmentation(1.0, seed=seed, inputs=len(INPUTS), passthrough=len(INPUTS.optional))
    opt = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.5, 0.999))
    model.train()
    for _ in range(steps):
        src, tgt = sampler.batch(8)
        loss = (model(augment(src))[:, :1] - tgt).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


def score(model: torch.nn.Module, subject, target) -> dict[str, float]:
    subsets = {"t1": (), "t1+flair": ("flair",), "t1+t1c+flair": ("t1c", "flair")}
    ys, xs = subject.crop
    fg = subject.foreground[:, ys, xs]
    out = {}
    for name, others in subsets.items():
        if not all(o in subject.others for o in others):
            continue
        pred, _ = predict(model, subject.source, torch.device("cpu"), 16, False, CONTEXT,
                          {o: subject.others[o] for o in others}, INPUTS)
        pred = target.normalised_output(pred, subject.target_params)
        out[name] = metrics.psnr(pred[:, ys, xs], subject.target[:, ys, xs], 1.0, fg)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--sources", default=str(ROOT / "experiments" / "brain_mri_sources.csv"))
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--held-out", nargs="*", default=None, help="source names (default: every source)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    sources = read_sources(args.sources)
    found = discover(Path(args.data), "t1,t1c,flair", "t2")
    spec = base_spec("mri", (1.0, 1.0), 16, source_norm="rank", context_slices=CONTEXT)
    t0 = time.time()
    subjects = [prepare_subject(pair, spec) for pair in found.pairs if pair.subject in sources]
    spec = finish_spec(spec, [s.target_params for s in subjects])
    print(f"prepared {len(subjects)} subjects in {time.time() - t0:.0f} s", flush=True)
    results = []
    for held in args.held_out or sorted(set(sources.values())):
        train_set = [s for s in subjects if sources[s.name] != held]
        test_set = [s for s in subjects if sources[s.name] == held]
        for seed in args.seeds:
            for mode in ("mask", "embedding"):
                t1 = time.time()
                model = train(mode, seed, train_set, args.steps)
                for s in test_set:
                    row = {"held_out": held, "subject": s.name, "seed": seed, "mode": mode,
                           "train_seconds": round(time.time() - t1, 1), "psnr": score(model, s, spec.target)}
                    results.append(row)
                    print(json.dumps(row), flush=True)
                Path(args.out).write_text(json.dumps({"steps": args.steps, "results": results}, indent=1) + "\n",
                                          encoding="utf-8")


if __name__ == "__main__":
    main()
