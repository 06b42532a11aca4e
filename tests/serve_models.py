"""Checkpoints and media the serving tests serve: a tiny base model, stage-3 LoRA adapters on it, small videos.

An adapter here is what stage 3 writes (``adapter_config.json`` + ``adapter_model.safetensors`` +
``non_lora_trainables.safetensors`` with the vision tower and projector), with weights moved by a seeded
random amount so that each adapter answers differently from the base and from the others.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vidrip.data.encode import write_mp4


def make_base(out: Path) -> Path:
    from vidrip.model.loading import ModelConfig, load_model, load_processor, save_model

    cfg = ModelConfig(preset="tiny")
    return save_model(load_model(cfg), load_processor(cfg), out)


def make_adapter(base: Path, out: Path, seed: int, rank: int = 4) -> Path:
    import torch
    from safetensors.torch import save_file

    from vidrip.model.loading import ModelConfig, load_model
    from vidrip.train.stages import default_stage
    from vidrip.train.trainable import apply_trainable

    spec = default_stage(3)
    spec = spec.model_copy(update={"lora": spec.lora.model_copy(update={"rank": rank})})
    model = apply_trainable(load_model(ModelConfig(checkpoint=str(base))), spec)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "multi_modal_projector" in name:
                param.add_(torch.randn(param.shape, generator=gen) * 0.5)
    model.peft_config["default"].base_model_name_or_path = str(base)
    model.save_pretrained(out)
    full = {
        n.removeprefix("base_model.model."): p.detach().clone()
        for n, p in model.named_parameters()
        if p.requires_grad and ".lora_" not in n
    }
    save_file(full, str(out / "non_lora_trainables.safetensors"))
    return out


def make_video(path: Path, seconds: float, size: tuple[int, int] = (64, 64), fps: int = 4, seed: int = 0) -> Path:
    """A small H.264 video of moving coloured noise (height, width = ``size``)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (size[0], size[1], 3), dtype=np.uint8)
    frames = [np.roll(base, 3 * i, axis=1) for i in range(round(seconds * fps))]
    return write_mp4(path, frames, fps=fps)
