"""Convert a LLaVA-NeXT ``llava_qwen`` checkpoint (ViDRiP's released format) to Hugging Face LLaVA-OneVision.

Run as::

    vidrip convert --checkpoint ViDRiP_LLaVA_video --out work/models/vidrip-converted
    vidrip convert --checkpoint ViDRiP_LLaVA_lora --base llava-onevision-qwen2-7b-ov --out ...

Input: a folder with LLaVA-NeXT's ``config.json`` (``LlavaQwenForCausalLM``) and its weights
(``*.safetensors`` or ``pytorch_model*.bin``, sharded or not); or a LoRA folder (``adapter_config.json``,
``adapter_model.{safetensors,bin}``, ``non_lora_trainables.bin``) on such a base (``--base``, else the
adapter's ``base_model_name_or_path`` as a local folder). Output: a standalone Hugging Face checkpoint
that :func:`vidrip.model.loading.load_model` (and ``LlavaOnevisionForConditionalGeneration`` for the
``one_token`` layout) loads, with our processor and a ``vidrip_conversion.json`` saying where it came from.

A LoRA pair is merged (``W + alpha/r * B @ A``) as LLaVA-NeXT's own loader does: its
``non_lora_trainables.bin`` holds every part trained in full, which for ViDRiP's stage 3 is nearly the
whole model (LLaVA-NeXT also unfroze the LLM, its issue 508), so an adapter-only output would save
nothing. Weights stream shard by shard; a 7B checkpoint never sits in memory twice.

Names: ``model.vision_tower.vision_tower.vision_model.*`` -> ``model.vision_tower.*``,
``model.mm_projector.{0,2}`` -> ``model.multi_modal_projector.linear_{1,2}``, ``model.image_newline``
stays, the Qwen2 LLM's ``model.*`` -> ``model.language_model.*``, ``lm_head`` stays. LLaVA-NeXT's SigLIP
tower already dropped its last layer and feeds the projector the last remaining layer's output: that
is ``vision_feature_layer=-1`` here, whatever ``mm_vision_select_layer`` says. The video token layout
comes from ``mm_newline_position`` (absent: ``one_token``; LLaVA-NeXT's training default is ``grid``).

Converted weights keep their licence (ViDRiP's: CC BY-NC-ND 3.0). Research use only, not for clinical
decisions.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from pathlib import Path

from vidrip.model.layout import LAYOUT_KEY, video_newline

__all__ = ["ConversionError", "convert_llava_next", "hf_key"]

KNOWN_TOWER_HEADS = {"google/siglip-so400m-patch14-384": 16}  # the paper's tower; other towers need a local config
_RULES = [
    (re.compile(r"^model\.vision_tower\.vision_tower\.vision_model\.(.+)$"), r"model.vision_tower.\1"),
    (re.compile(r"^model\.mm_projector\.0\.(weight|bias)$"), r"model.multi_modal_projector.linear_1.\1"),
    (re.compile(r"^model\.mm_projector\.2\.(weight|bias)$"), r"model.multi_modal_projector.linear_2.\1"),
    (re.compile(r"^model\.image_newline$"), "model.image_newline"),
    (re.compile(r"^model\.((?:embed_tokens|layers|norm)\..+)$"), r"model.language_model.\1"),
    (re.compile(r"^lm_head\.weight$"), "lm_head.weight"),
]
_SKIPPED = re.compile(r"(\.rotary_emb\.inv_freq|\.vision_model\.head\..+)$")  # buffers; the unused SigLIP head


class ConversionError(ValueError):
    """The checkpoint cannot be converted; the message names the file and the key or field."""


def hf_key(name: str, source: str = "checkpoint") -> str | None:
    """The Hugging Face LLaVA-OneVision name of LLaVA-NeXT weight ``name`` (None: not a weight to keep)."""
    if _SKIPPED.search(name):
        return None
    for pattern, repl in _RULES:
        if pattern.match(name):
            return pattern.sub(repl, name)
    raise ConversionError(f"{source}: weight '{name}' has no LLaVA-OneVision counterpart (not a llava_qwen weight?)")


def _peft_name(name: str) -> str:
    """``base_model.model.model.layers.0.q_proj.base_layer.weight`` -> ``model.layers.0.q_proj.weight``."""
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")


def _weight_files(folder: Path) -> list[Path]:
    found = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    found = [f for f in found if not f.name.startswith("adapter_model")]
    if not found:
        raise ConversionError(f"{folder}: no weights (*.safetensors or pytorch_model*.bin)")
    return found


def _read(path: Path) -> dict:
    """All tensors of one file (``.bin`` memory-mapped, so only what is used is read)."""
    import torch
    from safetensors.torch import load_file

    if path.suffix == ".safetensors":
        return load_file(str(path))
    return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)


def _json(path: Path) -> dict:
    if not path.is_file():
        raise ConversionError(f"{path}: not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConversionError(f"{path}: not JSON ({exc})") from None


def _require(cfg: dict, source: Path, key: str, allowed: tuple, default=None):
    value = cfg.get(key, default)
    if value not in allowed:
        raise ConversionError(f"{source}: field '{key}' is {value!r}; supported: {', '.join(map(repr, allowed))}")
    return value


def _llava_config(path: Path) -> dict:
    cfg = _json(path)
    if "LlavaQwenForCausalLM" not in (cfg.get("architectures") or []):
        raise ConversionError(
            f"{path}: field 'architectures' is {cfg.get('architectures')!r}; expected a LLaVA-NeXT "
            "'LlavaQwenForCausalLM' checkpoint"
        )
    _require(cfg, path, "mm_projector_type", ("mlp2x_gelu",))
    _require(cfg, path, "mm_spatial_pool_mode", ("bilinear",), default="bilinear")
    _require(cfg, path, "mm_spatial_pool_stride", (None, 2))
    _require(cfg, path, "mm_patch_merge_type", ("spatial_unpad",), default="spatial_unpad")
    _require(cfg, path, LAYOUT_KEY, ("one_token", "grid"), default="one_token")
    return cfg


def _vision_config(llava: dict, shapes: dict, source: Path):
    """SigLIP's config from the weights' shapes, plus the head count from the tower's own config."""
    from transformers import SiglipVisionConfig

    prefix = "model.vision_tower."
    patch = shapes[prefix + "embeddings.patch_embedding.weight"]
    positions = shapes[prefix + "embeddings.position_embedding.weight"][0]
    layers = {int(k.split(".")[4]) for k in shapes if k.startswith(prefix + "encoder.layers.")}
    tower = llava.get("mm_vision_tower")
    tower_cfg = Path(tower) / "config.json" if tower else None
    if tower_cfg is not None and tower_cfg.is_file():
        found = _json(tower_cfg)
        found = found.get("vision_config", found)
        heads, eps = found["num_attention_heads"], found.get("layer_norm_eps", 1e-6)
    elif tower in KNOWN_TOWER_HEADS:
        heads, eps = KNOWN_TOWER_HEADS[tower], 1e-6
    else:
        raise ConversionError(
            f"{source}: field 'mm_vision_tower' is {tower!r}: cannot tell its attention heads; "
            "set it to a local folder holding the tower's config.json"
        )
    return SiglipVisionConfig(
        hidden_size=patch[0],
        patch_size=patch[-1],
        image_size=math.isqrt(positions) * patch[-1],
        intermediate_size=shapes[prefix + "encoder.layers.0.mlp.fc1.weight"][0],
        num_hidden_layers=len(layers),
        num_attention_heads=heads,
        layer_norm_eps=eps,
        vision_use_head=False,
    )


