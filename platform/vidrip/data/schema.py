"""Instruction and test record schemas (LLaVA / ViDRiP JSON) and a loader that reports every bad record.

Instruction records are what the four training stages read (LLaVA conversation format)::

    {"id": "s3-0001", "video": "videos/case01.mp4",
     "conversations": [{"from": "human", "value": "<image>\\nWhat is shown?"},
                       {"from": "gpt", "value": "... Diagnosis: lymph node metastasis"}]}

``<image>`` marks where the media goes, for images and videos alike (as in LLaVA-NeXT). Test records
follow the ViDRiP test format: ``{"video_name", "question", "answer"}``, optionally with ``question_2``, a
paraphrase for Video-ChatGPT's consistency criterion.

``load_records`` validates a ``.json`` list or a ``.jsonl`` file, checks that every referenced media
file exists under the media root, and reports one line per bad record naming file, index and field.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "IMAGE_PLACEHOLDER",
    "InstructionRecord",
    "LoadResult",
    "RecordError",
    "RecordFileError",
    "TestRecord",
    "Turn",
    "load_records",
]

IMAGE_PLACEHOLDER = "<image>"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, str_strip_whitespace=False)


class Turn(_Record):
    """One conversation turn; ``from`` is ``human`` or ``gpt`` (LLaVA's names)."""

    speaker: Literal["human", "gpt"] = Field(alias="from")
    value: str = Field(min_length=1)


class InstructionRecord(_Record):
    """A LLaVA/ViDRiP instruction sample: text-only, one image, or one video."""

    id: str = Field(min_length=1)
    image: str | None = None
    video: str | None = None
    conversations: list[Turn] = Field(min_length=2)

    @model_validator(mode="after")
    def _check(self) -> InstructionRecord:
        if self.image is not None and self.video is not None:
            raise ValueError("a record has an 'image' or a 'video', not both")
        for i, turn in enumerate(self.conversations):
            expected = "human" if i % 2 == 0 else "gpt"
            if turn.speaker != expected:
                raise ValueError(f"conversations[{i}].from must be '{expected}' (turns alternate, human first)")
        if len(self.conversations) % 2:
            raise ValueError("conversations must end with a 'gpt' turn")
        placeholders = sum(t.value.count(IMAGE_PLACEHOLDER) for t in self.conversations)
        if self.media is not None:
            if placeholders != 1 or IMAGE_PLACEHOLDER not in self.conversations[0].value:
                raise ValueError(
                    f"a record with media needs exactly one '{IMAGE_PLACEHOLDER}', in the first human turn "
                    f"(found {placeholders})"
                )
        elif placeholders:
            raise ValueError(f"'{IMAGE_PLACEHOLDER}' appears but the record has no 'image' or 'video'")
        return self

    @property
    def media(self) -> str | None:
        return self.image if self.image is not None else self.video

    @property
    def media_kind(self) -> Literal["image", "video"] | None:
        if self.image is not None:
            return "image"
        if self.video is not None:
            return "video"
        return None

    def to_json(self) -> dict:
        return self.model_dump(by_alias=True, exclude_none=True)


class TestRecord(_Record):
    """A ViDRiP test item: open-ended question about a video, with the reference answer."""

    __test__ = False  # not a pytest class

    video_name: str = Field(min_length=1)
    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    question_2: str | None = Field(
        default=None,
        min_length=1,
        description="a paraphrase of `question` with the same answer (Video-ChatGPT's consistency criterion)",
    )

    @property
    def media(self) -> str:
        return self.video_name

    def to_json(self) -> dict:
        return self.model_dump(exclude_none=True)


R = TypeVar("R", "InstructionRecord", "TestRecord")


@dataclass(frozen=True)
class RecordError:
    """One problem with one record: ``file: record INDEX: field FIELD: message``."""

    file: str
    index: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: record {self.index}: field '{self.field}': {self.message}"


class RecordFileError(ValueError):
    """Raised by ``load_records(on_error="fail")``; ``errors`` holds one entry per bad record."""

    def __init__(self, errors: Sequence[RecordError]):
        self.errors = list(errors)
        super().__init__(f"{len(self.errors)} bad record(s):\n" + "\n".join(map(str, self.errors)))


@dataclass
class LoadResult(Generic[R]):
    records: list[R]
    errors: list[RecordError] = field(default_factory=list)


def _read_items(path: Path) -> list:
    """The file's records, in order; a JSONL line that is not JSON becomes a :class:`RecordError` in its place."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: record file not found")
    text = path.read_text()
    if path.suffix == ".jsonl":
        items: list = []
        lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        for index, (lineno, line) in enumerate(lines):
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as exc:
                items.append(RecordError(str(path), index, "<json>", f"line {lineno}: {exc}"))
        return items
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordFileError([RecordError(str(path), -1, "<json>", str(exc))]) from None
    if not isinstance(items, list):
        raise RecordFileError([RecordError(str(path), -1, "<root>", "expected a JSON list of records")])
    return items


def _field_name(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "<record>"


def load_records(
    path: str | Path,
    kind: type[R],
    media_root: str | Path | None = None,
    on_error: Literal["fail", "skip"] = "fail",
) -> LoadResult[R]:
    """Validate every record of ``path``; check media exist under ``media_root`` (if given).

    ``on_error="fail"`` raises :class:`RecordFileError` listing every bad record; ``"skip"`` returns the
    good records and the errors.
    """
    path = Path(path)
    root = Path(media_root) if media_root is not None else None
    records: list[R] = []
    errors: list[RecordError] = []
    for index, item in enumerate(_read_items(path)):
        if isinstance(item, RecordError):
            errors.append(item)
            continue
        if not isinstance(item, dict):
            errors.append(RecordError(str(path), index, "<record>", f"expected an object, got {type(item).__name__}"))
            continue
        try:
            record = kind.model_validate(item)
        except ValidationError as exc:
            first = exc.errors()[0]
            msg = "; ".join(
                f"{_field_name(e['loc'])}: {e['msg']}" if len(exc.errors()) > 1 else e["msg"] for e in exc.errors()
            )
            errors.append(RecordError(str(path), index, _field_name(first["loc"]), msg))
            continue
        media = record.media
        if root is not None and media is not None:
            media_field = "video_name" if isinstance(record, TestRecord) else record.media_kind
            if not (root / media).is_file():
                errors.append(RecordError(str(path), index, media_field, f"media file not found: {root / media}"))
                continue
        records.append(record)
    if errors and on_error == "fail":
        raise RecordFileError(errors)
    return LoadResult(records=records, errors=errors)
