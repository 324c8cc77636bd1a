"""Leave-one-source-out folds: train on every source but one, test on the one left out.

A "source" is a site/scanner/data set (BraTS, TCGA, a hospital); subjects of one source share its
look, so a subject-level split would leak the test site into training. Each source is the test fold
exactly once; the folds' training sets are the other sources' subjects. Experiment code (``loso.py``,
``loso_data.py``): the product never splits by source.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Fold:
    held_out: str  # the source left out
    train: tuple[str, ...]  # subject ids
    test: tuple[str, ...]


def read_sources(path: str | Path) -> dict[str, str]:
    """subject → source from a CSV with columns ``subject,source`` (one row per subject)."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"subject", "source"} <= set(reader.fieldnames):
            raise ValueError(f"{path.name} needs the columns subject,source")
        out: dict[str, str] = {}
        for row in reader:
            subject, source = row["subject"].strip(), row["source"].strip()
            if not subject or not source:
                raise ValueError(f"{path.name}: a row has an empty subject or source")
            if subject in out:
                raise ValueError(f"{path.name}: subject {subject} is listed twice")
            out[subject] = source
    return out


def loso_folds(sources: Mapping[str, str]) -> list[Fold]:
    """One fold per source (sorted by name), subjects in sorted order; needs at least two sources."""
    names = sorted(set(sources.values()))
    if len(names) < 2:
        raise ValueError(f"leave-one-source-out needs at least two sources, got {len(names)}")
    folds = []
    for held in names:
        test = tuple(sorted(s for s, src in sources.items() if src == held))
        train = tuple(sorted(s for s, src in sources.items() if src != held))
        folds.append(Fold(held, train, test))
    return folds
