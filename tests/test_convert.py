"""`vidrip convert`: LLaVA-NeXT llava_qwen checkpoints (full and LoRA) to Hugging Face, and the video layouts.

The LLaVA-NeXT checkpoints are written here, by hand, in LLaVA-NeXT's key names and config fields.
"""

import json
import subprocess

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import LlavaOnevisionForConditionalGeneration, SiglipVisionConfig

from vidrip.model.convert import ConversionError, convert_llava_next
from vidrip.model.grid_newline import GridNewlineProcessor
from vidrip.model.loading import ModelConfig, load_model, load_processor
from vidrip.model.presets import PRESETS

HF_TO_LLAVA_NEXT = [  # our names -> LLaVA-NeXT's, written out independently of the converter's rules
    ("model.vision_tower.", "model.vision_tower.vision_tower.vision_model."),
    ("model.multi_modal_projector.linear_1.", "model.mm_projector.0."),
    ("model.multi_modal_projector.linear_2.", "model.mm_projector.2."),
    ("model.language_model.", "model."),
    ("model.image_newline", "model.image_newline"),
]
PROMPT = "<|im_start|>user\n<video>\nWhat is shown?<|im_end|>\n"


def _llava_next_name(key: str) -> str:
    for ours, theirs in HF_TO_LLAVA_NEXT:
        if key.startswith(ours):
            return theirs + key.removeprefix(ours)
    return key


def _llava_next_config(tower_dir, newline="grid", **extra) -> dict:
    text = PRESETS["tiny"].text
    return {
        "architectures": ["LlavaQwenForCausalLM"],
        "model_type": "llava",
        **{k: text[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")},
        "num_key_value_heads": text["num_key_value_heads"],
        "vocab_size": text["vocab_size"],
        "max_position_embeddings": text["max_position_embeddings"],
        "rope_theta": text["rope_theta"],
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
        "mm_vision_tower": str(tower_dir),
        "mm_projector_type": "mlp2x_gelu",
        "mm_hidden_size": 32,
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "image_aspect_ratio": "anyres_max_9",
        "image_grid_pinpoints": PRESETS["tiny"].grid_pinpoints,
        "mm_patch_merge_type": "spatial_unpad",
        "mm_spatial_pool_mode": "bilinear",
        "mm_newline_position": newline,
        **extra,
    }


@pytest.fixture(scope="module")
def source_model():
    return load_model(ModelConfig(preset="tiny", seed=3))


@pytest.fixture(scope="module")
def llava_next_dir(tmp_path_factory, source_model):
    """A tiny llava_qwen checkpoint in two safetensors shards, as LLaVA-NeXT saves them."""
    root = tmp_path_factory.mktemp("llava_next")
    tower = root / "siglip"  # the tower's own config: one layer more, as LLaVA-NeXT drops the last one
    SiglipVisionConfig(**{**PRESETS["tiny"].vision, "num_hidden_layers": 3}).save_pretrained(tower)
    ckpt = root / "ckpt"
    ckpt.mkdir()
    state = {_llava_next_name(k): v.clone() for k, v in source_model.state_dict().items() if k != "lm_head.weight"}
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)  # an old buffer: skipped
    keys = sorted(state)
    half = len(keys) // 2
    for i, part in enumerate((keys[:half], keys[half:])):
        save_file({k: state[k] for k in part}, str(ckpt / f"model-0000{i + 1}-of-00002.safetensors"))
    (ckpt / "config.json").write_text(json.dumps(_llava_next_config(tower)))
    return ckpt


def test_a_llava_next_checkpoint_converts_weight_for_weight(
    llava_next_dir, source_model, tmp_path, venv_bin, subprocess_env
):
    out = tmp_path / "hf"
    run = subprocess.run(
        [venv_bin / "vidrip", "convert", "--checkpoint", str(llava_next_dir), "--out", str(out)],
        capture_output=True,
        text=True,
        env=subprocess_env,
    )
    assert run.returncode == 0, run.stderr
    assert "video layout 'grid'" in run.stdout
    converted = load_model(ModelConfig(checkpoint=str(out)))
    ours = converted.state_dict()
    for key, value in source_model.state_dict().items():
        torch.testing.assert_close(ours[key], value, rtol=0, atol=0, msg=key)
    assert converted.config.mm_newline_position == "grid" and converted.config.vision_config.num_hidden_layers == 2
    assert isinstance(load_processor(ModelConfig(checkpoint=str(out))), GridNewlineProcessor)
    assert json.loads((out / "vidrip_conversion.json").read_text())["source"] == str(llava_next_dir.resolve())
    with pytest.raises(ValueError, match="trained with the 'grid' video layout"):
        load_model(ModelConfig(checkpoint=str(out), video_newline="one_token"))


def _reference_logits(model, inputs, frames: int) -> torch.Tensor:
    """LLaVA-NeXT's grid layout computed here step by step: tower, projector, bilinear 2x pooling, then the
    newline embedding after every pooled row of every frame, scattered over the video tokens."""
    inner = model.model
    pixels = inputs["pixel_values_videos"][0]  # (frames, 3, 64, 64)
    hidden = inner.vision_tower(pixels, output_hidden_states=True).hidden_states[-1]  # all 4 x 4 patches
    projected = inner.multi_modal_projector(hidden)
    side, dim = 4, projected.shape[-1]
    grid = projected.reshape(frames, side, side, dim).permute(0, 3, 1, 2)
    pooled = torch.nn.functional.interpolate(grid, size=(2, 2), mode="bilinear").permute(0, 2, 3, 1)
    rows = torch.cat((pooled, inner.image_newline.expand(frames, 2, 1, dim)), dim=2)  # newline closes each row
    video = rows.reshape(frames * 2 * 3, dim)
    ids = inputs["input_ids"]
    embeds = inner.language_model.embed_tokens(ids).clone()
    embeds[ids == model.config.video_token_index] = video
    hidden = inner.language_model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"]).last_hidden_state
    return model.lm_head(hidden)


def test_grid_layout_matches_a_reference_computation(llava_next_dir, tmp_path):
    out = convert_llava_next(llava_next_dir, tmp_path / "hf")
    model, processor = load_model(ModelConfig(checkpoint=str(out))), load_processor(ModelConfig(checkpoint=str(out)))
    frames = np.random.default_rng(1).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    inputs = processor(text=PROMPT, videos=[frames], return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.video_token_index).sum()) == 3 * 2 * (2 + 1)  # 210/frame at 384px
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, _reference_logits(model, inputs, 3), rtol=1e-5, atol=1e-5)


