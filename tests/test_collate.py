"""Loss only on assistant turns: token-level checks for image, video, single- and multi-turn samples."""

import numpy as np
import pytest
from PIL import Image

from vidrip.data.dataset import InstructionDataset, Sample
from vidrip.data.schema import InstructionRecord
from vidrip.data.video import FramePolicy
from vidrip.model.collate import IGNORE_INDEX, Collator, assistant_mask
from vidrip.model.loading import ModelConfig, load_processor

IM_START, IM_END = 151644, 151645


@pytest.fixture(scope="module")
def processor():
    return load_processor(ModelConfig(preset="tiny"))


def _record(media: dict, turns: list[tuple[str, str]]) -> InstructionRecord:
    conv = [{"from": s, "value": v} for s, v in turns]
    return InstructionRecord.model_validate({"id": "x", **media, "conversations": conv})


def _labelled_text(processor, batch, row):
    lab = batch["labels"][row]
    return processor.tokenizer.decode(lab[lab != IGNORE_INDEX])


def test_single_turn_image(processor):
    s = Sample(
        _record({"image": "i.png"}, [("human", "<image>\nWhat stain?"), ("gpt", "H&E.")]),
        image=Image.new("RGB", (64, 64)),
    )
    b = Collator(processor)([s])
    ids, labels = b["input_ids"][0], b["labels"][0]
    assert _labelled_text(processor, b, 0) == "H&E.<|im_end|>"
    # exactly the reply tokens and the closing <|im_end|> are labelled, nothing else
    reply = processor.tokenizer("H&E.", add_special_tokens=False)["input_ids"]
    assert labels[labels != IGNORE_INDEX].tolist() == [*reply, IM_END]
    assert (labels[ids == 151646] == IGNORE_INDEX).all()  # media tokens
    first_label = int((labels != IGNORE_INDEX).nonzero()[0])
    header = processor.tokenizer("assistant\n", add_special_tokens=False)["input_ids"]
    assert ids[first_label - len(header) - 1 : first_label].tolist() == [IM_START, *header]


def test_multi_turn_labels_every_reply_and_no_question(processor):
    turns = [
        ("human", "<image>\nQ1?"),
        ("gpt", "A one."),
        ("human", "Q2?"),
        ("gpt", "A two."),
        ("human", "Q3?"),
        ("gpt", "A three."),
    ]
    s = Sample(_record({"image": "i.png"}, turns), image=Image.new("RGB", (80, 48)))
    b = Collator(processor)([s])
    assert _labelled_text(processor, b, 0) == "A one.<|im_end|>A two.<|im_end|>A three.<|im_end|>"
    ids = b["input_ids"][0].tolist()
    mask = (b["labels"][0] != IGNORE_INDEX).tolist()
    # every <|im_end|> that closes a user or system turn is unlabelled; every assistant one labelled
    ends = [i for i, t in enumerate(ids) if t == IM_END]
    assert [mask[i] for i in ends] == [False, False, True, False, True, False, True]


def test_video_sample_uses_video_tokens(processor):
    frames = np.zeros((5, 64, 64, 3), dtype=np.uint8)
    s = Sample(_record({"video": "v.mp4"}, [("human", "<image>\nDescribe."), ("gpt", "Diagnosis: x.")]), frames=frames)
    b = Collator(processor)([s])
    ids = b["input_ids"][0]
    # 5 frames x (4x4 patches pooled 2x2 -> 2x2) + one newline per video
    assert int((ids == 151647).sum()) == 5 * 4 + 1
    assert int((ids == 151646).sum()) == 0
    assert b["pixel_values_videos"].shape == (1, 5, 3, 64, 64)
    assert _labelled_text(processor, b, 0) == "Diagnosis: x.<|im_end|>"


def test_mixed_batch_padding_is_unlabelled(processor):
    img = Sample(_record({"image": "i.png"}, [("human", "<image>\nQ"), ("gpt", "A")]), image=Image.new("RGB", (64, 64)))
    vid = Sample(
        _record({"video": "v.mp4"}, [("human", "<image>\nQ"), ("gpt", "A much longer answer, to force padding.")]),
        frames=np.zeros((2, 64, 64, 3), dtype=np.uint8),
    )
    b = Collator(processor)([img, vid])
    pad = b["attention_mask"] == 0
    assert pad.any()
    assert (b["labels"][pad] == IGNORE_INDEX).all()
    assert _labelled_text(processor, b, 0) == "A<|im_end|>"
    assert _labelled_text(processor, b, 1) == "A much longer answer, to force padding.<|im_end|>"


def test_text_only_sample(processor):
    s = Sample(_record({}, [("human", "What is H&E?"), ("gpt", "A stain.")]))
    b = Collator(processor)([s])
    assert _labelled_text(processor, b, 0) == "A stain.<|im_end|>"


def test_max_length_names_the_record(processor):
    s = Sample(_record({}, [("human", "word " * 50), ("gpt", "ok")]))
    with pytest.raises(ValueError, match=r"\['x'\].*max_length=20"):
        Collator(processor, max_length=20)([s])


def test_assistant_mask_unit():
    header = [77, 78]
    ids = [1, IM_START, 5, 6, IM_END, IM_START, 77, 78, 9, 10, IM_END, 2]
    assert assistant_mask(ids, IM_START, IM_END, header) == [False] * 8 + [True, True, True, False]


def test_dataset_over_the_sample(sample_dir, processor):
    ds = InstructionDataset.from_file(sample_dir / "stage3_video_sft.json", sample_dir, frames=FramePolicy(), size=64)
    batch = Collator(processor)([ds[0], ds[1]])
    assert batch["pixel_values_videos"].shape[0] == 2
    assert all("Diagnosis: " in _labelled_text(processor, batch, r) for r in range(2))
