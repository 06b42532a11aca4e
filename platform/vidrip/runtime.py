"""Start or connect to Ray on loopback, offline, with explicit ports, and keep it to ourselves.

A local head is ``ray start --head --block`` run as our own child process: every port is explicit and
bound to 127.0.0.1, Ray's temp folder is inside the work directory, token authentication is on with
a token kept in the work directory, and stopping it signals only the PID we started (never a bare
``ray stop``, which would stop every Ray instance on the machine).

    with LocalRayHead(RayConfig(), workdir) as head:
        connect(head.config, workdir)            # ray.init(address=...) with the right env
        ...

Before Ray starts, :func:`offline_env` turns off everything that phones home: Hugging Face hub,
ultralytics, docTR, MLflow telemetry and Ray usage stats. Ray's dashboard asks cloud metadata services
(169.254.169.254, metadata.google.internal) whenever ``~/ray_bootstrap_config.yaml`` is absent (see
``get_cluster_config_to_report`` in ``ray/_common/usage/usage_lib.py``); :func:`ensure_ray_bootstrap_config`
writes a minimal one (``provider: {type: local}``) where none exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import Field

from vidrip import netguard
from vidrip.config import StrictConfig
from vidrip.paths import cache_dir, console_script

__all__ = [
    "HeadConfig",
    "LocalRayHead",
    "RayConfig",
    "RayPorts",
    "apply_offline_env",
    "connect",
    "effective_offline_env",
    "ensure_ray_bootstrap_config",
    "offline_env",
    "ray_session",
]

log = logging.getLogger(__name__)
LOOPBACK = "127.0.0.1"


class RayPorts(StrictConfig):
    """Every port a Ray head opens. Defaults sit away from Ray's own so a second Ray on the host is left alone."""

    gcs: int = 26379
    dashboard: int = 28265
    client_server: int = 26001
    node_manager: int = 26380
    object_manager: int = 26381
    metrics_export: int = 26382
    dashboard_agent_listen: int = 26383
    dashboard_agent_grpc: int = 26384
    runtime_env_agent: int = 26385
    min_worker: int = 26400
    max_worker: int = 26499

    def shifted(self, offset: int) -> RayPorts:
        """The same layout moved by ``offset`` (tests run a second head beside the first)."""
        return RayPorts(**{k: v + offset for k, v in self.model_dump().items()})


class RayConfig(StrictConfig):
    """Where Ray runs. ``address=None`` starts a local head on loopback; otherwise connect to it."""

    address: str | None = None
    host: str = LOOPBACK
    ports: RayPorts = Field(default_factory=RayPorts)
    num_cpus: int | None = Field(default=None, ge=1)
    num_gpus: int | None = Field(default=None, ge=0)
    object_store_memory_mb: int = Field(default=512, ge=78)
    auth: Literal["token", "disabled"] = "token"
    start_timeout_s: float = Field(default=120.0, gt=0)

    @property
    def gcs_address(self) -> str:
        return self.address or f"{self.host}:{self.ports.gcs}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.host}:{self.ports.dashboard}"


def offline_env() -> dict[str, str]:
    """Environment variables that keep every library we use from reaching the network."""
    cache = cache_dir()
    return {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "YOLO_OFFLINE": "1",
        "YOLO_AUTOINSTALL": "0",
        "YOLO_CONFIG_DIR": str(cache / "yolo"),
        "DOCTR_CACHE_DIR": str(cache / "doctr"),
        "RAY_USAGE_STATS_ENABLED": "0",
        # With stats disabled, a `ray start` head still posts a "disabled" notice to Ray's usage server
        # (usage_stats_head._report_disabled_usage_sync); point it at a closed loopback port instead.
        "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9/",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "GIT_PYTHON_REFRESH": "quiet",
    }


def effective_offline_env() -> dict[str, str]:
    """:func:`offline_env`, except where the user has set a variable already: theirs wins, everywhere."""
    return {key: os.environ.get(key, value) for key, value in offline_env().items()}


def apply_offline_env() -> None:
    """Set :func:`effective_offline_env` in this process."""
    os.environ.update(effective_offline_env())


def ensure_ray_bootstrap_config() -> Path:
    """Make sure ``~/ray_bootstrap_config.yaml`` exists, so Ray's usage module does not probe clouds."""
    path = Path.home() / "ray_bootstrap_config.yaml"
    if not path.exists():
        path.write_text(
            "# Written by vidrip: Ray's dashboard probes cloud metadata services when this file is absent.\n"
            "provider:\n  type: local\n"
        )
        log.info("wrote %s (keeps Ray's dashboard from probing cloud metadata services)", path)
    return path


