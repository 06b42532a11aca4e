"""A map-style dataset over validated instruction records: each item is the record plus its decoded media.

Media are checked when the records load (:func:`vidrip.data.schema.load_records`), so a missing file
fails at start-up, not mid-training. A file that exists but cannot be decoded raises
:class:`vidrip.data.video.VideoReadError` naming it: never silently replaced by another sample
(LLaVA-NeXT's loader falls back to the next sample).

    ds = InstructionDataset.from_file("stage3.json", media_root="data/", frames=FramePolicy(), size=64)
    sample = ds[0]      # Sample(record, image=None, frames=ndarray[T, 64, 64, 3])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidrip.data.schema import InstructionRecord, load_records
from vidrip.data.video import FramePolicy, read_frames

__all__ = ["InstructionDataset", "Sample"]


@dataclass(frozen=True)
class Sample:
    record: InstructionRecord
    image: object | None = None  # PIL.Image.Image (RGB)
    frames: np.ndarray | None = None  # (T, H, W, 3) uint8


class InstructionDataset:
    def __init__(
        self,
        records: list[InstructionRecord],
        media_root: str | Path,
        frames: FramePolicy | None = None,
        size: int | None = None,
    ):
        self.records = records
        self.media_root = Path(media_root)
        self.frames = frames or FramePolicy()
        self.size = size

    @classmethod
    def from_file(cls, path: str | Path, media_root: str | Path, **kwargs) -> InstructionDataset:
        return cls(load_records(path, InstructionRecord, media_root=media_root).records, media_root, **kwargs)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        record = self.records[index]
        if record.image is not None:
            from PIL import Image

            with Image.open(self.media_root / record.image) as im:
                return Sample(record, image=im.convert("RGB"))
        if record.video is not None:
            frames = read_frames(self.media_root / record.video, self.frames, size=self.size).array
            return Sample(record, frames=frames)
        return Sample(record)
