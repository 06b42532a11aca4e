"""Make exactly the parts a :class:`StageSpec` names trainable, and nothing else.

Parts of LLaVA-OneVision, by parameter name:

- vision tower: ``model.vision_tower.*``
- projector: ``model.multi_modal_projector.*`` and ``model.image_newline`` (LLaVA's ``mm_mlp_adapter``)
- LLM: ``model.language_model.*`` and ``lm_head.*``

LoRA (PEFT) goes on the linear layers of the parts marked ``lora``: the LLM's attention and MLP
projections, matched by a regex anchored at ``model.language_model`` so SigLIP's own
``q_proj``/``k_proj``/``v_proj`` are never touched unless the vision tower itself is ``lora``. PEFT
freezes every base weight; parts marked ``full`` are then unfrozen by name. With ``llm: lora`` the
LLM's base weights stay frozen; ``full_and_lora`` (LLaVA-NeXT's accidental behaviour) unfreezes them.

    model = apply_trainable(model, spec)
    groups = param_groups(model, spec)      # vision tower at its own learning rate
    trainable_summary(model)                # {"vision_tower": (trainable, total), ...}
"""

from __future__ import annotations

import re

from vidrip.train.stages import StageSpec

__all__ = ["LLM_LINEAR", "PARTS", "VISION_LINEAR", "apply_trainable", "param_groups", "part_of", "trainable_summary"]

LLM_LINEAR = r".*model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
VISION_LINEAR = r".*model\.vision_tower\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])"
PARTS = {
    "vision_tower": re.compile(r"(^|\.)model\.vision_tower\."),
    "projector": re.compile(r"(^|\.)model\.(multi_modal_projector\.|image_newline$)"),
    "llm": re.compile(r"(^|\.)(model\.language_model\.|lm_head\.)"),
}


def part_of(name: str) -> str:
    """Which part a parameter belongs to (PEFT's ``base_model.model.`` prefix allowed)."""
    for part, pattern in PARTS.items():
        if pattern.search(name):
            return part
    raise ValueError(f"parameter {name!r} belongs to no known part of LLaVA-OneVision")


def _is_lora(name: str) -> bool:
    return ".lora_" in name


def apply_trainable(model, spec: StageSpec):
    """Freeze and unfreeze ``model`` as ``spec`` says; returns the model (a PEFT model for LoRA stages)."""
    modes = {"vision_tower": spec.vision_tower, "projector": spec.projector, "llm": spec.llm}
    if spec.uses_lora:
        from peft import LoraConfig, get_peft_model

        targets = [
            pattern
            for part, pattern in (("vision_tower", VISION_LINEAR), ("llm", LLM_LINEAR))
            if modes[part] in ("lora", "full_and_lora")
        ]
        lora = LoraConfig(
            r=spec.lora.rank,
            lora_alpha=spec.lora.effective_alpha,
            lora_dropout=spec.lora.dropout,
            target_modules="|".join(f"(?:{t})" for t in targets),
            bias="none",
        )
        model = get_peft_model(model, lora)
    for name, param in model.named_parameters():
        if _is_lora(name):
            param.requires_grad = True
            continue
        param.requires_grad = modes[part_of(name)] in ("full", "full_and_lora")
    return model


def param_groups(model, spec: StageSpec) -> list[dict]:
    """Optimizer groups: the vision tower at ``vision_lr``, everything else at ``lr``; frozen ones left out."""
    vision, rest = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (vision if part_of(name) == "vision_tower" else rest).append(param)
    groups = [{"params": rest, "lr": spec.lr, "weight_decay": spec.weight_decay}]
    if vision:
        groups.append({"params": vision, "lr": spec.effective_vision_lr, "weight_decay": spec.weight_decay})
    return [g for g in groups if g["params"]]


def trainable_summary(model) -> dict[str, dict[str, int]]:
    """Per part: trainable base parameters, trainable LoRA parameters, and all base parameters."""
    out = {part: {"base_trainable": 0, "lora": 0, "base_total": 0} for part in PARTS}
    for name, param in model.named_parameters():
        part = out[part_of(name)]
        if _is_lora(name):
            part["lora"] += param.numel()
        else:
            part["base_total"] += param.numel()
            if param.requires_grad:
                part["base_trainable"] += param.numel()
    return out