def _auth_env(cfg: RayConfig, workdir: Path, create: bool) -> dict[str, str]:
    """Token auth settings. A head we start gets a token in the work directory (``create``); when we only
    connect, that token is used if the work directory has one, else Ray finds its own
    (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``)."""
    if cfg.auth == "disabled":
        return {"RAY_AUTH_MODE": "disabled"}
    token_path = token_file(workdir)
    if not token_path.is_file():
        if not create:
            return {}
        token_path.parent.mkdir(parents=True, exist_ok=True)
        token_path.write_text(secrets.token_hex(32))
        token_path.chmod(0o600)
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}


def token_file(workdir: str | Path) -> Path:
    """Where a head started in ``workdir`` keeps its auth token."""
    return Path(workdir).resolve() / "ray" / "auth_token"


def ray_env(cfg: RayConfig, workdir: Path, *, starting_head: bool = False) -> dict[str, str]:
    """What a process needs in its environment to talk to this cluster (offline, authenticated)."""
    env = {**effective_offline_env(), **_auth_env(cfg, workdir, create=starting_head)}
    if _is_loopback_cluster(cfg):
        # our own head (or one on this machine with the same port layout): pin the dashboard, so a second
        # Ray instance on the host is never mistaken for ours (Train V2's placement-group cleaner)
        env["RAY_API_SERVER_ADDRESS"] = cfg.dashboard_url
        env[_LOOPBACK_ONLY_VAR] = "0"
    return env


# Ray replaces a loopback node address ("127.0.0.1") with the host's outward IP unless its multi-node
# mode is off (``ray._private.services.get_node_ip_address``); a local head must stay on loopback.
_LOOPBACK_ONLY_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _is_loopback_cluster(cfg: RayConfig) -> bool:
    host = cfg.host if cfg.address is None else cfg.address.rsplit(":", 1)[0].strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _refresh_imported_ray(loopback: bool) -> None:
    """Make an already imported ``ray`` see the environment just set (Ray reads some of it at import).

    Does what Ray itself does when it turns token auth on (``_enable_token_auth``): re-read RayConfig
    and the token cache; and turns multi-node mode off for a loopback cluster.
    """
    raylet = sys.modules.get("ray._raylet")
    if raylet is not None:
        raylet.Config.initialize("")
        raylet.AuthenticationTokenLoader.instance().reset_cache()
    constants = sys.modules.get("ray._private.ray_constants")
    if loopback and constants is not None:
        constants.ENABLE_RAY_CLUSTER = False


class HeadConfig(StrictConfig):
    """``vidrip head``: a Ray head on loopback kept up for ``ray job submit`` until Ctrl-C."""

    workdir: str = "work"
    ray: RayConfig = Field(default_factory=RayConfig)


