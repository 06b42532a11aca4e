"""A sweep's results as a table (printed, and saved as CSV) and a plot (PNG: validation loss per searched field)."""

from __future__ import annotations

import csv
from pathlib import Path

__all__ = ["plot_sweep", "results_table"]


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def results_table(rows, keys: list[str], csv_path: Path) -> str:
    """Write ``csv_path`` and return the same table as aligned text, best validation loss first."""
    header = ["trial", *keys, "best val loss", "steps", "status"]
    ordered = sorted(rows, key=lambda r: (r.best_eval_loss is None, r.best_eval_loss or 0.0))
    body = [
        [
            r.trial,
            *(_fmt(r.params.get(k)) for k in keys),
            "-" if r.best_eval_loss is None else f"{r.best_eval_loss:.4f}",
            str(r.steps),
            r.status,
        ]
        for r in ordered
    ]
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(body)
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in [header, *body])


def plot_sweep(rows, keys: list[str], png_path: Path) -> Path:
    """One panel per searched field: each trial's best validation loss against its value (log scale when
    the values span more than a factor of 10); failed trials are left out, early-stopped ones hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.6), squeeze=False)
    scored = [r for r in rows if r.best_eval_loss is not None]
    for ax, key in zip(axes[0], keys, strict=True):
        for status, face in (("finished", "C0"), ("stopped early", "none")):
            pts = [(r.params[key], r.best_eval_loss) for r in scored if r.status == status and key in r.params]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.scatter(xs, ys, facecolors=face, edgecolors="C0", label=status)
        values = [r.params[key] for r in scored if isinstance(r.params.get(key), (int, float))]
        if values and min(values) > 0 and max(values) / min(values) > 10:
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel("best validation loss")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    fig.suptitle("LoRA sweep (stage 3)")
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
