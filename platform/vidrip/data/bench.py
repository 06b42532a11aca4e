"""Fingerprint benchmark: a data set's second fingerprint (files unchanged, digests cached by path, size and
mtime) against its first (every file read and hashed), in one run on one machine.

    python jobs/bench_fingerprint.py --config jobs/configs/bench_fingerprint.yaml [files=2000]

A job fingerprints its data once per run it starts (the pipeline's parent, each stage, the sweep): with the
cache only the first reads the bytes. Before each first pass the files' pages are dropped from the page cache
(``posix_fadvise(DONTNEED)``: the files were just written here, a data set a job meets usually was not).
Target: the second at most 5 % of the first.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
from pydantic import Field

from vidrip.config import StrictConfig
from vidrip.data.fingerprint import DigestCache, fingerprint_tree

__all__ = ["BenchFingerprintConfig", "format_results", "ratios", "run_bench"]

TARGET = 0.05


class BenchFingerprintConfig(StrictConfig):
    """How many small files, of what size, and where."""

    workdir: str = "work/bench"
    files: int = Field(default=2000, ge=1)
    file_bytes: int = Field(default=65536, ge=1, description="64 KiB: a small image")
    repeats: int = Field(default=3, ge=1, description="each pass timed this many times; the fastest counts")
    seed: int = 0


def _write_files(root: Path, cfg: BenchFingerprintConfig) -> None:
    rng = np.random.default_rng(cfg.seed)
    for i in range(cfg.files):
        folder = root / f"{i % 20:02d}"  # a few folders, as a data set has
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:05d}.bin").write_bytes(rng.bytes(cfg.file_bytes))


def _drop_from_page_cache(root: Path) -> None:
    for path in root.rglob("*.bin"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run_bench(cfg: BenchFingerprintConfig) -> dict:
    """Time the first (uncached) and the second (cached) fingerprint of the same files; write the results."""
    workdir = Path(cfg.workdir).resolve()
    root = workdir / "fingerprint_files"
    if not root.is_dir() or sum(1 for _ in root.rglob("*.bin")) != cfg.files:
        _write_files(root, cfg)
    cache_file = workdir / "fingerprint_digests.json"
    first, second = [], []
    for _ in range(cfg.repeats):
        cache_file.unlink(missing_ok=True)
        _drop_from_page_cache(root)
        started = time.perf_counter()
        cold = fingerprint_tree(root, cache=DigestCache(cache_file))
        first.append(time.perf_counter() - started)
        started = time.perf_counter()
        warm = fingerprint_tree(root, cache=DigestCache(cache_file))  # a new cache object, as a later job has
        second.append(time.perf_counter() - started)
        if warm != cold:
            raise RuntimeError("the cached fingerprint differs from the uncached one")
    out = {
        "config": cfg.model_dump(),
        "first_s": round(min(first), 6),
        "second_s": round(min(second), 6),
        "second_vs_first": round(min(second) / min(first), 4),
    }
    (workdir / "bench_fingerprint.json").write_text(json.dumps(out, indent=1))
    return out


def ratios(out: dict) -> list[dict]:
    value = out["second_vs_first"]
    return [{"measure": "second fingerprint / first", "value": value, "target": f"<= {TARGET}", "met": value <= TARGET}]


def format_results(out: dict) -> str:
    cfg = out["config"]
    return (
        f"{cfg['files']} files of {cfg['file_bytes']} bytes: first fingerprint {out['first_s']:.3f} s, "
        f"second {out['second_s']:.3f} s ({out['second_vs_first']:.1%} of the first)"
    )