class LocalRayHead:
    """A Ray head on loopback that this process started and alone stops (by its PID)."""

    def __init__(self, cfg: RayConfig, workdir: str | Path, netguard_dir: str | Path | None = None):
        if cfg.address is not None:
            raise ValueError("RayConfig.address is set: connect to that cluster instead of starting a head")
        self.config = cfg
        self.workdir = Path(workdir).resolve()
        self.netguard_dir = Path(netguard_dir) if netguard_dir is not None else None
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "ray" / "head.log"

    def env(self) -> dict[str, str]:
        env = {**os.environ, **ray_env(self.config, self.workdir, starting_head=True)}
        # `python` in a submitted job's entrypoint is this environment's interpreter
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        # On SIGTERM a head first drains its node for Serve's sake (up to 30 s whenever a worker is alive);
        # this head is the only node and stops with everything on it, so there is nowhere to drain to.
        env.setdefault("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0")
        if self.netguard_dir is not None:
            env = netguard.guard_env(self.netguard_dir, env)
        return env

    def auth_headers(self) -> dict[str, str]:
        """HTTP headers for the dashboard and job API (a Bearer token when token auth is on)."""
        token_path = token_file(self.workdir)
        if self.config.auth == "disabled" or not token_path.is_file():
            return {}
        return {"Authorization": f"Bearer {token_path.read_text().strip()}"}

    def command(self) -> list[str]:
        cfg, p = self.config, self.config.ports
        cmd = [
            console_script("ray"),
            "start",
            "--head",
            "--block",
            f"--node-ip-address={cfg.host}",
            f"--port={p.gcs}",
            f"--dashboard-host={cfg.host}",
            f"--dashboard-port={p.dashboard}",
            f"--ray-client-server-port={p.client_server}",
            f"--node-manager-port={p.node_manager}",
            f"--object-manager-port={p.object_manager}",
            f"--metrics-export-port={p.metrics_export}",
            f"--dashboard-agent-listen-port={p.dashboard_agent_listen}",
            f"--dashboard-agent-grpc-port={p.dashboard_agent_grpc}",
            f"--runtime-env-agent-port={p.runtime_env_agent}",
            f"--min-worker-port={p.min_worker}",
            f"--max-worker-port={p.max_worker}",
            f"--temp-dir={self._temp_dir()}",
            "--disable-usage-stats",
            f"--object-store-memory={cfg.object_store_memory_mb * 1024 * 1024}",
        ]
        if cfg.num_cpus is not None:
            cmd.append(f"--num-cpus={cfg.num_cpus}")
        if cfg.num_gpus is not None:
            cmd.append(f"--num-gpus={cfg.num_gpus}")
        return cmd

    def _temp_dir(self) -> Path:
        """The temp folder Ray is given: ``<workdir>/ray/tmp``, or for a deep work dir a short symlink to it
        (Ray's socket paths must stay under 107 bytes), ``/tmp/vidrip-ray-<hash of the folder>``, made at
        start and removed at stop. Either way every file Ray writes is in the work dir."""
        temp = self.workdir / "ray" / "tmp"
        if len(str(temp)) <= 40:
            return temp
        return Path("/tmp") / f"vidrip-ray-{hashlib.sha256(str(temp).encode()).hexdigest()[:12]}"

    def _make_temp_dir(self) -> None:
        temp, given = self.workdir / "ray" / "tmp", self._temp_dir()
        temp.mkdir(parents=True, exist_ok=True)
        if given == temp:
            return
        if given.exists() and not given.is_symlink():
            raise RuntimeError(f"{given} exists and is not a link to {temp}: remove it, or use a shorter work dir")
        staged = given.with_name(f"{given.name}.{os.getpid()}")
        staged.unlink(missing_ok=True)
        staged.symlink_to(temp, target_is_directory=True)
        staged.replace(given)  # atomically, over a link an earlier head of this work dir left

    def _check_ports_free(self) -> None:
        """Refuse to start when a port is taken: readiness must not be answered by another Ray's dashboard."""
        busy = []
        for name, port in self.config.ports.model_dump().items():
            if name in ("min_worker", "max_worker"):
                continue
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((self.config.host, port))
                except OSError:
                    busy.append(f"{name}={port}")
        if busy:
            raise RuntimeError(
                f"cannot start a Ray head on {self.config.host}: port(s) in use: {', '.join(busy)} "
                "(another Ray head?). Stop it, or move this one with ray.ports.* in the config."
            )

    def start(self) -> LocalRayHead:
        self._check_ports_free()
        ensure_ray_bootstrap_config()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._make_temp_dir()
        log.info("starting Ray head on %s (dashboard %s)", self.config.gcs_address, self.config.dashboard_url)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                self.command(),
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.config.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"ray start exited with code {self.proc.returncode}; log {self.log_path}:\n{tail}")
            if self._dashboard_ready():
                return self
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"Ray head not ready after {self.config.start_timeout_s:.0f}s; see {self.log_path}")

    def _dashboard_ready(self) -> bool:
        request = urllib.request.Request(f"{self.config.dashboard_url}/api/version", headers=self.auth_headers())
        try:
            with urllib.request.urlopen(request, timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the head we started: SIGTERM to our ``ray start`` PID, then SIGKILL its process group."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._end_stragglers()
        link = self._temp_dir()
        if link.is_symlink():
            link.unlink()

    def _end_stragglers(self, grace_s: float = 5.0) -> None:
        """What is left of the head's own process group once ``ray start`` has exited (Ray's agents notice that
        their raylet is gone only after a while): SIGTERM, then SIGKILL after ``grace_s``. The group is the one
        ``start`` made for this head, so nothing else on the machine is touched."""
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def submit_env(self) -> dict[str, str]:
        """What a shell needs to ``ray job submit`` or ``serve run --address`` to this head (the last needs Ray's
        multi-node mode off, or it swaps 127.0.0.1 for the host's outward address)."""
        keys = ("RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", _LOOPBACK_ONLY_VAR)
        return {k: v for k, v in ray_env(self.config, self.workdir).items() if k in keys}

    def wait(self) -> int:
        """Block until the head exits; returns its exit code."""
        return self.proc.wait()

    def __enter__(self) -> LocalRayHead:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def connect(cfg: RayConfig, workdir: str | Path, **init_kwargs):
    """``ray.init`` to ``cfg``'s cluster with the environment of :func:`ray_env` (driver and workers)."""
    import ray

    env = ray_env(cfg, Path(workdir).resolve())
    os.environ.update(env)
    _refresh_imported_ray(loopback=_is_loopback_cluster(cfg))
    runtime_env = init_kwargs.pop("runtime_env", {}) or {}
    runtime_env.setdefault("env_vars", {}).update(effective_offline_env())
    return ray.init(address=cfg.gcs_address, runtime_env=runtime_env, log_to_driver=True, **init_kwargs)


@contextlib.contextmanager
def ray_session(cfg: RayConfig, workdir: str | Path) -> Iterator[LocalRayHead | None]:
    """Connected to ``cfg``'s cluster for the block: a local head is started (and stopped) when
    ``cfg.address`` is None; the head is yielded, or None for a cluster we only joined."""
    import ray

    head = LocalRayHead(cfg, workdir).start() if cfg.address is None else None
    try:
        connect(cfg, workdir)
        yield head
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if head is not None:
            head.stop()
