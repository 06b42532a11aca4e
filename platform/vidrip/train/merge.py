"""Fold a stage-3 LoRA adapter into a standalone Hugging Face checkpoint.

Run as::

    vidrip merge --checkpoint work/train/stage3/.../checkpoint --out work/merged

The adapter folder names its base model (``adapter_config.json``) and carries the parts trained in full
(``non_lora_trainables.safetensors``); :func:`vidrip.model.loading.load_model` assembles both, PEFT's
``merge_and_unload`` folds ``B @ A * alpha / r`` into the base weights, and the result is saved with its
processor: an ordinary ``LlavaOnevisionForConditionalGeneration`` folder that needs no PEFT to load.
"""

from __future__ import annotations

from pathlib import Path

from vidrip.model.loading import ModelConfig, load_model, load_processor, save_model

__all__ = ["merge_adapter"]


def merge_adapter(checkpoint: str | Path, out: str | Path) -> Path:
    """Merge the LoRA checkpoint at ``checkpoint`` into its base model; save to ``out``."""
    from peft import PeftModel

    cfg = ModelConfig(checkpoint=str(checkpoint))
    model = load_model(cfg)
    if not isinstance(model, PeftModel):
        raise ValueError(f"{checkpoint}: not a LoRA checkpoint (no adapter_config.json); nothing to merge")
    merged = model.merge_and_unload()
    return save_model(merged, load_processor(cfg), out)
