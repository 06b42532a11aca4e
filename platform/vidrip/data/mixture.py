"""A stage's data mixture: several record files, each with a sampling rule, validated together.

    records = mixture_records([DataSource(file="stage1_image_sft.json"),
                               DataSource(file="stage2_clip_sft.json", sampling="random_n", amount=8)],
                              data_root="work/sample", seed=0)

A source may live in a folder of its own (``root``: a curation job's output, whose records name media
relative to it). Every file is validated with its media checked before training starts; a bad record
fails the stage at start-up with one line per bad record (or is skipped, with ``on_error="skip"``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from vidrip.config import StrictConfig
from vidrip.data.schema import InstructionRecord, load_records

__all__ = ["DataSource", "mixture_records", "split_records"]


class DataSource(StrictConfig):
    """One data file of a stage's mixture and how much of it to use.

    ``sampling``: ``all``; ``first_pct`` (the first ``amount`` percent, in file order); ``random_n``
    (``amount`` records drawn with the stage's seed).
    """

    file: str
    root: str | None = Field(
        default=None,
        description="the folder (under data_root, or absolute) that holds `file` and the media its records "
        "name, e.g. a curation job's output; None: data_root itself",
    )
    sampling: Literal["all", "first_pct", "random_n"] = "all"
    amount: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _amount_matches(self) -> DataSource:
        if self.sampling == "all" and self.amount is not None:
            raise ValueError("'amount' is only for sampling 'first_pct' or 'random_n'")
        if self.sampling != "all" and self.amount is None:
            raise ValueError(f"sampling '{self.sampling}' needs an 'amount'")
        if self.sampling == "first_pct" and self.amount > 100:
            raise ValueError("'first_pct' amount is a percentage (0, 100]")
        return self


def _sample(records: list[InstructionRecord], src: DataSource, rng: np.random.Generator) -> list[InstructionRecord]:
    if src.sampling == "all":
        return records
    if src.sampling == "first_pct":
        return records[: math.ceil(len(records) * src.amount / 100)]
    n = min(len(records), int(src.amount))
    return [records[i] for i in sorted(rng.choice(len(records), size=n, replace=False))]


def mixture_records(
    sources: Sequence[DataSource],
    data_root: str | Path,
    seed: int = 0,
    on_error: Literal["fail", "skip"] = "fail",
) -> list[InstructionRecord]:
    """The records of every source, sampled as each says, in source order."""
    rng = np.random.default_rng(seed)
    out: list[InstructionRecord] = []
    for src in sources:
        base = Path(data_root) / src.root if src.root else Path(data_root)
        loaded = load_records(base / src.file, InstructionRecord, media_root=base, on_error=on_error)
        records = loaded.records if not src.root else [_under(r, src.root) for r in loaded.records]
        out.extend(_sample(records, src, rng))
    return out


def _under(record: InstructionRecord, root: str) -> InstructionRecord:
    """``record`` with its media path relative to data_root (``root`` joined in front)."""
    if record.media_kind is None:
        return record
    return record.model_copy(update={record.media_kind: str(Path(root) / record.media)})


def split_records(
    records: list[InstructionRecord], fraction: float, seed: int = 0
) -> tuple[list[InstructionRecord], list[InstructionRecord]]:
    """``(train, held_out)``: a seeded ``fraction`` of the records (at least one) held out for validation."""
    if not 0 < fraction < 1:
        raise ValueError(f"eval_fraction: {fraction} must be between 0 and 1")
    if len(records) < 2:
        raise ValueError(f"eval_fraction: {len(records)} record(s) cannot be split into training and validation")
    n = min(len(records) - 1, max(1, round(len(records) * fraction)))
    held = set(np.random.default_rng(seed).choice(len(records), size=n, replace=False).tolist())
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]