def _hf_config(llava: dict, shapes: dict, source: Path):
    from transformers import LlavaOnevisionConfig, Qwen2Config

    text_keys = (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "vocab_size",
        "max_position_embeddings",
        "rope_theta",
        "rms_norm_eps",
        "tie_word_embeddings",
    )
    text = Qwen2Config(**{k: llava[k] for k in text_keys if k in llava})
    if text.vocab_size < 151_648:
        raise ConversionError(f"{source}: field 'vocab_size' is {text.vocab_size}: no room for <image>/<video> ids")
    vision = _vision_config(llava, shapes, source)
    config = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=151_646,
        video_token_index=151_647,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=llava.get("image_grid_pinpoints"),
        vision_aspect_ratio=llava.get("image_aspect_ratio", "anyres_max_9"),
        tie_word_embeddings=text.tie_word_embeddings,
    )
    setattr(config, LAYOUT_KEY, llava.get(LAYOUT_KEY) or "one_token")
    return config


def _lora_deltas(folder: Path) -> tuple[dict, dict]:
    """``{hf weight name: (A, B)}`` and the adapter config (scale = alpha / r, or alpha / sqrt(r) with rsLoRA)."""
    adapter_cfg = _json(folder / "adapter_config.json")
    files = [folder / "adapter_model.safetensors", folder / "adapter_model.bin"]
    file = next((f for f in files if f.is_file()), None)
    if file is None:
        raise ConversionError(f"{folder}: no adapter_model.safetensors or adapter_model.bin")
    pairs: dict[str, dict[str, object]] = {}
    for name, tensor in _read(file).items():
        m = re.match(r"^(.+)\.lora_([AB])(?:\.default)?\.weight$", _peft_name(name))
        if m is None:
            raise ConversionError(f"{file}: '{name}' is not a LoRA A/B weight")
        target = hf_key(m.group(1) + ".weight", str(file))
        pairs.setdefault(target, {})[m.group(2)] = tensor
    incomplete = [k for k, ab in pairs.items() if set(ab) != {"A", "B"}]
    if incomplete:
        raise ConversionError(f"{file}: LoRA weights without their A or B half: {incomplete[:3]}")
    return {k: (ab["A"], ab["B"]) for k, ab in pairs.items()}, adapter_cfg


def _lora_scale(adapter_cfg: dict) -> float:
    r, alpha = adapter_cfg["r"], adapter_cfg.get("lora_alpha", adapter_cfg["r"])
    return alpha / math.sqrt(r) if adapter_cfg.get("use_rslora") else alpha / r


