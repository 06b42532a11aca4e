"""Model presets: LLaVA-OneVision (SigLIP + 2-layer MLP projector + Qwen2) at two sizes.

- ``tiny``: the real classes at toy sizes (SigLIP hidden 32, 64 px images, 16 px patches; Qwen2 hidden
  64, 2 layers) with the real Qwen2 vocabulary, random weights. CPU tests and the demo use it.
- ``ov-7b``: the paper's shape: SigLIP-so400m-patch14-384 + Qwen2-7B (729 patches a frame at 384 px,
  pooled 2x2 to 196 tokens a frame).

Both are described by data (:class:`Preset`); :func:`llava_config` turns one into a
``LlavaOnevisionConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vidrip.model.tokenizer import SPECIAL_TOKENS

__all__ = ["PRESETS", "Preset", "llava_config"]

QWEN2_VOCAB = 151_643 + len(SPECIAL_TOKENS)  # BPE ranks + our special tokens (ids 151643..151647)


@dataclass(frozen=True)
class Preset:
    name: str
    image_size: int
    vision: dict[str, Any]
    text: dict[str, Any]
    grid_pinpoints: list[list[int]]
    tie_word_embeddings: bool = False
    default_vision_tower: str | None = None  # hub id of the component the paper starts from
    default_llm: str | None = None


def _pinpoints(size: int, max_tiles: int) -> list[list[int]]:
    return [[size * h, size * w] for h in range(1, max_tiles + 1) for w in range(1, max_tiles + 1)]


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        image_size=64,
        vision=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=64,
            patch_size=16,
            vision_use_head=False,
        ),
        text=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=QWEN2_VOCAB,
            max_position_embeddings=4096,
            rope_theta=1_000_000.0,
            tie_word_embeddings=True,
        ),
        grid_pinpoints=_pinpoints(64, 2),
        tie_word_embeddings=True,
    ),
    "ov-7b": Preset(
        name="ov-7b",
        image_size=384,
        vision=dict(
            hidden_size=1152,
            intermediate_size=4304,
            num_hidden_layers=26,
            num_attention_heads=16,
            image_size=384,
            patch_size=14,
            vision_use_head=False,
        ),
        text=dict(
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            vocab_size=152_064,
            max_position_embeddings=32_768,
            rope_theta=1_000_000.0,
            tie_word_embeddings=False,
        ),
        grid_pinpoints=_pinpoints(384, 6),
        default_vision_tower="google/siglip-so400m-patch14-384",
        default_llm="Qwen/Qwen2-7B-Instruct",
    ),
}


def llava_config(preset: Preset, vision_config=None, text_config=None):
    """``LlavaOnevisionConfig`` for ``preset``; component configs (e.g. read from checkpoints) win."""
    from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig

    return LlavaOnevisionConfig(
        vision_config=vision_config or SiglipVisionConfig(**preset.vision),
        text_config=text_config or Qwen2Config(**preset.text),
        image_token_index=151_646,
        video_token_index=151_647,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=preset.grid_pinpoints,
        vision_aspect_ratio="anyres_max_9",
        tie_word_embeddings=preset.tie_word_embeddings,
    )
