"""``make bench``'s report: every benchmark's ratios in one Markdown file, each benchmark's own table below.

    python jobs/report_bench.py work/bench        # after jobs/bench_*.py wrote work/bench/bench_*.json

Each benchmark module has ``ratios(results)`` (measure, value, target, met) and ``format_results(results)``;
a benchmark whose JSON is missing is listed as not run. Ratios are measured within one run of a benchmark,
on one machine: compare them, not the absolute seconds, across machines.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import time
from pathlib import Path

__all__ = ["BENCHMARKS", "report", "write_report"]

BENCHMARKS = {
    "bench_train": ("training: Ray Train vs one process", "vidrip.train.bench"),
    "bench_curate": ("curation: Ray Data vs a plain loop", "vidrip.curate.bench"),
    "bench_serve": ("serving: Ray Serve batching, latency, autoscaling", "vidrip.serve.bench"),
    "bench_fingerprint": ("lineage: a data set's cached fingerprint vs its first", "vidrip.data.bench"),
}


def _value(v: float) -> str:
    return f"{v:.3g}"


def _section(body: str) -> str:
    """A benchmark's own Markdown without its title (the section has one), or its text as a code block."""
    return body.split("\n", 1)[1].strip() if body.startswith("# ") else f"```\n{body}\n```"


def report(folder: str | Path) -> str:
    """The Markdown report of the ``bench_*.json`` files in ``folder``."""
    import torch

    folder = Path(folder)
    lines = [
        "# vidrip benchmarks",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')}; {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}",
        "",
        "| benchmark | measure | value | target | met |",
        "|---|---|---:|---|---|",
    ]
    sections = []
    for name, (title, module_name) in BENCHMARKS.items():
        path = folder / f"{name}.json"
        if not path.is_file():
            lines.append(f"| {name} | not run ({path} missing) | | | |")
            continue
        module = importlib.import_module(module_name)
        results = json.loads(path.read_text())
        for r in module.ratios(results):
            met = "-" if r["met"] is None else ("yes" if r["met"] else "**no**")
            lines.append(f"| {name} | {r['measure']} | {_value(r['value'])} | {r['target'] or '-'} | {met} |")
        sections += ["", f"## {title}", "", _section(module.format_results(results).strip())]
    return "\n".join(lines + sections) + "\n"


def write_report(folder: str | Path) -> Path:
    out = Path(folder) / "report.md"
    out.write_text(report(folder))
    return out
