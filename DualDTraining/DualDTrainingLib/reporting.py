"""Watching a run: progress (tqdm in a terminal, ``<filter-progress>`` in Slicer), JSON lines,
TensorBoard scalars and PNG sample grids. Only rank 0 creates a :class:`Reporter`.

Files in the output folder:
- ``metrics.jsonl``: one JSON object per line, ``{"kind": "train", "step": ..., losses...}`` every
  ``--log-every`` steps and ``{"kind": "validation", "step": ..., metrics...}`` per validation, plus
  ``{"kind": "event", ...}`` lines (start, resume, stop, non-finite loss);
- ``tensorboard/``: the same scalars as TensorBoard event files (``tensorboard --logdir OUTPUT``);
- ``samples/step-NNNNNNN.png``: rows of source | real target | synthetic | heatmap (``1 − M`` from
  D2, red = hard for the generator; for variants without D2 the absolute error), intensities of the
  first three columns shown over the normalised range [0, 1].
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from DualDSynthesisLib.imaging.figures import caption_strip, hot_rgb


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no inf/nan; keep the lines parseable by strict readers
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def say(message: str, slicer: bool) -> None:
    """One log line where duald-train's go: stdout in Slicer (a CLI module's stderr means failure), else stderr."""
    print(message, file=sys.stdout if slicer else sys.stderr, flush=True)


class Progress:
    """A tqdm bar on stderr, or Slicer's ``<filter-progress>`` lines on stdout (``slicer=True``)."""

    def __init__(self, total: int, initial: int, slicer: bool, enabled: bool = True) -> None:
        self.total, self.slicer, self.enabled = max(total, 1), slicer, enabled
        self._bar = None
        self._last_fraction = -1.0
        if not enabled:
            return
        if slicer:
            print("<filter-start><filter-name>DualDTraining</filter-name>"
                  "<filter-comment>training</filter-comment></filter-start>", flush=True)
            self.update(initial, {})
        else:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr)

    def update(self, step: int, losses: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.n = step
            if losses:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items() if k in ("g", "l1", "d1", "d2")},
                                      refresh=False)
            self._bar.refresh()
        else:
            fraction = min(step / self.total, 1.0)
            if fraction - self._last_fraction >= 0.005 or fraction >= 1.0:
                self._last_fraction = fraction
                print(f"<filter-progress>{fraction:.4f}</filter-progress>", flush=True)

    def write(self, message: str) -> None:
        """A log line that does not break the bar (stdout in Slicer, where stderr means failure)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            say(message, self.slicer)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.slicer and self.enabled:
            print("<filter-end><filter-name>DualDTraining</filter-name></filter-end>", flush=True)
            self.enabled = False


class Reporter:
    """Appends JSON lines and TensorBoard scalars; writes sample grids."""

    def __init__(self, output: Path, tensorboard: bool = True) -> None:
        self.output = output
        self._jsonl: TextIO = (output / "metrics.jsonl").open("a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(output / "tensorboard"))
            except ImportError:  # tensorboard is a declared dependency; still, never fail a run for it
                self._tb = None

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        record = {"kind": kind, "step": int(step), "time": round(time.time(), 3), **values}
        self._jsonl.write(json.dumps(_jsonable(record)) + "\n")
        self._jsonl.flush()
        if self._tb is not None and kind in ("train", "validation"):
            prefix = "train" if kind == "train" else "val"
            for key, value in values.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                    self._tb.add_scalar(f"{prefix}/{key}", value, step)

    def image(self, tag: str, rgb: np.ndarray, step: int) -> None:
        if self._tb is not None:
            self._tb.add_image(tag, rgb, step, dataformats="HWC")

    def flush(self) -> None:
        self._jsonl.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


# ----------------------------------------------------------------------------- sample grid


def _grey(x: np.ndarray) -> np.ndarray:
    g = (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.stack([g, g, g], axis=-1)


def sample_grid(rows: Sequence[tuple[np.ndarray, ...]], captions: Sequence[str] | None = None,
                gap: int = 2) -> np.ndarray:
    """RGB uint8 [H, W, 3]: one row per slice; columns source | real | synthetic in grey, then each map
    (values in [0, 1]) in the heat colour map; ``captions`` (one per column) label the columns on top."""
    tiles = []
    for src, real, fake, *maps in rows:
        cols = [_grey(src), _grey(real), _grey(fake), *((hot_rgb(m) * 255.0 + 0.5).astype(np.uint8) for m in maps)]
        h = cols[0].shape[0]
        sep = np.full((h, gap, 3), 40, np.uint8)
        row = [cols[0]]
        for c in cols[1:]:
            row += [sep, c]
        tiles.append(np.concatenate(row, axis=1))
    width = tiles[0].shape[1]
    out = [tiles[0]]
    for t in tiles[1:]:
        out += [np.full((gap, width, 3), 40, np.uint8), t]
    if captions is not None:
        if len(captions) != len(rows[0]):
            raise ValueError(f"{len(captions)} captions for {len(rows[0])} columns")
        out.insert(0, caption_strip(captions, [c.shape[1] for c in rows[0]], gap))
    return np.concatenate(out, axis=0)
