"""Shots: decode a video once, find its shot boundaries with PySceneDetect, and split it into shot rows.

Frames are decoded with decord at most ``max_side`` pixels on the long side (decode-time resize), on
two time grids that share frames: the clip grid (``clip_fps``, the frames clips are made of) and the
detection grid (``analysis_multiple`` x ``clip_fps``, what the shot detector sees, downscaled to
``detect_width``). ``min_scene_seconds`` is converted to detector frames, so low-fps input keeps its
short shots (PySceneDetect's default of 15 frames misses a 3 s shot at 5 fps).

Each output row is one shot: its clip frames, their times, and the narration that overlaps it.

    shots = Shots(ShotsConfig(), clip_fps=2)     # a Ray Data actor: ds.flat_map(Shots, ...)
    for shot_row in shots(video_row): ...
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from vidrip.config import StrictConfig
from vidrip.curate.rows import EMPTY_FRAMES, StepRejected, guarded

__all__ = ["Shots", "ShotsConfig", "decode_grid", "detect_cuts"]


class ShotsConfig(StrictConfig):
    """How a video is decoded and cut into shots."""

    detector: Literal["content", "histogram", "hash", "adaptive"] = "content"
    threshold: float | None = Field(default=None, gt=0, description="detector threshold; None = its default")
    min_scene_seconds: float = Field(default=1.0, gt=0)
    analysis_multiple: int = Field(default=2, ge=1, description="detector frames per clip frame")
    detect_width: int = Field(default=160, ge=32)
    max_side: int = Field(default=512, ge=64, description="frames are decoded at most this long side")
    chunk_frames: int = Field(default=64, ge=1)


def _detector(cfg: ShotsConfig, fps: float):
    import scenedetect

    kinds = {
        "content": scenedetect.ContentDetector,
        "histogram": scenedetect.HistogramDetector,
        "hash": scenedetect.HashDetector,
        "adaptive": scenedetect.AdaptiveDetector,
    }
    kwargs = {"min_scene_len": max(1, round(cfg.min_scene_seconds * fps))}
    if cfg.threshold is not None:
        kwargs["adaptive_threshold" if cfg.detector == "adaptive" else "threshold"] = cfg.threshold
    return kinds[cfg.detector](**kwargs)


def decode_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) scaled so the long side is at most ``max_side``, both even."""
    scale = min(1.0, max_side / max(width, height))
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def decode_grid(video: dict, clip_fps: float, cfg: ShotsConfig) -> tuple[np.ndarray, np.ndarray]:
    """Native frame indices of the clip grid and of the detector grid (a frame may repeat on slow input)."""
    fps, total, duration = video["fps"], video["num_frames"], video["duration"]

    def grid(rate: float) -> np.ndarray:
        n = max(1, int(np.floor(duration * rate + 1e-9)))
        return np.minimum(np.round(np.arange(n) / rate * fps).astype(np.int64), total - 1)

    return grid(clip_fps), grid(clip_fps * cfg.analysis_multiple)


def detect_cuts(small_frames_bgr, fps: float, cfg: ShotsConfig) -> list[int]:
    """Positions (into ``small_frames_bgr``) where a new shot starts, from the PySceneDetect detector."""
    from scenedetect import FrameTimecode

    fps = float(fps)
    det = _detector(cfg, fps)
    cuts: list[int] = []
    last = None
    for i, frame in enumerate(small_frames_bgr):
        last = FrameTimecode(i, fps)
        cuts += [tc.frame_num for tc in det.process_frame(last, frame)]
    if last is not None:
        cuts += [tc.frame_num for tc in det.post_process(last)]
    return sorted({c for c in cuts if 0 < c < len(small_frames_bgr)})


class Shots:
    """Ray Data step (``flat_map``): one video row in, one row per shot out (with its clip frames)."""

    def __init__(self, cfg: ShotsConfig, clip_fps: float):
        self.cfg = cfg
        self.clip_fps = clip_fps

    def _decode(self, path: str, video: dict, clip_idx: np.ndarray, detect_idx: np.ndarray):
        """Clip frames (RGB) and small detector frames (BGR), each native frame decoded once."""
        import cv2
        import decord

        w, h = decode_size(video["width"], video["height"], self.cfg.max_side)
        try:
            vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1, width=w, height=h)
        except (decord.DECORDError, RuntimeError) as exc:
            raise StepRejected(f"unreadable video stream ({str(exc).splitlines()[0][:200]})") from None
        size = (self.cfg.detect_width, max(2, round(self.cfg.detect_width * h / w)))
        wanted_clip, wanted_small = set(clip_idx.tolist()), set(detect_idx.tolist())
        full, small = {}, {}
        order = np.unique(np.concatenate([clip_idx, detect_idx]))
        for start in range(0, len(order), self.cfg.chunk_frames):
            chunk = order[start : start + self.cfg.chunk_frames].tolist()
            try:
                batch = vr.get_batch(chunk).asnumpy()
            except (decord.DECORDError, RuntimeError) as exc:
                raise StepRejected(
                    f"corrupt or truncated video stream: decoding failed near frame {chunk[0]} "
                    f"({str(exc).splitlines()[0][:200]})"
                ) from None
            for i, frame in zip(chunk, batch, strict=True):
                if i in wanted_clip:
                    full[i] = frame
                if i in wanted_small:
                    # area-resample the RGB frame, then flip channels on the small copy (cheaper than the reverse)
                    small[i] = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)[..., ::-1]
        return np.stack([full[i] for i in clip_idx.tolist()]), [small[i] for i in detect_idx.tolist()]

    def __call__(self, row: dict) -> list[dict]:
        def step(row: dict, state: dict) -> list[dict]:
            video = state["video"]
            clip_idx, detect_idx = decode_grid(video, self.clip_fps, self.cfg)
            frames, small = self._decode(row["path"], video, clip_idx, detect_idx)
            cuts = detect_cuts(small, self.clip_fps * self.cfg.analysis_multiple, self.cfg)
            bounds = [0.0, *(float(detect_idx[c]) / video["fps"] for c in cuts), float(video["duration"])]
            times = clip_idx / video["fps"]
            shot_of = np.searchsorted(np.asarray(bounds[1:-1]), times, side="right")
            detect_shot = np.searchsorted(np.asarray(bounds[1:-1]), detect_idx / video["fps"], side="right")
            transcript = state.pop("transcript", [])
            out = []
            for s in np.unique(shot_of).tolist():
                sel = shot_of == s
                start, end = bounds[s], bounds[s + 1]
                shot_state = {
                    **state,
                    "shot": {
                        "index": len(out),
                        "start": round(start, 3),
                        "end": round(end, 3),
                        "decoded": int((detect_shot == s).sum()),
                    },
                    "frame_times": [round(float(t), 4) for t in times[sel]],
                    "transcript": [seg for seg in transcript if seg["end"] > start and seg["start"] < end],
                }
                out.append({**row, "shot": len(out), "frames": frames[sel], "state": shot_state})
            for r in out:
                r["state"]["shot"]["count"] = len(out)
            return out

        # every row leaving this step has the shot columns, so Ray Data blocks keep one schema
        return [{"shot": -1, "frames": EMPTY_FRAMES, **r} for r in guarded("shots", row, step)]
