"""``vidrip serve``: deploy a Serve config YAML (``serve_apps/tiny.yaml``) on a local Ray head and keep it up.

    vidrip serve [--config serve_apps/tiny.yaml] [--workdir work] [--port 8000] [key=value ...]

The YAML is the one ``serve run`` takes; its first application's ``args`` (a :class:`ServeConfig`) take
the ``key=value`` overrides. Relative paths in them are made absolute, ``tracking_uri`` defaults to the
work directory's MLflow store, and when no key is configured one is generated and printed: the endpoint
is never open by accident. Ctrl-C stops the app and the Ray head this command started, nothing else.

On a shared cluster vidrip leaves everything it did not deploy alone: a Serve instance already running is
reused as it is (its HTTP host and port; the YAML's ``http_options`` then do not apply), and only the
application deployed here is removed afterwards (``serve.delete(name)``, never ``serve.shutdown()``, which
would stop every application on the cluster). Deploying replaces an application of the same name, as
``serve run`` does: give yours another ``name`` and ``route_prefix``.

    with served(load_serve_yaml("serve_apps/tiny.yaml", ["adapters.vidrip-video=..."]), workdir) as ep:
        openai.OpenAI(base_url=ep.base_url, api_key=ep.api_key)
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from vidrip.config import ConfigError, apply_overrides, located
from vidrip.runtime import RayConfig, ray_session
from vidrip.serve.config import ServeConfig
from vidrip.tracking import Lineage, TrackingConfig, resolve_tracking_uri

__all__ = [
    "Endpoint",
    "ServeYaml",
    "deploy",
    "deploy_detached",
    "load_serve_yaml",
    "resolve_for_local",
    "running_serve_http",
    "served",
    "served_revisions",
]

log = logging.getLogger(__name__)


@dataclass
class ServeYaml:
    """What ``vidrip serve`` needs from a Serve config file."""

    config: ServeConfig
    name: str
    route_prefix: str
    host: str
    port: int


@dataclass
class Endpoint:
    url: str
    api_key: str | None
    name: str
    generated_key: bool = False

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


def load_serve_yaml(path: str | Path, overrides: list[str] = ()) -> ServeYaml:
    """The first application of a Serve config YAML (or a packaged one's name: ``serve_tiny``), its ``args``
    validated as a :class:`ServeConfig`."""
    from pydantic import ValidationError

    p, source = located(path)
    if not p.is_file():
        raise ConfigError(f"{source}: config file not found")
    data = yaml.safe_load(p.read_text()) or {}
    apps = data.get("applications") or []
    if not apps:
        raise ConfigError(f"{source}: no 'applications' in this Serve config")
    app = apps[0]
    args = apply_overrides(app.get("args") or {}, overrides, f"{source} (command-line override)")
    try:
        config = ServeConfig.model_validate(args)
    except ValidationError as exc:
        lines = [
            f"{source}: applications[0].args.{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()
        ]
        raise ConfigError("\n".join(lines)) from None
    http = data.get("http_options") or {}
    return ServeYaml(
        config=config,
        name=app.get("name", "vidrip"),
        route_prefix=app.get("route_prefix", "/"),
        host=http.get("host", "127.0.0.1"),
        port=int(http.get("port", 8000)),
    )


def _absolute(ref: str | None) -> str | None:
    """A relative local path made absolute (registry references and hub ids are left alone)."""
    if ref is None or ref.startswith("models:/") or not Path(ref).exists():
        return ref
    return str(Path(ref).resolve())


def resolve_for_local(cfg: ServeConfig, workdir: Path) -> tuple[ServeConfig, bool]:
    """Paths absolute, the work directory's MLflow store, and a key (generated when none is set: True)."""
    update: dict = {
        "model": cfg.model.model_copy(update={"checkpoint": _absolute(cfg.model.checkpoint)}),
        "adapters": {name: _absolute(ref) for name, ref in cfg.adapters.items()},
        "media": cfg.media.model_copy(update={"root": _absolute(cfg.media.root)}),
        "tracking_uri": cfg.tracking_uri or resolve_tracking_uri(TrackingConfig(), workdir),
    }
    generated = cfg.resolved_api_key() is None
    if generated:
        update["api_key"] = secrets.token_urlsafe(24)
    return cfg.model_copy(update=update), generated


def running_serve_http() -> tuple[str, int] | None:
    """The HTTP host and port of the Serve instance already running on the connected cluster (None: none).
    Ray has no public call that reads them; Serve's own controller client holds them."""
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return None
    return client.http_config.host, client.http_config.port


def deploy_detached(spec: ServeYaml, workdir: str | Path) -> Endpoint:
    """The app deployed on the Ray cluster this process is connected to; it stays up after this process
    ends (Serve's controller is detached), until ``serve.delete(name)`` or the cluster stops. A running
    Serve instance is reused with its own HTTP options."""
    from ray import serve

    from vidrip.serve.app import build_app

    cfg, generated = resolve_for_local(spec.config, Path(workdir).resolve())
    running = running_serve_http()
    if running is None:
        serve.start(http_options={"host": spec.host, "port": spec.port})
        host, port = spec.host, spec.port
    else:
        host, port = running
        if (host, port) != (spec.host, spec.port):
            log.info("Serve already runs here with HTTP on %s:%d: %s is deployed there", host, port, spec.name)
    serve.run(build_app(cfg), name=spec.name, route_prefix=spec.route_prefix)
    if host in ("0.0.0.0", "::"):  # listening everywhere: this process reaches it on loopback
        host = "127.0.0.1"
    url = f"http://{host}:{port}{spec.route_prefix.rstrip('/')}"
    return Endpoint(url=url, api_key=cfg.resolved_api_key(), name=spec.name, generated_key=generated)


@contextlib.contextmanager
def deploy(spec: ServeYaml, workdir: str | Path) -> Iterator[Endpoint]:
    """The app deployed on the Ray cluster this process is connected to, for the block; then that app alone
    is deleted (other applications, and Serve itself, stay as they were)."""
    from ray import serve

    try:
        yield deploy_detached(spec, workdir)
    finally:
        serve.delete(spec.name)


@contextlib.contextmanager
def served(spec: ServeYaml, workdir: str | Path, ray: RayConfig | None = None) -> Iterator[Endpoint]:
    """:func:`deploy` on a local head (or ``ray.address``); everything it started stops after the block."""
    with ray_session(ray or RayConfig(), workdir), deploy(spec, workdir) as endpoint:
        yield endpoint


def served_revisions(serve_cfg: ServeConfig, lineage: Lineage) -> dict[str, str]:
    """What each model of a Serve app is, for an evaluation's tags and cache: an adapter's registry version
    and the run that made it, or its folder; the base model's checkpoint."""
    import json

    out, folders = {}, []
    for name, ref in serve_cfg.adapters.items():
        if ref.startswith("models:/"):
            version = lineage.registry_version(ref, f"adapters.{name}")
            out[name] = f"{ref} = version {version.version} of MLflow run {version.run_id} ({version.source})"
            folders.append(Path(version.source))
        else:
            out[name] = str(Path(ref).resolve())
            folders.append(Path(ref))
    base = serve_cfg.model.checkpoint
    if base is None and folders and (folders[0] / "adapter_config.json").is_file():
        base = json.loads((folders[0] / "adapter_config.json").read_text())["base_model_name_or_path"]
    out[serve_cfg.served_name] = base or f"{serve_cfg.model.preset} preset"
    return out
