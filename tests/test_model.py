"""The tiny LLaVA-OneVision model: trains, generates, and loads back through the real-weights paths."""

import numpy as np
import pytest
import torch

from vidrip.data.video import FramePolicy, read_frames
from vidrip.model.generate import answer
from vidrip.model.loading import ModelConfig, load_model, load_processor, save_model
from vidrip.model.processor import CHAT_TEMPLATE, SYSTEM_PROMPT


@pytest.fixture(scope="module")
def tiny():
    cfg = ModelConfig(preset="tiny")
    return load_model(cfg), load_processor(cfg)


def test_chat_template_renders_llava_next_qwen_format(tiny):
    _, processor = tiny
    messages = [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What is shown?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Tissue."}]},
        {"role": "user", "content": "And the stain?"},
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<video>\nWhat is shown?<|im_end|>\n"
        "<|im_start|>assistant\nTissue.<|im_end|>\n"
        "<|im_start|>user\nAnd the stain?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    custom = processor.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], tokenize=False
    )
    assert custom.startswith("<|im_start|>system\nBe brief.<|im_end|>\n") and SYSTEM_PROMPT not in custom
    assert processor.chat_template == CHAT_TEMPLATE


def test_forward_backward(tiny):
    model, processor = tiny
    frames = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    inputs = processor(text="<|im_start|>user\n<video>\nHi<|im_end|>\n", videos=[frames], return_tensors="pt")
    model.train()
    out = model(**inputs, labels=inputs["input_ids"])
    out.loss.backward()
    model.eval()
    assert torch.isfinite(out.loss)
    assert model.model.multi_modal_projector.linear_1.weight.grad is not None
    model.zero_grad()


def test_answer_about_a_sample_video(tiny, sample_dir):
    model, processor = tiny
    frames = read_frames(sample_dir / "videos" / "test_000.mp4", FramePolicy(), size=64).array
    a = answer(model, processor, "Describe the video.", frames=frames, max_new_tokens=5)
    b = answer(model, processor, "Describe the video.", frames=frames, max_new_tokens=5)
    assert a == b  # greedy is deterministic
    assert a.completion_tokens <= 5 and a.finish_reason in ("stop", "length")
    assert a.prompt_tokens > len(frames) * 4
    s1 = answer(model, processor, "Describe.", frames=frames, max_new_tokens=6, temperature=1.0, seed=3)
    s2 = answer(model, processor, "Describe.", frames=frames, max_new_tokens=6, temperature=1.0, seed=3)
    assert s1 == s2  # same seed, same sample


def test_checkpoint_round_trip(tiny, tmp_path):
    model, processor = tiny
    save_model(model, processor, tmp_path / "ckpt")
    cfg = ModelConfig(preset="tiny", checkpoint=str(tmp_path / "ckpt"))
    loaded, loaded_proc = load_model(cfg), load_processor(cfg)
    inputs = processor(
        text="<|im_start|>user\n<image>\nHi", images=[np.zeros((64, 64, 3), np.uint8)], return_tensors="pt"
    )
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, loaded(**inputs).logits)
    assert loaded_proc.apply_chat_template(
        [{"role": "user", "content": "x"}], tokenize=False
    ) == processor.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)


def test_component_loading_path_used_by_ov7b(tiny, tmp_path):
    """Stage 0 starts from a SigLIP and a Qwen2 checkpoint: the same code path, on tiny checkpoints."""
    from transformers import Qwen2ForCausalLM, SiglipVisionModel

    model, _ = tiny
    tower = SiglipVisionModel(model.config.vision_config)
    tower.load_state_dict(model.model.vision_tower.state_dict())
    tower.save_pretrained(tmp_path / "siglip")
    llm = Qwen2ForCausalLM(model.config.text_config)
    llm.model.load_state_dict(model.model.language_model.state_dict())
    llm.lm_head.load_state_dict(model.lm_head.state_dict())
    llm.save_pretrained(tmp_path / "qwen2")

    built = load_model(
        ModelConfig(preset="tiny", vision_tower=str(tmp_path / "siglip"), llm=str(tmp_path / "qwen2"), seed=99)
    )
    for (name, a), b in zip(
        model.model.vision_tower.state_dict().items(), built.model.vision_tower.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert torch.equal(model.model.language_model.embed_tokens.weight, built.model.language_model.embed_tokens.weight)
    # the projector is new (random, seed 99), not copied
    assert not torch.equal(
        model.model.multi_modal_projector.linear_1.weight, built.model.multi_modal_projector.linear_1.weight
    )


def test_ov7b_preset_has_the_papers_shape():
    from vidrip.model.presets import PRESETS, llava_config

    cfg = llava_config(PRESETS["ov-7b"])
    v, t = cfg.vision_config, cfg.text_config
    assert (v.image_size // v.patch_size) ** 2 == 729  # 27 x 27 patches at 384 px
    assert v.hidden_size == 1152 and t.hidden_size == 3584 and t.num_hidden_layers == 28
    assert cfg.image_token_index == 151646 and cfg.video_token_index == 151647
