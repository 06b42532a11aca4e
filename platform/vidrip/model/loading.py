"""Build or load a LLaVA-OneVision model and its processor from a :class:`ModelConfig`.

Three ways, in this order of precedence:

1. ``checkpoint``: a full LLaVA-OneVision checkpoint (a Hugging Face hub id, or a local folder such as
   a previous stage's output) — ``from_pretrained``; or a LoRA stage's folder (``adapter_config.json``
   + ``non_lora_trainables.safetensors``), loaded onto its recorded base model as a ``PeftModel``; or a
   model registry reference, ``models:/vidrip-video@champion`` (alias) or ``models:/vidrip-video/3``
   (version), resolved through MLflow (the current tracking URI) to the folder it registered.
2. ``vision_tower`` and/or ``llm``: start a fresh model from component checkpoints, as stage 0 does
   (SigLIP-so400m + Qwen2-7B for ``ov-7b``); the projector starts random.
3. neither: the preset's config with random weights (seeded).

Hub ids resolve only from the local Hugging Face cache when ``HF_HUB_OFFLINE=1`` (vidrip's default).
The video token layout (:mod:`vidrip.model.layout`) is ``video_newline`` for a new model and the
checkpoint's own otherwise.

    cfg = ModelConfig(preset="tiny")
    model, processor = load_model(cfg), load_processor(cfg)
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from vidrip.config import StrictConfig
from vidrip.model.layout import LAYOUT_KEY, VideoNewline, video_newline
from vidrip.model.presets import PRESETS, Preset, llava_config
from vidrip.model.processor import build_processor

__all__ = ["ModelConfig", "load_model", "load_processor", "model_config", "resolve_checkpoint", "save_model"]

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


class ModelConfig(StrictConfig):
    """Which model: a preset, and optionally real weights (see module docstring)."""

    preset: Literal["tiny", "ov-7b"] = "tiny"
    checkpoint: str | None = None
    vision_tower: str | None = None
    llm: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: Literal["eager", "sdpa"] = "sdpa"
    video_newline: VideoNewline | None = Field(
        default=None,
        description="video token layout: 'one_token' or LLaVA-NeXT's 'grid'; None: the checkpoint's "
        "(one_token for a new model). A checkpoint runs only in its own layout.",
    )
    seed: int = 0

    @property
    def spec(self) -> Preset:
        return PRESETS[self.preset]


def _torch_dtype(name: str):
    import torch

    return getattr(torch, _DTYPES[name])


def _local_only(ref: str) -> bool:
    import os

    return Path(ref).exists() or os.environ.get("HF_HUB_OFFLINE") == "1"


def _component_config(cls, field: str, ref: str):
    try:
        return cls.from_pretrained(ref, local_files_only=_local_only(ref))
    except OSError:
        raise FileNotFoundError(
            f"model.{field}: {ref!r} is neither a local folder nor in the local Hugging Face cache "
            f"(vidrip runs offline); download it where there is network (`hf download {ref}`) or give a local folder"
        ) from None


def resolve_checkpoint(cfg: ModelConfig, tracking_uri: str | None = None) -> ModelConfig:
    """``cfg`` with a ``models:/name@alias`` or ``models:/name/version`` checkpoint replaced by its folder
    (looked up in the store at ``tracking_uri``; None: ``$MLFLOW_TRACKING_URI``)."""
    from vidrip.tracking import registry_version

    ref = cfg.checkpoint
    if ref is None or not ref.startswith("models:/"):
        return cfg
    return cfg.model_copy(update={"checkpoint": registry_version(ref, tracking_uri).source})


def model_config(cfg: ModelConfig):
    """The ``LlavaOnevisionConfig`` of the model ``cfg`` describes, without loading any weights."""
    import json

    from transformers import AutoConfig, Qwen2Config, SiglipVisionConfig

    cfg = resolve_checkpoint(cfg)
    if cfg.checkpoint is not None:
        ckpt = Path(cfg.checkpoint)
        if (ckpt / "adapter_config.json").is_file():
            base = json.loads((ckpt / "adapter_config.json").read_text())["base_model_name_or_path"]
            return model_config(cfg.model_copy(update={"checkpoint": base}))
        config = AutoConfig.from_pretrained(cfg.checkpoint, local_files_only=_local_only(cfg.checkpoint))
        _check_layout(cfg, config)
        return config
    vision_cfg = _component_config(SiglipVisionConfig, "vision_tower", cfg.vision_tower) if cfg.vision_tower else None
    text_cfg = _component_config(Qwen2Config, "llm", cfg.llm) if cfg.llm else None
    config = llava_config(cfg.spec, vision_config=vision_cfg, text_config=text_cfg)
    config._attn_implementation = cfg.attn_implementation
    setattr(config, LAYOUT_KEY, cfg.video_newline or "one_token")
    return config


def load_model(cfg: ModelConfig):
    """The model ``cfg`` describes, in ``cfg.dtype``, in eval mode."""
    import torch
    from transformers import Qwen2ForCausalLM, SiglipVisionModel

    from vidrip.model.grid_newline import LlavaOnevisionVideoLayoutForConditionalGeneration as Model

    cfg = resolve_checkpoint(cfg)
    dtype = _torch_dtype(cfg.dtype)
    if cfg.checkpoint is not None and (Path(cfg.checkpoint) / "adapter_config.json").is_file():
        return _load_adapter_checkpoint(cfg)
    if cfg.checkpoint is not None:
        model = Model.from_pretrained(
            cfg.checkpoint,
            dtype=dtype,
            local_files_only=_local_only(cfg.checkpoint),
            attn_implementation=cfg.attn_implementation,
        )
        _check_layout(cfg, model.config)
        return model.eval()

    config = model_config(cfg)
    torch.manual_seed(cfg.seed)
    model = Model(config)
    if cfg.vision_tower:
        tower = SiglipVisionModel.from_pretrained(cfg.vision_tower, local_files_only=_local_only(cfg.vision_tower))
        model.model.vision_tower.load_state_dict(tower.state_dict())
    if cfg.llm:
        llm = Qwen2ForCausalLM.from_pretrained(cfg.llm, local_files_only=_local_only(cfg.llm))
        model.model.language_model.load_state_dict(llm.model.state_dict())
        model.lm_head.load_state_dict(llm.lm_head.state_dict())
    return model.to(dtype).eval()


def _check_layout(cfg: ModelConfig, config) -> None:
    if cfg.video_newline is not None and cfg.video_newline != video_newline(config):
        raise ValueError(
            f"video_newline: {cfg.checkpoint} was trained with the '{video_newline(config)}' video layout; "
            f"it cannot run with '{cfg.video_newline}' (leave video_newline unset to use the checkpoint's)"
        )


def _load_adapter_checkpoint(cfg: ModelConfig):
    """A LoRA stage's checkpoint: its base model (recorded in ``adapter_config.json``), the parts trained
    in full (``non_lora_trainables.safetensors``), then the adapter on top — a ``PeftModel``."""
    import json

    from peft import PeftModel
    from safetensors.torch import load_file

    ckpt = Path(cfg.checkpoint)
    base_ref = json.loads((ckpt / "adapter_config.json").read_text())["base_model_name_or_path"]
    base = load_model(cfg.model_copy(update={"checkpoint": base_ref}))
    full = ckpt / "non_lora_trainables.safetensors"
    if full.is_file():
        trained = load_file(str(full))
        unknown = set(trained) - set(base.state_dict())
        if unknown:
            raise ValueError(f"{full}: weights not in the base model {base_ref}: {sorted(unknown)[:5]}")
        base.load_state_dict(trained, strict=False)
    return PeftModel.from_pretrained(base, str(ckpt)).to(_torch_dtype(cfg.dtype)).eval()


def load_processor(cfg: ModelConfig):
    """The processor saved with ``cfg.checkpoint`` when it has one, else the preset's."""
    import json

    from transformers import AutoProcessor

    from vidrip.model.grid_newline import GridNewlineProcessor

    cfg = resolve_checkpoint(cfg)
    saved = Path(cfg.checkpoint) / "processor_config.json" if cfg.checkpoint is not None else None
    if saved is not None and saved.is_file():
        if json.loads(saved.read_text()).get("processor_class") == GridNewlineProcessor.__name__:
            return GridNewlineProcessor.from_pretrained(cfg.checkpoint, local_files_only=True)
        return AutoProcessor.from_pretrained(cfg.checkpoint, local_files_only=True)
    return build_processor(cfg.spec, video_newline=cfg.video_newline or "one_token")


def save_model(model, processor, out_dir: str | Path) -> Path:
    """Save model and processor as one standalone Hugging Face checkpoint folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
