"""Memory plan of a training stage, per worker: parameters, gradients, optimizer state, activations.

Run as::

    vidrip train --config jobs/configs/train_ov7b.yaml --dry-run      # prints the plan, trains nothing

Counts come from the model itself, built on PyTorch's ``meta`` device (no memory, no weights) with the
stage's trainable parts applied, so LoRA and frozen parts count as they will train. Model states follow
DeepSpeed's accounting (its ``estimate_zero2_model_states_mem_needs`` gives the same total for a fully
trainable model in bf16; the plan prints DeepSpeed's figure for the trainable part beside ours):

- bf16 (GPU), per trainable parameter: 2 bytes of weights, 2 + 4 bytes of gradients (16-bit and the
  fp32 copy the optimizer steps on), 4 + 8 bytes of optimizer state (fp32 master weights, Adam's m and v).
  Frozen parameters: 2 bytes of weights only.
- fp32 (CPU): 4 bytes of weights, 4 of gradients, 8 of Adam state.
- ZeRO-2 partitions gradients and optimizer state over the workers; ZeRO-3 partitions the weights too
  and holds the largest layer whole (weights and gradient) while it computes; no ZeRO (plain DDP)
  partitions nothing.

Activations, per micro-batch, for the longest sample a stage can produce (an ``anyres_max_9`` image or
``max_frames`` video frames, plus ``text_tokens``): each LLM layer keeps ``34 * s * h`` 16-bit values
(Korthikanti et al., 2022; attention scores are not kept with SDPA), ``2 * s * h`` with gradient
checkpointing (plus one layer recomputed); the vision tower likewise over its patches, only when it
trains; and the logits, ``s * vocab`` in the training dtype plus an fp32 copy for the loss.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from vidrip.model.layout import video_newline, video_token_count
from vidrip.model.loading import ModelConfig
from vidrip.train.stages import StageSpec

__all__ = ["GIB", "MemoryPlan", "ParameterCounts", "count_parameters", "default_capacity_gib", "memory_plan"]

GIB = 1024**3
ANYRES_MAX_TILES = 9


@dataclass(frozen=True)
class ParameterCounts:
    config: object  # the model's LlavaOnevisionConfig
    total: int
    trainable: int
    largest_layer: int  # parameters of the biggest single module (what ZeRO-3 gathers at once)
    vision_trainable: bool


@dataclass(frozen=True)
class MemoryPlan:
    stage: int
    workers: int
    zero_stage: int  # 0: no ZeRO (plain DDP)
    dtype: str
    params: ParameterCounts
    sequence_tokens: int
    per_worker_bytes: dict[str, int]  # parameters, gradients, optimizer, activations
    deepspeed_estimate_bytes: int | None  # DeepSpeed's estimator for the same model states (bf16 only)
    capacity_bytes: int

    @property
    def total_bytes(self) -> int:
        return sum(self.per_worker_bytes.values())

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.capacity_bytes

    def table(self) -> str:
        zero = f"ZeRO-{self.zero_stage}" if self.zero_stage else "no ZeRO (DDP)"
        lines = [
            f"stage {self.stage}: {self.workers} worker(s), {zero}, {self.dtype}; "
            f"{self.params.total / 1e6:,.1f}M parameters, {self.params.trainable / 1e6:,.1f}M trainable; "
            f"longest sample {self.sequence_tokens:,} tokens",
        ]
        for name, value in self.per_worker_bytes.items():
            lines.append(f"  {name:12s} {value / GIB:9.2f} GiB per worker")
        lines.append(f"  {'total':12s} {self.total_bytes / GIB:9.2f} GiB of {self.capacity_bytes / GIB:.1f} GiB")
        if self.deepspeed_estimate_bytes is not None:
            lines.append(
                f"  (DeepSpeed's estimator, trainable weights' model states: "
                f"{self.deepspeed_estimate_bytes / GIB:.2f} GiB)"
            )
        lines.append("  fits" if self.fits else "  DOES NOT FIT")
        return "\n".join(lines)


def count_parameters(model_cfg: ModelConfig, spec: StageSpec) -> ParameterCounts:
    """Parameter counts of ``model_cfg``'s model as ``spec`` trains it, built on the meta device (from the
    preset's shape when its component checkpoints are not on this machine)."""
    import torch

    from vidrip.model.grid_newline import LlavaOnevisionVideoLayoutForConditionalGeneration as Model
    from vidrip.model.loading import model_config
    from vidrip.train.trainable import apply_trainable, part_of

    try:
        config = model_config(model_cfg)
    except FileNotFoundError:  # components not downloaded here: their shape is the preset's
        if model_cfg.checkpoint is not None:
            raise
        config = model_config(model_cfg.model_copy(update={"vision_tower": None, "llm": None}))
    with torch.device("meta"):
        model = apply_trainable(Model(config), spec)
    seen, total, trainable, vision = set(), 0, 0, False
    for name, p in model.named_parameters():
        if id(p) in seen:  # tied embeddings count once
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
            vision = vision or part_of(name) == "vision_tower"
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return ParameterCounts(
        config=config, total=total, trainable=trainable, largest_layer=largest, vision_trainable=vision
    )