def _converted(files: list[Path]) -> Iterator[dict]:
    """Each weight file's tensors under their Hugging Face names, one file at a time."""
    for file in files:
        tensors = ((hf_key(name, str(file)), tensor) for name, tensor in _read(file).items())
        yield {key: tensor for key, tensor in tensors if key is not None}


def convert_llava_next(checkpoint: str | Path, out: str | Path, base: str | Path | None = None) -> Path:
    """Convert ``checkpoint`` (full, or LoRA on ``base``) into a Hugging Face checkpoint folder ``out``."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import LlavaOnevisionForConditionalGeneration

    from vidrip.model.processor import make_processor

    ckpt, out = Path(checkpoint), Path(out)
    lora = (ckpt / "adapter_config.json").is_file()
    overrides, deltas, adapter_cfg = {}, {}, {}
    if lora:
        deltas, adapter_cfg = _lora_deltas(ckpt)
        base = Path(base or adapter_cfg.get("base_model_name_or_path") or "")
        if not (base / "config.json").is_file():
            raise ConversionError(
                f"{ckpt}: a LoRA checkpoint needs its base model as a local folder (--base); "
                f"'base_model_name_or_path' is {adapter_cfg.get('base_model_name_or_path')!r}"
            )
        non_lora = ckpt / "non_lora_trainables.bin"
        if non_lora.is_file():
            overrides = {hf_key(_peft_name(k), str(non_lora)): v for k, v in _read(non_lora).items()}
            overrides.pop(None, None)
        weights_dir = base
        config_path = ckpt / "config.json" if (ckpt / "config.json").is_file() else base / "config.json"
    else:
        weights_dir, config_path = ckpt, ckpt / "config.json"
    llava = _llava_config(config_path)
    files = _weight_files(weights_dir)

    shapes: dict[str, tuple] = {}
    for file in files:  # shapes first (headers only for safetensors), to build and check the config
        if file.suffix == ".safetensors":
            with safe_open(str(file), "pt") as f:
                keys = {k: f.get_slice(k).get_shape() for k in f.keys()}  # noqa: SIM118 (not a dict)
        else:
            keys = {k: tuple(v.shape) for k, v in _read(file).items()}
        shapes.update({hf: tuple(s) for k, s in keys.items() if (hf := hf_key(k, str(file))) is not None})
    config = _hf_config(llava, shapes, config_path)
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in LlavaOnevisionForConditionalGeneration(config).state_dict().items()}
    if config.tie_word_embeddings:  # the embeddings are the output layer
        expected.pop("lm_head.weight")
        shapes.pop("lm_head.weight", None)
        overrides.pop("lm_head.weight", None)
    have = {**shapes, **{k: tuple(v.shape) for k, v in overrides.items()}}
    missing, unexpected = sorted(set(expected) - set(have)), sorted(set(have) - set(expected))
    wrong = sorted(k for k in set(expected) & set(have) if expected[k] != have[k])
    if missing or unexpected or wrong:
        raise ConversionError(
            f"{weights_dir}: weights do not match the model its config describes: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shape {[(k, have[k], expected[k]) for k in wrong[:5]]}"
        )
    unknown_targets = sorted(set(deltas) - set(expected))
    if unknown_targets:
        raise ConversionError(f"{ckpt}: LoRA on weights the model does not have: {unknown_targets[:5]}")

    out.mkdir(parents=True, exist_ok=True)
    scale = _lora_scale(adapter_cfg) if lora else 0.0
    weight_map: dict[str, str] = {}
    pending = dict(overrides)
    for i, tensors in enumerate(_converted(files)):
        if config.tie_word_embeddings:
            tensors.pop("lm_head.weight", None)
        tensors.update({key: pending.pop(key) for key in list(tensors) if key in pending})  # trained in full
        if i == len(files) - 1:
            tensors.update(pending)  # trained parts the base's files did not hold
        for key in tensors.keys() & deltas.keys():  # LoRA, on top of whatever the base weight now is
            a, b = deltas[key]
            w = tensors[key]
            tensors[key] = (w.float() + scale * (b.float() @ a.float())).to(w.dtype)
        name = "model.safetensors" if len(files) == 1 else f"model-{i + 1:05d}-of-{len(files):05d}.safetensors"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
    if len(files) > 1:
        index = {"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config.save_pretrained(out)
    vision = config.vision_config
    make_processor(
        vision.image_size, vision.patch_size, config.image_grid_pinpoints, video_newline(config)
    ).save_pretrained(out)
    provenance = {
        "source": str(ckpt.resolve()),
        "base": str(Path(base).resolve()) if lora else None,
        "lora": {"r": adapter_cfg["r"], "scale": scale, "merged_weights": len(deltas)} if lora else None,
        "video_newline": video_newline(config),
        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "note": "weights keep their original licence; research use only, not for clinical decisions",
    }
    (out / "vidrip_conversion.json").write_text(json.dumps(provenance, indent=2))
    return out
