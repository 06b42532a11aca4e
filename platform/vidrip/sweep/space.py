"""The search space of a sweep, written in YAML, as Ray Tune objects.

Keys are stage-3 fields in dotted form (``lr``, ``vision_lr``, ``lora.rank``, ``lora.alpha``,
``lora.dropout``, ``frames.max_frames``, ...); each value is exactly one of::

    lora.rank: {grid: [8, 32, 128]}          # every value (grid search; with Optuna: not allowed)
    lr: {loguniform: [1.0e-6, 1.0e-4]}       # sampled
    lora.dropout: {uniform: [0.0, 0.1]}
    frames.max_frames: {choice: [16, 32]}

``lora.alpha`` left out keeps the paper's rule, alpha = 2 x rank. Unknown stage fields are refused
when the sweep starts, naming the key.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from vidrip.config import StrictConfig

__all__ = ["Dimension", "apply_params", "tune_space"]


class Dimension(StrictConfig):
    """One searched field: set exactly one of ``grid``, ``choice``, ``loguniform``, ``uniform``."""

    grid: list[Any] | None = Field(default=None, min_length=1)
    choice: list[Any] | None = Field(default=None, min_length=1)
    loguniform: tuple[float, float] | None = None
    uniform: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Dimension:
        kinds = [k for k in ("grid", "choice", "loguniform", "uniform") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"give exactly one of grid, choice, loguniform, uniform (got {kinds or 'none'})")
        for kind in ("loguniform", "uniform"):
            bounds = getattr(self, kind)
            if bounds is not None and not bounds[0] < bounds[1]:
                raise ValueError(f"{kind}: the lower bound must be below the upper one, got {list(bounds)}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError("loguniform: bounds must be positive")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("grid", "choice", "loguniform", "uniform") if getattr(self, k) is not None)


def tune_space(space: dict[str, Dimension], search: str) -> dict[str, Any]:
    """``{dotted key: Ray Tune domain}``; grid dimensions are refused by Optuna, which cannot grid-search."""
    from ray import tune

    out = {}
    for key, dim in space.items():
        if dim.kind == "grid":
            if search == "optuna":
                raise ValueError(f"space.{key}: 'grid' needs search: grid (Optuna samples; use 'choice')")
            out[key] = tune.grid_search(list(dim.grid))
        elif dim.kind == "choice":
            out[key] = tune.choice(list(dim.choice))
        elif dim.kind == "loguniform":
            out[key] = tune.loguniform(*dim.loguniform)
        else:
            out[key] = tune.uniform(*dim.uniform)
    return out


def apply_params(stage: dict, params: dict[str, Any]) -> dict:
    """``stage`` (a StageSpec as a dict) with each dotted ``params`` key set; unknown keys raise KeyError."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in stage.items()}
    for key, value in params.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise KeyError(f"space.{key}: the stage has no section '{part}'")
            node = node[part]
        if leaf not in node:
            raise KeyError(f"space.{key}: the stage has no field '{leaf}'")
        node[leaf] = value
    return out
