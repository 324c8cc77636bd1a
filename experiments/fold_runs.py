"""What the scripts that re-score a ``loso.py confirm`` run share: its fold jobs, and their command line."""

from __future__ import annotations

import argparse
import json
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
