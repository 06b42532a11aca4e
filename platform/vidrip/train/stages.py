"""The four training stages as data: what trains, at which learning rate, on which data, from where.

One place holds what differs between stages (torchtitan's lesson: no four copies of a script).
Defaults follow ViDRiP's released scripts (see ARCHITECTURE.md):

| stage | init | vision tower | projector | LLM | LR (vision) |
|---|---|---|---|---|---|
| 0 align | base components | frozen | full | frozen | 1e-3 |
| 1 image SFT | stage 0 | full | full | full | 1e-5 (2e-6) |
| 2 hybrid SFT | stage 1 | full | full | full | 1e-5 (2e-6) |
| 3 video SFT | stage 2 | full | full | LoRA r128 a256 | 1e-5 (2e-6) |

All: cosine schedule, warmup 0.03, one epoch, weight decay 0. Trainable parts are typed fields, never
LLaVA-NeXT's comma string. "LoRA means LoRA": with ``llm: lora`` the LLM's base weights stay frozen;
LLaVA-NeXT's stage 3 also unfroze them (its issue 508), which here is the explicit ``llm: full_and_lora``.

    spec = default_stage(3)
    spec = spec.model_copy(update={"lr": 2e-5})
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from vidrip.config import StrictConfig
from vidrip.data.mixture import DataSource
from vidrip.data.video import FramePolicy

__all__ = ["LoraSpec", "StageSpec", "default_stage", "default_stages"]

Trainable = Literal["frozen", "full", "lora"]
LlmTrainable = Literal["frozen", "full", "lora", "full_and_lora"]


class LoraSpec(StrictConfig):
    """LoRA on linear layers. The paper's stage 3: r=128, alpha=256 (2 x rank), dropout 0.05."""

    rank: int = Field(default=128, ge=1)
    alpha: float | None = Field(default=None, gt=0, description="None: 2 x rank, as the paper")
    dropout: float = Field(default=0.05, ge=0, lt=1)

    @property
    def effective_alpha(self) -> float:
        return self.alpha if self.alpha is not None else 2.0 * self.rank


class StageSpec(StrictConfig):
    """Everything that makes one stage different from another."""

    index: int = Field(ge=0, le=3)
    name: str
    init_from: Literal["base"] | int = Field(
        description="'base' (vision tower + LLM components) or the index of the stage whose run to start from"
    )
    vision_tower: Trainable
    projector: Literal["frozen", "full"]
    llm: LlmTrainable
    lora: LoraSpec | None = None
    lr: float = Field(gt=0)
    vision_lr: float | None = Field(default=None, gt=0, description="None: same as lr")
    data: list[DataSource] = Field(min_length=1)
    frames: FramePolicy = Field(default_factory=FramePolicy)
    epochs: float = Field(default=1.0, gt=0)
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    global_batch_size: int = Field(default=32, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> StageSpec:
        uses_lora = "lora" in (self.vision_tower, self.llm) or self.llm == "full_and_lora"
        if uses_lora and self.lora is None:
            raise ValueError("a LoRA stage needs a 'lora' section (rank, alpha, dropout)")
        if not uses_lora and self.lora is not None:
            raise ValueError("'lora' is set but no part of the model is 'lora'")
        if isinstance(self.init_from, int) and self.init_from >= self.index:
            raise ValueError(f"stage {self.index} cannot start from stage {self.init_from}")
        if (self.vision_tower, self.projector, self.llm) == ("frozen", "frozen", "frozen"):
            raise ValueError("nothing trains: every part is frozen")
        return self

    @property
    def uses_lora(self) -> bool:
        return self.lora is not None

    @property
    def effective_vision_lr(self) -> float:
        return self.vision_lr if self.vision_lr is not None else self.lr


def default_stages() -> dict[int, StageSpec]:
    """The paper's four stages, reading the sample corpus's data files."""
    sft = dict(vision_tower="full", projector="full", lr=1e-5, vision_lr=2e-6)
    return {
        0: StageSpec(
            index=0,
            name="align",
            init_from="base",
            vision_tower="frozen",
            projector="full",
            llm="frozen",
            lr=1e-3,
            data=[DataSource(file="stage0_align.json")],
        ),
        1: StageSpec(
            index=1,
            name="image_sft",
            init_from=0,
            llm="full",
            global_batch_size=8,
            data=[DataSource(file="stage1_image_sft.json")],
            **sft,
        ),
        2: StageSpec(
            index=2,
            name="hybrid_sft",
            init_from=1,
            llm="full",
            data=[DataSource(file="stage1_image_sft.json"), DataSource(file="stage2_clip_sft.json")],
            **sft,
        ),
        3: StageSpec(
            index=3,
            name="video_sft",
            init_from=2,
            llm="lora",
            lora=LoraSpec(),
            data=[DataSource(file="stage3_video_sft.json")],
            frames=FramePolicy(rule="fps", fps=1, max_frames=32),
            **sft,
        ),
    }


def default_stage(index: int) -> StageSpec:
    try:
        return default_stages()[index]
    except KeyError:
        raise ValueError(f"no stage {index}: stages are 0-3") from None
