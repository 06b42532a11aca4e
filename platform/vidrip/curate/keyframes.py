"""Keyframes: the few frames of a shot that the heavy models (detection, OCR) look at.

One keyframe per ``1/fps`` seconds of the shot (at the centre of each window), at least one per shot.
Every clip frame is then judged by its nearest keyframe, so detection and OCR cost scales with
``fps`` (about 1 per second or fewer), not with the clip frame rate.

    Keyframes(KeyframesConfig(fps=1.0), clip_fps=2)(shot_row)   # adds state["keyframes"]
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from vidrip.config import StrictConfig
from vidrip.curate.rows import guarded

__all__ = ["Keyframes", "KeyframesConfig", "keyframe_indices", "nearest_keyframe"]


class KeyframesConfig(StrictConfig):
    fps: float = Field(default=1.0, gt=0, le=5, description="keyframes per second of video")


def keyframe_indices(num_frames: int, clip_fps: float, fps: float) -> list[int]:
    """Indices (into a shot's clip frames) of its keyframes: window centres, one per ``1/fps`` s."""
    if num_frames <= 0:
        return []
    window = max(1.0, clip_fps / fps)
    n = max(1, int(np.ceil(num_frames / window)))
    centres = (np.arange(n) * window + (window - 1) / 2).round().astype(int)
    return sorted({int(min(c, num_frames - 1)) for c in centres})


def nearest_keyframe(num_frames: int, keyframes: list[int]) -> np.ndarray:
    """For each clip frame, the position (into ``keyframes``) of the nearest keyframe."""
    k = np.asarray(keyframes)
    return np.abs(np.arange(num_frames)[:, None] - k[None, :]).argmin(axis=1)


class Keyframes:
    """Ray Data step (``map``) on shot rows: ``state["keyframes"]`` = indices into the shot's frames."""

    def __init__(self, cfg: KeyframesConfig, clip_fps: float):
        self.cfg = cfg
        self.clip_fps = clip_fps

    def __call__(self, row: dict) -> dict:
        def step(row: dict, state: dict) -> dict:
            state["keyframes"] = keyframe_indices(len(row["frames"]), self.clip_fps, self.cfg.fps)
            return {**row, "state": state}

        return guarded("keyframes", row, step)[0]
