"""What the scripts that re-score a ``loso.py confirm`` run share: its fold jobs, and their command line."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path


def fold_jobs(run: Path) -> dict[str, dict]:
    """The run's jobs that have held-out subjects and a fold bundle (not the final model), by fold."""
    results = json.loads((run / "results.json").read_text(encoding="utf-8"))
    return {j["fold"]: j for j in results if not j.get("failed") and j.get("test") and j.get("bundle")}


def rescoring_parser(doc: str | None, several: bool = False) -> argparse.ArgumentParser:
    """``RUN [RUN ...] --prepared NPZ --out JSON``: the arguments of every re-scoring script."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if several:
        p.add_argument("runs", type=Path, nargs="+", help="loso.py confirm output folders of one recipe, other seeds")
    else:
        p.add_argument("run", type=Path, help="a loso.py confirm output folder (results.json, bundles/)")
    p.add_argument("--prepared", required=True, help="loso.py prepare's arrays (.npz)")
    p.add_argument("--out", required=True, type=Path, help="per-subject results (JSON)")
    return p


def held_out_scans(run: Path, prepared: str) -> Iterator[tuple[dict, object, object, object]]:
    """Every held-out scan of the run as ``(job, bundle, subject, held)``: the fold's model (``bundle``) on its
    unseen subject on the CPU, clipped as the product writes it (``loso.held_out``), with the subject as
    ``loso_data`` prepares it."""
    import loso
    import loso_data
    import torch
    from DualDSynthesisLib.imaging.bundle import load_bundle

    for job in fold_jobs(run).values():
        bundle = load_bundle(run / job["bundle"])
        data = loso_data.load_prepared(prepared, list(job["test"]))
        for name in job["test"]:
            subject = loso_data.training_subject(data[name], job["recipe_settings"]["source_norm"])
            yield job, bundle, subject, loso.held_out(
                bundle.generator, subject, bundle.metadata.preprocessing.context_slices, torch.device("cpu"),
                bundle.metadata.preprocessing.target)
