"""The processor: Qwen2 tokenizer + SigLIP image/video preprocessing + the ChatML chat template.

The chat template renders exactly LLaVA-NeXT's ``qwen_1_5`` training format, which ViDRiP used::

    <|im_start|>system
    You are a helpful assistant.<|im_end|>
    <|im_start|>user
    <video>
    What is shown?<|im_end|>
    <|im_start|>assistant
    ...<|im_end|>

Messages take either a string ``content`` (with ``<image>``/``<video>`` already in place) or OpenAI-style
content parts (``{"type": "image"}``, ``{"type": "video"}``, ``{"type": "text", "text": ...}``); media
parts render first, each followed by a newline, as LLaVA-NeXT puts ``<image>`` at the front of the turn.
"""

from __future__ import annotations

from vidrip.model.presets import Preset
from vidrip.model.tokenizer import load_qwen2_tokenizer

__all__ = ["CHAT_TEMPLATE", "SYSTEM_PROMPT", "build_processor", "make_processor"]

SYSTEM_PROMPT = "You are a helpful assistant."

CHAT_TEMPLATE = (
    "{%- set system = '" + SYSTEM_PROMPT + "' -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set system = messages[0]['content'] -%}"
    "{%- else -%}{%- set system = messages[0]['content'] | selectattr('type', 'equalto', 'text')"
    " | map(attribute='text') | join('\\n') -%}{%- endif -%}"
    "{%- set messages = messages[1:] -%}"
    "{%- endif -%}"
    "{{- '<|im_start|>system\\n' + system + '<|im_end|>\\n' -}}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] if part['type'] in ('image', 'video') -%}"
    "{{- '<' + part['type'] + '>\\n' -}}"
    "{%- endfor -%}"
    "{{- message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('\\n') -}}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def build_processor(preset: Preset, tokenizer=None, video_newline: str = "one_token"):
    """The processor for ``preset`` with the real Qwen2 tokenizer and our chat template."""
    return make_processor(
        preset.image_size, preset.vision["patch_size"], preset.grid_pinpoints, video_newline, tokenizer=tokenizer
    )


def make_processor(
    image_size: int, patch_size: int, grid_pinpoints: list[list[int]], video_newline: str = "one_token", tokenizer=None
):
    """A ``LlavaOnevisionProcessor`` (a :class:`GridNewlineProcessor` for the ``grid`` video layout)."""
    from transformers import LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor

    from vidrip.model.grid_newline import GridNewlineProcessor

    size = {"height": image_size, "width": image_size}
    image_processor = LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=grid_pinpoints)
    video_processor = LlavaOnevisionVideoProcessor(size=size)
    cls = GridNewlineProcessor if video_newline == "grid" else LlavaOnevisionProcessor
    return cls(
        image_processor=image_processor,
        tokenizer=tokenizer if tokenizer is not None else load_qwen2_tokenizer(),
        video_processor=video_processor,
        num_image_tokens=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="full",
        chat_template=CHAT_TEMPLATE,
        vision_aspect_ratio="anyres_max_9",
    )
