"""Where the newline embedding goes in a video's tokens: one per video, or one after each pooled row.

Each frame's patch features (27 x 27 for SigLIP at 384 px) are projected and pooled bilinearly to
14 x 14. Then:

- ``one_token`` (Hugging Face's ``LlavaOnevision`` and LLaVA-NeXT's inference default): every frame's
  196 tokens in a row, and one newline after the whole video: ``F * 196 + 1`` tokens.
- ``grid`` (LLaVA-NeXT's *training* default, ``mm_newline_position: grid``; ViDRiP's scripts keep it): a
  newline after each of the 14 rows of every frame: ``F * 14 * 15 = F * 210`` tokens.

A checkpoint was trained with one of them and must be run with the same one. The layout is the model
config's ``mm_newline_position`` (LLaVA-NeXT's key; absent means ``one_token``), chosen by
``ModelConfig.video_newline`` for a new model and read from the checkpoint otherwise. The classes that
follow it are in :mod:`vidrip.model.grid_newline`.
"""

from __future__ import annotations

import math
from typing import Literal

__all__ = ["LAYOUT_KEY", "VideoNewline", "video_newline", "video_token_count"]

VideoNewline = Literal["one_token", "grid"]
LAYOUT_KEY = "mm_newline_position"
LAYOUTS = ("one_token", "grid")


def video_newline(config) -> str:
    """The layout a model config asks for (``one_token`` when it does not say)."""
    layout = getattr(config, LAYOUT_KEY, None) or "one_token"
    if layout not in LAYOUTS:
        raise ValueError(f"{LAYOUT_KEY}: {layout!r} is not supported (supported: {', '.join(LAYOUTS)})")
    return layout


def video_token_count(num_frames: int, patches_per_side: int, layout: str) -> int:
    """How many video tokens ``num_frames`` frames become in ``layout``."""
    pooled = math.ceil(patches_per_side / 2)
    if layout == "grid":
        return num_frames * pooled * (pooled + 1)
    return num_frames * pooled * pooled + 1
