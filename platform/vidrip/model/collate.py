"""Batch samples into model inputs, with loss only on the assistant's turns.

Each record's conversation is rendered with the processor's chat template (``<image>`` becomes
``<video>`` for video records), the processor expands the media placeholders into the right number of
media tokens, and labels are the input ids inside each assistant reply — its text and the closing
``<|im_end|>`` — and ``-100`` everywhere else (system prompt, user turns, media tokens, role headers,
padding). Assistant spans are found on token ids (``<|im_start|>assistant\\n`` … ``<|im_end|>``), so the
masking does not depend on string offsets.

    collate = Collator(processor)
    batch = collate([ds[0], ds[1]])   # input_ids, attention_mask, labels, pixel_values[_videos], ...
"""

from __future__ import annotations

from collections.abc import Sequence

from vidrip.data.dataset import Sample
from vidrip.data.schema import IMAGE_PLACEHOLDER
from vidrip.model.tokenizer import IM_END, IM_START, VIDEO_TOKEN

__all__ = ["IGNORE_INDEX", "Collator", "assistant_mask", "to_messages"]

IGNORE_INDEX = -100
_ROLES = {"human": "user", "gpt": "assistant"}


def to_messages(sample: Sample) -> list[dict]:
    """Chat messages of a record; the media placeholder names the record's media kind."""
    record = sample.record
    messages = []
    for turn in record.conversations:
        value = turn.value
        if record.video is not None:
            value = value.replace(IMAGE_PLACEHOLDER, VIDEO_TOKEN)
        messages.append({"role": _ROLES[turn.speaker], "content": value})
    return messages


def assistant_mask(ids: Sequence[int], im_start: int, im_end: int, header: Sequence[int]) -> list[bool]:
    """True for tokens of assistant replies (after ``im_start + header``, through the closing ``im_end``)."""
    mask = [False] * len(ids)
    n, h = len(ids), len(header)
    i = 0
    while i < n:
        if ids[i] == im_start and list(ids[i + 1 : i + 1 + h]) == list(header):
            j = i + 1 + h
            while j < n and ids[j] != im_end:
                mask[j] = True
                j += 1
            if j < n:
                mask[j] = True  # the model must learn to stop
            i = j + 1
        else:
            i += 1
    return mask


class Collator:
    def __init__(self, processor, max_length: int | None = None):
        self.processor = processor
        tok = processor.tokenizer
        self.im_start = tok.convert_tokens_to_ids(IM_START)
        self.im_end = tok.convert_tokens_to_ids(IM_END)
        self.header = tok("assistant\n", add_special_tokens=False)["input_ids"]
        self.pad_id = tok.pad_token_id
        self.max_length = max_length

    def __call__(self, samples: Sequence[Sample]) -> dict:
        import torch

        texts = [self.processor.apply_chat_template(to_messages(s), tokenize=False) for s in samples]
        images = [s.image for s in samples if s.image is not None]
        videos = [s.frames for s in samples if s.frames is not None]
        batch = self.processor(
            text=texts,
            images=images or None,
            videos=videos or None,
            padding=True,
            return_tensors="pt",
        )
        ids = batch["input_ids"]
        if self.max_length is not None and ids.shape[1] > self.max_length:
            too_long = [
                s.record.id
                for s, m in zip(samples, batch["attention_mask"], strict=True)
                if int(m.sum()) > self.max_length
            ]
            raise ValueError(
                f"records {too_long} are longer than max_length={self.max_length} tokens after media expansion; "
                "raise max_length or sample fewer frames"
            )
        labels = torch.full_like(ids, IGNORE_INDEX)
        for row in range(ids.shape[0]):
            mask = assistant_mask(ids[row].tolist(), self.im_start, self.im_end, self.header)
            mask_t = torch.tensor(mask, dtype=torch.bool) & batch["attention_mask"][row].bool()
            labels[row][mask_t] = ids[row][mask_t]
        batch["labels"] = labels
        return dict(batch)