def test_one_token_layout_is_exactly_hugging_faces(source_model, tmp_path):
    from vidrip.model.loading import save_model

    save_model(source_model, load_processor(ModelConfig()), tmp_path / "m")
    ours = load_model(ModelConfig(checkpoint=str(tmp_path / "m")))
    stock = LlavaOnevisionForConditionalGeneration.from_pretrained(tmp_path / "m").eval()
    processor = load_processor(ModelConfig(checkpoint=str(tmp_path / "m")))
    frames = np.random.default_rng(2).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    inputs = processor(text=PROMPT, videos=[frames], return_tensors="pt")
    assert int((inputs["input_ids"] == stock.config.video_token_index).sum()) == 3 * 2 * 2 + 1
    with torch.no_grad():
        assert torch.equal(ours(**inputs).logits, stock(**inputs).logits)


def test_a_lora_pair_is_merged_as_llava_next_merges_it(llava_next_dir, source_model, tmp_path):
    """LoRA A/B (peft names on LLaVA-NeXT modules) + non_lora_trainables.bin: W + alpha/r * B @ A."""
    lora = tmp_path / "lora"
    lora.mkdir()
    rank, alpha = 4, 8.0
    rng = torch.Generator().manual_seed(0)
    adapter, expected = {}, {}
    base = source_model.state_dict()
    for layer in (0, 1):
        for module in ("self_attn.q_proj", "mlp.down_proj"):
            w = base[f"model.language_model.layers.{layer}.{module}.weight"]
            a, b = torch.randn(rank, w.shape[1], generator=rng), torch.randn(w.shape[0], rank, generator=rng)
            adapter[f"base_model.model.model.layers.{layer}.{module}.lora_A.weight"] = a
            adapter[f"base_model.model.model.layers.{layer}.{module}.lora_B.weight"] = b
            expected[f"model.language_model.layers.{layer}.{module}.weight"] = w + (alpha / rank) * b @ a
    projector = torch.randn_like(base["model.multi_modal_projector.linear_1.weight"])
    up = torch.randn_like(base["model.language_model.layers.0.mlp.up_proj.weight"])
    torch.save(adapter, lora / "adapter_model.bin")
    torch.save(
        {
            "base_model.model.model.mm_projector.0.weight": projector,
            "base_model.model.model.layers.0.mlp.up_proj.base_layer.weight": up,  # LLaVA-NeXT's issue 508
        },
        lora / "non_lora_trainables.bin",
    )
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    (lora / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "r": rank,
                "lora_alpha": alpha,
                "target_modules": targets,
                "lora_dropout": 0.05,
                "base_model_name_or_path": str(llava_next_dir),
                "task_type": "CAUSAL_LM",
            }
        )
    )
    (lora / "config.json").write_text((llava_next_dir / "config.json").read_text())
    out = convert_llava_next(lora, tmp_path / "merged")
    merged = load_model(ModelConfig(checkpoint=str(out))).state_dict()
    expected["model.multi_modal_projector.linear_1.weight"] = projector
    expected["model.language_model.layers.0.mlp.up_proj.weight"] = up
    for key, value in base.items():
        torch.testing.assert_close(merged[key], expected.get(key, value), rtol=1e-5, atol=1e-5, msg=key)
    assert json.loads((out / "vidrip_conversion.json").read_text())["lora"]["merged_weights"] == 4


def _broken_copy(llava_next_dir, tmp_path, config_update=None, extra=None, drop=None):
    from safetensors.torch import load_file

    ckpt = tmp_path / "broken"
    ckpt.mkdir()
    state = {}
    for f in sorted(llava_next_dir.glob("*.safetensors")):
        state.update(load_file(str(f)))
    state.update(extra or {})
    for key in drop or []:
        state.pop(key)
    save_file(state, str(ckpt / "model.safetensors"))
    config = {**json.loads((llava_next_dir / "config.json").read_text()), **(config_update or {})}
    (ckpt / "config.json").write_text(json.dumps(config))
    return ckpt


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            dict(config_update={"mm_spatial_pool_mode": "average"}),
            r"config.json: field 'mm_spatial_pool_mode' is 'average'",
        ),
        (dict(config_update={"architectures": ["LlamaForCausalLM"]}), r"field 'architectures'.*LlavaQwenForCausalLM"),
        (dict(extra={"model.faster_token": torch.zeros(64)}), r"model.safetensors: weight 'model.faster_token'"),
        (dict(drop=["model.norm.weight"]), r"missing \['model.language_model.norm.weight'\]"),
    ],
)
def test_what_cannot_be_converted_is_refused_by_name(llava_next_dir, tmp_path, change, message):
    ckpt = _broken_copy(llava_next_dir, tmp_path, **change)
    with pytest.raises(ConversionError, match=message):
        convert_llava_next(ckpt, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written
