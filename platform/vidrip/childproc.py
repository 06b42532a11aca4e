"""Run a function in a fresh spawned process, with the thread limit a Ray worker holding N CPUs gets.

The benchmarks' single-process baselines run this way, so that the baseline and the Ray workers it is
compared with see the same ``OMP_NUM_THREADS`` (Ray sets it from the CPUs a worker holds; without it
torch and the image libraries would use every core)::

    history = run_in_child(train_one_stage, run_json, threads="1")   # train_one_stage(run_json) -> result
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from queue import Empty

__all__ = ["run_in_child"]


def _child(fn: Callable, arg, queue) -> None:
    queue.put(fn(arg))


def run_in_child(fn: Callable, arg, threads: str | None, what: str = "the single-process run"):
    """``fn(arg)`` in a spawned process with ``OMP_NUM_THREADS=threads`` (unchanged if None); its result.

    ``fn`` must be importable (a module-level function) and its result picklable."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    saved = os.environ.get("OMP_NUM_THREADS")
    if threads:
        os.environ["OMP_NUM_THREADS"] = threads  # inherited by the spawned child at its start
    try:
        child = ctx.Process(target=_child, args=(fn, arg, queue))
        child.start()
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except Empty:
            if not child.is_alive():
                raise RuntimeError(f"{what} failed (exit code {child.exitcode})") from None
    child.join()
    return result
