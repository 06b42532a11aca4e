"""The pipeline job's config: which step configs to run, in one work directory, cluster and MLflow store.

    python jobs/pipeline.py --config jobs/configs/pipeline_tiny.yaml [name=my-run train.overrides=[max_steps=2]]
    vidrip pipeline                # the packaged pipeline_tiny, from any folder

Each step names its own job config (the file a user would give ``vidrip curate``, ``vidrip train``, ...:
a packaged config's name such as ``train_tiny``, or a path, relative to the pipeline YAML's folder)
and overrides for it; the pipeline then sets what ties the steps together (work directory, data paths,
checkpoints, endpoints, cluster, store). A step set to ``null`` is left out (``sweep``, ``eval``,
``detector``, ``instruct_llm``, ``sample``).
"""

from __future__ import annotations

from pydantic import Field

from vidrip.config import ConfigPath, StrictConfig
from vidrip.data.sample.build import SampleConfig
from vidrip.model.loading import ModelConfig
from vidrip.runtime import RayConfig
from vidrip.tracking import TrackingConfig

__all__ = ["PipelineConfig", "StepConfig"]


class StepConfig(StrictConfig):
    """A step's own job config file and ``key=value`` overrides for it."""

    config: ConfigPath = Field(description="a packaged config's name (train_tiny, ...) or a YAML file's path")
    overrides: list[str] = Field(default_factory=list)


class PipelineConfig(StrictConfig):
    """Raw video -> curated clips -> stages 0-3 -> LoRA sweep -> merged -> served -> evaluated."""

    name: str = Field(
        default="pipeline",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="the pipeline run's name: a rerun with the same name reopens its MLflow run, skips the "
        "steps done with the same config and data, and resumes the one that stopped",
    )
    workdir: str = Field(default="work", description="every step's outputs, the MLflow store, Ray's files")
    sample: SampleConfig | None = Field(
        default_factory=SampleConfig,
        description="build the embedded sample (raw videos, stage data, test set); null: sample_dir exists",
    )
    sample_dir: str | None = Field(default=None, description="with sample: null, an existing sample-shaped folder")
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(preset="tiny"))
    detector: StepConfig | None = Field(
        default_factory=lambda: StepConfig(config="train_detector"),
        description="fine-tune the tissue/person detector on the sample; null: curate's detect.weights as given",
    )
    instruct_llm: StepConfig | None = Field(
        default_factory=lambda: StepConfig(config="serve_tiny"),
        description="a Serve app deployed for the curation step as its instruction LLM; null: curate's llm "
        "section names an endpoint",
    )
    curate: StepConfig = Field(default_factory=lambda: StepConfig(config="curate"))
    train: StepConfig = Field(default_factory=lambda: StepConfig(config="train_tiny"))
    sweep: StepConfig | None = Field(
        default_factory=lambda: StepConfig(config="lora_sweep_tiny"),
        description="null: no sweep; stage 3's adapter is served",
    )
    merge: bool = Field(default=True, description="fold the served adapter into a standalone checkpoint")
    serve: StepConfig = Field(default_factory=lambda: StepConfig(config="serve_tiny"))
    eval: StepConfig | None = Field(default_factory=lambda: StepConfig(config="eval"))
    serve_port: int | None = Field(
        default=None, ge=1, le=65535, description="HTTP port of the Serve apps; None: their http_options.port"
    )
    keep_serving: bool = Field(
        default=True, description="leave the endpoint up when the job ends (Serve outlives its driver)"
    )
    ray: RayConfig = Field(default_factory=RayConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
