"""Turn the ``duald-evaluate --json`` reports of the ablation into the Markdown table of docs/ablation.md.

    python experiments/ablation_table.py /tmp/duald-ablation

Reads ``eval-<variant>.json`` for the five variants (and ``eval-ct.json`` when present) and prints one
row per variant: PSNR / MAE / SSIM over the brain (foreground) and inside the tumour labels, and the
heatmap AUROC beside the gradient-magnitude baseline. With one test subject the std is 0 and is left out.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

VARIANTS = ("unet", "global", "local", "dual", "dual_attention")


def _cell(summary: dict, region: str, metric: str, fmt: str) -> str:
    m = summary.get(region, {}).get(metric)
    if not m or m["n"] == 0:
        return "–"
    mean = float(m["mean"])
    return f"{mean:{fmt}}" if m["n"] == 1 else f"{mean:{fmt}} ({float(m['std']):{fmt}})"


def table(runs: Path) -> str:
    head = (
        "| variant | brain PSNR (dB) | brain MAE | brain SSIM | tumour PSNR (dB) | tumour MAE | tumour SSIM "
        "| heatmap AUROC | gradient AUROC |\n|---|---|---|---|---|---|---|---|---|"
    )
    rows = [head]
    for v in VARIANTS:
        path = runs / f"eval-{v}.json"
        if not path.is_file():
            rows.append(f"| {v} | (missing: {path.name}) |||||||| ")
            continue
        s = json.loads(path.read_text(encoding="utf-8"))["summary"]
        rows.append(
            f"| {v} | {_cell(s, 'foreground', 'psnr', '.2f')} | {_cell(s, 'foreground', 'mae', '.4f')} "
            f"| {_cell(s, 'foreground', 'ssim', '.3f')} | {_cell(s, 'tumour', 'psnr', '.2f')} "
            f"| {_cell(s, 'tumour', 'mae', '.4f')} | {_cell(s, 'tumour', 'ssim', '.3f')} "
            f"| {_cell(s, 'heatmap', 'auroc', '.3f')} | {_cell(s, 'heatmap', 'gradient_baseline_auroc', '.3f')} |"
        )
    ct = runs / "eval-ct.json"
    if ct.is_file():
        s = json.loads(ct.read_text(encoding="utf-8"))["summary"]
        rows.append(
            "\nMRI→CT template demo (HU): body MAE "
            f"{_cell(s, 'body', 'mae', '.1f')} HU, body PSNR {_cell(s, 'body', 'psnr', '.2f')} dB, "
            f"whole-volume PSNR {_cell(s, 'whole', 'psnr', '.2f')} dB (data range 4095 HU), "
            f"body SSIM {_cell(s, 'body', 'ssim', '.3f')}"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print(table(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/duald-ablation")))
