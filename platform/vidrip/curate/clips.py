"""Write clips: crop each clip to its tissue, encode it as a muted H.264 mp4 at the clip frame rate.

The crop is the union of the tissue boxes of the clip's keyframes, padded by ``pad`` pixels and made
even (yuv420p needs even sizes). Clips are written to ``<out>/clips/<clip_id>.mp4`` atomically (a
``.part`` file renamed), so a crash never leaves a half clip under the final name.

    WriteClips(ClipsConfig(fps=2), out="work/curated")(clip_row)    # ds.map(WriteClips, ...)
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from pydantic import Field

from vidrip.config import StrictConfig
from vidrip.curate.rows import EMPTY_FRAMES, guarded
from vidrip.data.encode import write_mp4

__all__ = ["ClipsConfig", "WriteClips", "clip_id", "crop_box", "letterbox"]


class ClipsConfig(StrictConfig):
    fps: int = Field(default=2, ge=1, le=5, description="frame rate of the written clips (the paper: 1-5 fps)")
    pad: int = Field(default=4, ge=0, description="pixels kept around the tissue box")
    crf: int = Field(default=23, ge=0, le=51)
    min_side: int = Field(default=32, ge=2, description="a smaller crop is dropped")


def clip_id(video_id: str, shot: int, clip: int) -> str:
    return f"{video_id}_s{shot:02d}c{clip:02d}"


def crop_box(boxes: list, width: int, height: int, pad: int) -> tuple[int, int, int, int]:
    """Union of ``boxes`` padded, clipped to the frame, with even width and height."""
    if not boxes:
        return 0, 0, width - width % 2, height - height % 2
    b = np.asarray(boxes, dtype=np.float64)
    x0 = max(0, int(np.floor(b[:, 0].min())) - pad)
    y0 = max(0, int(np.floor(b[:, 1].min())) - pad)
    x1 = min(width, int(np.ceil(b[:, 2].max())) + pad)
    y1 = min(height, int(np.ceil(b[:, 3].max())) + pad)
    return x0, y0, x1 - (x1 - x0) % 2, y1 - (y1 - y0) % 2


def letterbox(image: np.ndarray, width: int, height: int) -> np.ndarray:
    h, w = image.shape[:2]
    scale = min(width / w, height / h)
    small = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    out = np.zeros((height, width, 3), dtype=np.uint8)
    y, x = (height - small.shape[0]) // 2, (width - small.shape[1]) // 2
    out[y : y + small.shape[0], x : x + small.shape[1]] = small
    return out


class WriteClips:
    """Ray Data step (``map``) on clip rows: writes the mp4, adds ``state["clip"]["file"]`` and sizes."""

    def __init__(self, cfg: ClipsConfig, out: str | Path):
        self.cfg = cfg
        self.out = Path(out)

    def __call__(self, row: dict) -> dict:
        def step(row: dict, state: dict) -> dict:
            clip = state["clip"]
            if clip is None:
                return {**row, "state": state}
            frames = row["frames"]
            h, w = frames.shape[1:3]
            x0, y0, x1, y1 = crop_box(clip["tissue_boxes"], w, h, self.cfg.pad)
            if min(x1 - x0, y1 - y0) < self.cfg.min_side:
                state["drops"].append(
                    {
                        "step": "clips",
                        "reason": f"tissue crop {x1 - x0}x{y1 - y0} smaller than {self.cfg.min_side} px",
                        "start": clip["start"],
                        "end": clip["end"],
                    }
                )
                state["clip"] = None
                return {**row, "frames": EMPTY_FRAMES, "state": state}
            cid = clip_id(row["key"], int(row["shot"]), clip["index"])
            rel = f"clips/{cid}.mp4"
            cropped = frames[:, y0:y1, x0:x1]
            write_mp4(self.out / rel, cropped, self.cfg.fps, crf=self.cfg.crf)
            clip.update(id=cid, file=rel, crop=[x0, y0, x1, y1], width=x1 - x0, height=y1 - y0, fps=self.cfg.fps)
            preview = row.get("preview")
            if preview is not None and len(preview):
                crop_thumb = letterbox(cropped[len(cropped) // 2], preview.shape[2], preview.shape[1])
                row = {**row, "preview": np.concatenate([preview, crop_thumb[None]])}
            return {**row, "frames": EMPTY_FRAMES, "state": state}

        return guarded("clips", row, step)[0]
