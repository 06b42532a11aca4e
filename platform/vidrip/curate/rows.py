"""The rows that flow through the curation pipeline, and how a step records its time or its failure.

A row is a plain dict, as Ray Data passes it between steps::

    {"key": "3f2a…-c91d", "path": "/videos/lecture.mp4", "state": "<JSON>"}        # one input video
    {..., "shot": 2, "frames": uint8 array (T, H, W, 3)}                             # one shot / clip

``state`` is JSON (so Ray Data never has to infer a schema for nested metadata): what every step
learned about the row, the seconds each step took, the Ray node it ran on (``nodes``), and, once a step
fails, ``error`` =
``{"step", "reason"}``. A failed row passes through every later step untouched and ends in the
rejects table: a corrupt file is reported, never fatal.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import numpy as np

__all__ = ["EMPTY_FRAMES", "StepRejected", "batch_rows", "get_state", "guarded", "guarded_batch", "rows_batch"]

log = logging.getLogger(__name__)
EMPTY_FRAMES = np.zeros((0, 2, 2, 3), dtype=np.uint8)  # a failed shot keeps its columns, not its pixels


class StepRejected(Exception):
    """An input a step cannot use; the message is the reason recorded in the rejects table."""


def get_state(row: dict) -> dict:
    return json.loads(row["state"])


def _node_id() -> str | None:
    """The Ray node this process runs on; None outside Ray (the benchmark's plain loop)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def _ran(state: dict, step: str, seconds: float, node: str | None) -> None:
    state.setdefault("seconds", {})
    state["seconds"][step] = state["seconds"].get(step, 0.0) + seconds
    if node is not None:
        state.setdefault("nodes", {})[step] = node


def guarded(step: str, row: dict, fn: Callable[[dict, dict], list[dict] | dict]) -> list[dict]:
    """Run ``fn(row, state)`` unless the row failed earlier; time it; turn an exception into a reject.

    ``fn`` returns the output row, or a list of them (a step that splits a video into shots); the
    ``state`` of each output is a dict, which this serialises after adding the step's seconds.
    """
    state = get_state(row)
    if state.get("error") is not None:
        return [row]
    start = time.perf_counter()
    try:
        result = fn(row, state)
        out = result if isinstance(result, list) else [result]
    except Exception as exc:  # every failure of one input becomes its reject row
        reason = str(exc) if isinstance(exc, StepRejected) else f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, StepRejected):
            log.warning("%s: step %s failed: %s", row.get("path"), step, reason, exc_info=True)
        state["error"] = {"step": step, "reason": reason[:500]}
        out = [{**row, "state": state} | ({"frames": EMPTY_FRAMES} if "frames" in row else {})]
    seconds = (time.perf_counter() - start) / max(1, len(out))
    inherited = dict(state.get("seconds", {}))
    node = _node_id()
    for i, r in enumerate(out):
        # earlier steps' seconds stay with the first output only, so summing over a video's rows counts each once
        st = {**r["state"], "seconds": dict(inherited) if i == 0 else {}}
        _ran(st, step, seconds, node)
        r["state"] = json.dumps(st)
    return out


def batch_rows(batch: dict) -> list[dict]:
    """Ray Data's numpy batch (column -> array) as a list of row dicts."""
    n = len(next(iter(batch.values())))
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


def rows_batch(rows: list[dict]) -> dict:
    """Row dicts back to a batch (column -> list); every row must have the same columns."""
    return {k: [r[k] for r in rows] for k in rows[0]}


def guarded_batch(step: str, rows: list[dict], fn: Callable[[list[dict], list[dict]], None]) -> list[dict]:
    """A batched model step: ``fn(rows, states)`` on the rows that have not failed, in one call.

    ``fn`` updates rows and states in place. If the batch raises, each row is retried alone, so one bad
    row becomes one reject and the others go on.
    """
    live = [i for i, r in enumerate(rows) if get_state(r).get("error") is None]
    if not live:
        return rows
    start = time.perf_counter()
    states = [get_state(rows[i]) for i in live]
    try:
        batch = [dict(rows[i]) for i in live]
        fn(batch, states)
    except Exception:  # isolate the row that breaks the batch
        log.warning("step %s failed on a batch of %d; retrying row by row", step, len(live), exc_info=True)
        for i in live:
            rows[i] = guarded(step, rows[i], lambda row, state: (fn([row], [state]), {**row, "state": state})[1])[0]
        return rows
    seconds = (time.perf_counter() - start) / len(live)
    node = _node_id()
    for i, row, state in zip(live, batch, states, strict=True):
        _ran(state, step, seconds, node)
        row["state"] = json.dumps(state)
        rows[i] = row
    return rows
