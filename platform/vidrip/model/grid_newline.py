"""The model and processor classes that follow a config's video newline layout (see :mod:`vidrip.model.layout`).

With ``one_token`` they behave exactly as Hugging Face's ``LlavaOnevision`` classes; with ``grid`` the
model puts the newline embedding after each pooled row of each frame and the processor writes as many
video tokens.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor
from transformers.models.llava_onevision.modeling_llava_onevision import (
    LlavaOnevisionModel,
    LlavaOnevisionPreTrainedModel,
)

from vidrip.model.layout import video_newline, video_token_count

__all__ = [
    "GridNewlineProcessor",
    "LlavaOnevisionVideoLayoutForConditionalGeneration",
    "LlavaOnevisionVideoLayoutModel",
]


class LlavaOnevisionVideoLayoutModel(LlavaOnevisionModel):
    """``LlavaOnevisionModel`` whose video features follow the config's newline layout."""

    def get_video_features(
        self, pixel_values_videos, vision_feature_layer=None, vision_feature_select_strategy=None, **kwargs
    ):
        out = super().get_video_features(
            pixel_values_videos,
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy,
            **kwargs,
        )
        if video_newline(self.config) == "one_token":
            return out
        batch, frames = pixel_values_videos.shape[:2]
        features = out.pooler_output[:, :-1]  # drop the one newline Hugging Face appends to the video
        rows = math.isqrt(features.shape[1] // frames)
        grid = features.reshape(batch, frames, rows, rows, -1)
        newline = self.image_newline.to(grid.dtype).expand(batch, frames, rows, 1, -1)
        out.pooler_output = torch.cat((grid, newline), dim=3).reshape(batch, frames * rows * (rows + 1), -1)
        return out


class LlavaOnevisionVideoLayoutForConditionalGeneration(LlavaOnevisionForConditionalGeneration):
    """``LlavaOnevisionForConditionalGeneration`` whose video tokens follow the config's layout."""

    def __init__(self, config):
        LlavaOnevisionPreTrainedModel.__init__(self, config)  # the parent's body, with the layout-aware inner model
        self.model = LlavaOnevisionVideoLayoutModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()


class GridNewlineProcessor(LlavaOnevisionProcessor):
    """``LlavaOnevisionProcessor`` that writes ``F * rows * (rows + 1)`` video tokens (the ``grid`` layout)."""

    def replace_video_token(self, video_inputs: dict, video_idx: int, **kwargs) -> str:
        processed = video_inputs["pixel_values_videos"][video_idx]
        num_frames = len(processed) if isinstance(processed, (list, tuple)) else processed.shape[0]
        return self.video_token * video_token_count(num_frames, math.isqrt(self.num_image_tokens), "grid")

    def _get_num_multimodal_tokens(self, image_sizes=None, video_sizes=None, **kwargs):
        data = super()._get_num_multimodal_tokens(image_sizes=image_sizes, video_sizes=video_sizes, **kwargs)
        if video_sizes is not None:
            side = math.isqrt(self.num_image_tokens)
            data["num_video_tokens"] = [video_token_count(f, side, "grid") for f, _, _ in video_sizes]
        return data
