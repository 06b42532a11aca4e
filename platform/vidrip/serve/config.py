"""What a vidrip endpoint serves and how it guards itself: typed, unknown keys are errors.

The Serve config YAMLs (``serve_apps/tiny.yaml``, ``serve_apps/ov7b.yaml``) pass this as the application's
``args``; ``vidrip serve --config FILE`` reads the same fields from a YAML of its own::

    cfg = ServeConfig(model=ModelConfig(preset="tiny"), adapters={"vidrip-video": "models:/vidrip-video@champion"})

Security is on by default: a key is required whenever one is configured (``api_key`` or the variable
``api_key_env`` names; ``require_api_key`` refuses to start without one), media paths stay under
``media.root``, and ``http(s)`` media may only reach public addresses unless ``media.allow_networks`` lists
others. Research use only, not for clinical decisions.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from pydantic import Field, field_validator

from vidrip.config import StrictConfig
from vidrip.data.video import FramePolicy
from vidrip.model.loading import ModelConfig

__all__ = ["BatchingConfig", "LimitsConfig", "MediaConfig", "ReplicaConfig", "ServeConfig"]


class LimitsConfig(StrictConfig):
    """Request limits; each one refused with a clear 4xx naming it."""

    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, description="request body, data: URLs included")
    max_media_bytes: int = Field(default=48 * 1024 * 1024, ge=1, description="one image or video, decoded")
    max_video_seconds: float = Field(default=20 * 60.0, gt=0)
    max_frames: int = Field(default=32, ge=1, description="frames a video may give the model (training: 32)")
    max_pixels: int = Field(default=3840 * 2160, ge=1, description="width x height of an image or video frame")
    max_media_parts: int = Field(default=1, ge=1, description="images and videos in one request")
    max_tokens: int = Field(default=1024, ge=1, description="largest max_tokens a request may ask for")
    default_max_tokens: int = Field(default=256, ge=1)
    request_timeout_s: float = Field(default=300.0, gt=0, description="a request's whole time in the app")
    fetch_timeout_s: float = Field(default=20.0, gt=0, description="downloading one http(s) media URL")


class MediaConfig(StrictConfig):
    """Where media may come from."""

    root: str | None = Field(default=None, description="folder that local media paths are read from; None: none")
    allow_networks: list[str] = Field(
        default_factory=list,
        description="CIDR blocks http(s) media may reach besides public addresses, e.g. ['127.0.0.1/32'] "
        "for a media server on this machine; loopback, private and link-local are refused otherwise",
    )
    allow_http: bool = Field(default=True, description="accept http(s) media URLs at all")
    max_redirects: int = Field(default=3, ge=0)

    @field_validator("allow_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"media.allow_networks: {item!r} is not a CIDR block ({exc})") from None
        return value


class BatchingConfig(StrictConfig):
    """Dynamic batching inside a model replica (``serve.batch``); ``max_batch_size: 1`` turns it off."""

    max_batch_size: int = Field(default=16, ge=1)
    batch_wait_timeout_s: float = Field(default=0.02, ge=0, description="serve.batch: how long a batch waits to fill")
    fill_wait_s: float = Field(
        default=0.5,
        ge=0,
        description="under load (a generation just ended), how long a short batch waits to fill before it "
        "generates; without it, steady clients settle into two half batches that take turns. An idle model "
        "never waits. About a request's round trip; 0 turns it off",
    )


class ReplicaConfig(StrictConfig):
    """Resources and autoscaling of the model deployment (the API deployment is light and has its own)."""

    num_cpus: float = Field(default=1.0, gt=0)
    num_gpus: float = Field(default=0.0, ge=0)
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    target_ongoing_requests: float = Field(default=8.0, gt=0)
    upscale_delay_s: float = Field(default=30.0, ge=0, description="load must last this long before scaling up")
    downscale_delay_s: float = Field(default=600.0, ge=0, description="idle this long before scaling down")
    look_back_period_s: float = Field(default=30.0, gt=0, description="window the ongoing requests are averaged over")
    max_ongoing_requests: int = Field(default=32, ge=1)
    max_adapters_per_replica: int = Field(default=4, ge=1)
    torch_threads: int | None = Field(
        default=None, ge=1, description="CPU threads for the model; None: what Ray gives (OMP_NUM_THREADS = num_cpus)"
    )
    health_check_period_s: float = Field(default=10.0, gt=0)
    health_check_timeout_s: float = Field(default=60.0, gt=0)
    api_num_cpus: float = Field(default=0.2, gt=0)
    api_replicas: int = Field(default=1, ge=1)
    api_max_ongoing_requests: int = Field(default=128, ge=1)


class ServeConfig(StrictConfig):
    """One endpoint: a base model, the LoRA adapters served on it, media rules, limits, key."""

    model: ModelConfig = Field(
        default_factory=ModelConfig,
        description="the base model; with no checkpoint and some adapters, the base the first adapter was "
        "trained on (stage 2's checkpoint for a stage-3 adapter)",
    )
    served_name: str = Field(default="vidrip-base", min_length=1, description="the `model` name of the base model")
    adapters: dict[str, str] = Field(
        default_factory=dict,
        description="model name -> stage-3 LoRA checkpoint folder or registry reference "
        "(models:/vidrip-video@champion)",
    )
    tracking_uri: str | None = Field(
        default=None, description="MLflow store for models:/ references; None: $MLFLOW_TRACKING_URI"
    )
    frames: FramePolicy = Field(default_factory=FramePolicy, description="video frames, sampled as in training")
    media: MediaConfig = Field(default_factory=MediaConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    replicas: ReplicaConfig = Field(default_factory=ReplicaConfig)
    api_key: str | None = Field(default=None, description="Bearer key clients must send; prefer api_key_env")
    api_key_env: str | None = Field(default="VIDRIP_API_KEY", description="environment variable holding the key")
    require_api_key: bool = Field(default=False, description="refuse to start without a key (clusters: true)")

    @field_validator("adapters")
    @classmethod
    def _adapter_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not name or any(c.isspace() for c in name):
                raise ValueError(f"adapters: {name!r} is not a usable model name")
        return value

    def resolved_api_key(self) -> str | None:
        """The key requests must carry, or None (open endpoint); raises when one is required and absent."""
        key = self.api_key or (os.environ.get(self.api_key_env) if self.api_key_env else None) or None
        if key is None and self.require_api_key:
            where = f"${self.api_key_env}" if self.api_key_env else "api_key"
            raise ValueError(f"require_api_key: this endpoint needs an API key and none is set ({where} is empty)")
        return key

    def media_root(self) -> Path | None:
        return Path(self.media.root).resolve() if self.media.root else None

    def model_names(self) -> list[str]:
        return [self.served_name, *self.adapters]