def _sequence_tokens(config, spec: StageSpec, text_tokens: int) -> tuple[int, int]:
    """(LLM tokens, vision-tower patches) of the longest sample: an anyres image or ``max_frames`` frames."""
    side = config.vision_config.image_size // config.vision_config.patch_size
    frames = spec.frames.max_frames if spec.frames.rule == "fps" else spec.frames.num_frames
    image = side * side * (1 + ANYRES_MAX_TILES) + side * math.isqrt(ANYRES_MAX_TILES)  # tiles + row newlines
    video = video_token_count(frames, side, video_newline(config))
    patches = max(side * side * (1 + ANYRES_MAX_TILES), side * side * frames)
    return max(image, video) + text_tokens, patches


def _zero_stage(deepspeed_config: dict | None) -> int:
    if not deepspeed_config:
        return 0
    return int(deepspeed_config.get("zero_optimization", {}).get("stage", 0))


def default_capacity_gib(use_gpu: bool, workers_per_node: int) -> float:
    """80 GiB (an H100) on GPU; this machine's memory shared by its workers on CPU."""
    if use_gpu:
        return 80.0
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB / max(1, workers_per_node)


def memory_plan(
    model_cfg: ModelConfig,
    spec: StageSpec,
    *,
    workers: int,
    use_gpu: bool,
    deepspeed_config: dict | None,
    capacity_gib: float,
    per_device_batch_size: int = 1,
    gradient_checkpointing: bool = False,
    text_tokens: int = 512,
) -> MemoryPlan:
    counts = count_parameters(model_cfg, spec)
    zero = _zero_stage(deepspeed_config)
    n, trainable, frozen = workers, counts.trainable, counts.total - counts.trainable
    if use_gpu:  # bf16 mixed precision
        weight, grads, optim = 2, 2 + 4, 4 + 8
    else:  # fp32
        weight, grads, optim = 4, 4, 8
    params = weight * (trainable + frozen)
    if zero >= 3:
        params = math.ceil(params / n) + weight * counts.largest_layer * 2  # shard + the gathered layer and its grad
    gradients = grads * trainable if zero == 0 else math.ceil(grads * trainable / n)
    optimizer = optim * trainable if zero == 0 else math.ceil(optim * trainable / n)

    tokens, patches = _sequence_tokens(counts.config, spec, text_tokens)
    text, vision = counts.config.text_config, counts.config.vision_config
    act_bytes = 2 if use_gpu else 4
    b = per_device_batch_size
    kept = 2 if gradient_checkpointing else 34  # 16-bit values kept per token and hidden unit, per layer
    llm = kept * tokens * b * text.hidden_size * text.num_hidden_layers
    if gradient_checkpointing:
        llm += 34 * tokens * b * text.hidden_size  # the one layer being recomputed
    tower = 0
    if counts.vision_trainable:
        tower = kept * patches * b * vision.hidden_size * vision.num_hidden_layers
    logits = tokens * b * text.vocab_size * (act_bytes + 4)
    activations = (llm + tower) * act_bytes // 2 + logits

    estimate = None
    if use_gpu and zero in (2, 3):
        estimate = _deepspeed_estimate(trainable, counts.largest_layer, n, zero)
    return MemoryPlan(
        stage=spec.index,
        workers=n,
        zero_stage=zero,
        dtype="bf16" if use_gpu else "fp32",
        params=counts,
        sequence_tokens=tokens,
        per_worker_bytes={
            "parameters": params,
            "gradients": gradients,
            "optimizer": optimizer,
            "activations": activations,
        },
        deepspeed_estimate_bytes=estimate,
        capacity_bytes=int(capacity_gib * GIB),
    )


def _deepspeed_estimate(trainable: int, largest_layer: int, workers: int, zero: int) -> int:
    """DeepSpeed's own estimator (no offload, no extra buffer) for ``trainable`` parameters on one node."""
    if zero == 2:
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        return estimate_zero2_model_states_mem_needs(
            trainable, num_gpus_per_node=workers, cpu_offload=False, additional_buffer_factor=1
        )[1]
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    return estimate_zero3_model_states_mem_needs(
        trainable, largest_layer, num_gpus_per_node=workers, cpu_offload=False, additional_buffer_factor=1
    )[1]
