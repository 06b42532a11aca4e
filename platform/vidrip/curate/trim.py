"""Temporal trimming: keep the runs of frames that show tissue, drop the rest with a reason.

Every clip frame takes the label of its nearest keyframe (``ok``, ``no tissue``, ``presenter fills
the view``). Leading and trailing frames without tissue are cut, as are runs inside a shot; each run
of ``ok`` frames at least ``min_seconds`` long becomes a clip (split every ``max_seconds``). What is
dropped is recorded as ``state["drops"]``: ``{"step", "reason", "start", "end"}`` in seconds; the shot's
frame and text counts as ``state["shot_stats"]`` (both on its first output row only).

A shot with no clip still leaves one row (``state["clip"] = None``) so the driver knows it is done.

    rows = Trim(TrimConfig(), clip_fps=2)(shot_row)   # ds.flat_map(Trim, ...)
"""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from vidrip.config import StrictConfig
from vidrip.curate.keyframes import nearest_keyframe
from vidrip.curate.rows import EMPTY_FRAMES, guarded

__all__ = ["Trim", "TrimConfig", "label_runs"]


class TrimConfig(StrictConfig):
    min_seconds: float = Field(default=2.0, gt=0, description="shorter runs of tissue frames are dropped")
    max_seconds: float = Field(default=30.0, gt=0, description="longer runs are split into clips")

    @model_validator(mode="after")
    def _check(self) -> TrimConfig:
        if self.max_seconds < self.min_seconds:
            raise ValueError(f"max_seconds {self.max_seconds} < min_seconds {self.min_seconds}")
        return self


def label_runs(labels: list[str]) -> list[tuple[int, int, str]]:
    """Maximal runs ``(start, end, label)`` (end exclusive) of equal labels."""
    runs, start = [], 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start]:
            runs.append((start, i, labels[start]))
            start = i
    return runs


class Trim:
    """Ray Data step (``flat_map``): one shot row in, one row per clip out (or one row saying none)."""

    def __init__(self, cfg: TrimConfig, clip_fps: float):
        self.cfg = cfg
        self.clip_fps = clip_fps

    def _span(self, state: dict, a: int, b: int) -> tuple[float, float]:
        times = state["frame_times"]
        return times[a], (times[b] if b < len(times) else state["shot"]["end"])

    def __call__(self, row: dict) -> list[dict]:
        def step(row: dict, state: dict) -> list[dict]:
            keys, dets = state["keyframes"], state["detections"]
            near = nearest_keyframe(len(row["frames"]), keys)
            labels = [dets[k]["label"] for k in near]
            min_n = max(1, round(self.cfg.min_seconds * self.clip_fps))
            max_n = max(min_n, round(self.cfg.max_seconds * self.clip_fps))
            clips, drops = [], []
            for a, b, label in label_runs(labels):
                start, end = self._span(state, a, b)
                if label != "ok":
                    drops.append({"step": "detect", "reason": label, "start": start, "end": end})
                elif b - a < min_n:
                    drops.append(
                        {
                            "step": "trim",
                            "reason": f"tissue run shorter than {self.cfg.min_seconds:g} s",
                            "start": start,
                            "end": end,
                        }
                    )
                else:
                    clips += [(s, min(b, s + max_n)) for s in range(a, b, max_n) if min(b, s + max_n) - s >= min_n]
                    tail = (b - a) % max_n
                    if (b - a) > max_n and 0 < tail < min_n:
                        s0, e0 = self._span(state, b - tail, b)
                        drops.append(
                            {"step": "trim", "reason": "tail shorter than min_seconds", "start": s0, "end": e0}
                        )
            per_shot = ("detections", "keyframes", "frame_times", "text_boxes_before", "text_boxes_after")
            base = {k: v for k, v in state.items() if k not in per_shot}
            base["drops"] = drops
            base["shot_stats"] = {
                "decoded": state["shot"]["decoded"],
                "clip_frames": len(labels),
                "keyframes": len(keys),
                "keyframes_ok": sum(d["label"] == "ok" for d in dets),
                "text_boxes_before": state.get("text_boxes_before", 0),
                "text_boxes_after": state.get("text_boxes_after", 0),
            }
            base["clips_in_shot"] = len(clips)
            if not clips:
                return {**row, "frames": EMPTY_FRAMES, "state": {**base, "clip": None}}
            out = []
            for j, (a, b) in enumerate(clips):
                start, end = self._span(state, a, b)
                kf = [i for i, k in enumerate(keys) if a <= k < b and dets[i]["label"] == "ok"]
                kf = kf or sorted({int(near[f]) for f in range(a, b)})
                clip_state = {
                    **base,
                    "drops": drops if j == 0 else [],
                    "shot_stats": base["shot_stats"] if j == 0 else {},
                    "clip": {
                        "index": j,
                        "start": round(start, 3),
                        "end": round(end, 3),
                        "num_frames": b - a,
                        "tissue_boxes": [dets[i]["tissue_box"] for i in kf if dets[i]["tissue_box"]],
                    },
                    "transcript": [s for s in state["transcript"] if s["end"] > start and s["start"] < end],
                }
                out.append({**row, "frames": np.ascontiguousarray(row["frames"][a:b]), "state": clip_state})
            return out

        return guarded("trim", row, step)
