"""Serving benchmark: concurrent `openai` clients against the Serve app, batching on and off, in one run.

Run as::

    make bench
    python jobs/bench_serve.py --config jobs/configs/bench_serve.yaml [clients=16 seconds=20]

On a local Ray head, the tiny model (random weights) answers a question about a small video that lies
under the media root, so every request decodes its frames as a real one does. Measured:

- for each ``batch_sizes`` entry (16: batching on; 1: off): ``clients`` threads with their own `openai`
  client send requests back to back for ``seconds``: requests/s, p50/p99 latency, errors; the ratio of
  the first to the last (target at 16 clients: >= 3x);
- Serve's added latency: one client through HTTP (in the unbatched mode, so no batch wait) against the
  same request answered in this process by the same :class:`~vidrip.serve.engine.Engine` (media loaded
  the same way), median of each;
- autoscaling: ``autoscale_max`` replicas allowed, load for ``autoscale_seconds``, then idle: the most
  replicas seen under load and how long they took to come back down to one.

Results go to ``<workdir>/bench_serve.json`` and ``bench_serve.md``.
"""

from __future__ import annotations

import collections
import json
import logging
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from pydantic import Field

from vidrip.config import StrictConfig
from vidrip.runtime import RayConfig, RayPorts

__all__ = ["BenchServeConfig", "format_results", "run_bench"]

log = logging.getLogger(__name__)
QUESTION = "Describe the tissue and give a diagnosis."


class BenchServeConfig(StrictConfig):
    """What to measure (see the module docstring)."""

    workdir: str = "work/bench"
    clients: int = Field(default=16, ge=1)
    seconds: float = Field(default=20.0, gt=0)
    warmup_seconds: float = Field(default=3.0, ge=0)
    batch_sizes: list[int] = Field(default_factory=lambda: [16, 1], min_length=1)
    batch_wait_timeout_s: float = Field(default=0.02, ge=0, description="how long a batch waits to fill")
    fill_wait_s: float = Field(default=0.5, ge=0, description="the engine's wait for a short batch to fill")
    max_tokens: int = Field(default=128, ge=1, description="per answer (the random model never stops early)")
    video_seconds: float = Field(default=4.0, gt=0)
    video_size: int = Field(default=128, ge=16)
    replica_cpus: float = Field(default=1.0, gt=0)
    torch_threads: int | None = Field(default=None, ge=1, description="the model replica's torch threads")
    latency_requests: int = Field(default=20, ge=1, description="in-process requests for the latency baseline")
    latency_seconds: float = Field(default=10.0, gt=0, description="one client through Serve, for its latency")
    autoscale_max: int = Field(default=2, ge=1, description="1 skips the autoscaling measure")
    autoscale_seconds: float = Field(default=30.0, gt=0)
    autoscale_cpus: float = Field(default=0.5, gt=0, description="CPUs per replica while autoscaling")
    autoscale_target_ongoing: float = Field(
        default=1.0, gt=0, description="requests per replica the autoscaler aims at"
    )
    downscale_timeout_s: float = Field(default=120.0, gt=0)
    http_port: int = Field(default=28800, ge=1, le=65535)
    ray: RayConfig = Field(default_factory=lambda: RayConfig(num_cpus=2, ports=RayPorts().shifted(3000)))


def _serve_config(cfg: BenchServeConfig, media: Path, batch: int, **replicas):
    from vidrip.serve.config import ServeConfig

    return ServeConfig.model_validate(
        {
            "model": {"preset": "tiny"},
            "media": {"root": str(media)},
            "limits": {"max_tokens": cfg.max_tokens},
            "batching": {
                "max_batch_size": batch,
                "batch_wait_timeout_s": cfg.batch_wait_timeout_s,
                "fill_wait_s": cfg.fill_wait_s,
            },
            "api_key": "bench",
            "replicas": {
                "num_cpus": cfg.replica_cpus,
                "torch_threads": cfg.torch_threads,
                "max_ongoing_requests": max(32, cfg.clients * 2),
                **replicas,
            },
        }
    )


def _messages() -> list[dict]:
    return [
        {
            "role": "user",
            "content": [{"type": "video_url", "video_url": {"url": "clip.mp4"}}, {"type": "text", "text": QUESTION}],
        }
    ]


def _client(port: int):
    import openai

    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="bench", timeout=120, max_retries=0)


def _load(port: int, clients: int, seconds: float, max_tokens: int) -> dict:
    """``clients`` threads asking back to back for ``seconds``; latencies of the requests that finished."""
    stop_at = time.monotonic() + seconds
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []

    def worker() -> None:
        client = _client(port)
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            try:
                client.chat.completions.create(model="vidrip-base", messages=_messages(), max_tokens=max_tokens)
            except Exception as exc:  # counted and reported, never hidden
                with lock:
                    errors.append(f"{type(exc).__name__}: {str(exc)[:120]}")
                continue
            with lock:
                latencies.append(time.perf_counter() - started)

    began = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(worker) for _ in range(clients)]:
            f.result()
    wall = time.monotonic() - began
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:3],
        "wall_seconds": round(wall, 2),
        "requests_per_s": round(len(latencies) / wall, 3),
        "p50_s": round(float(np.percentile(latencies, 50)), 4) if latencies else None,
        "p99_s": round(float(np.percentile(latencies, 99)), 4) if latencies else None,
    }


def _in_process(cfg: BenchServeConfig, media: Path, n: int) -> float:
    """Median seconds for the same request in this process (with a replica's torch threads): media loaded as
    the API does, then the engine."""
    from vidrip.serve.engine import Engine, GenRequest
    from vidrip.serve.media import load_media

    scfg = _serve_config(cfg, media, 1)
    # the threads a replica of `replica_cpus` CPUs gets from Ray (OMP_NUM_THREADS), unless set
    threads = cfg.torch_threads or max(1, int(cfg.replica_cpus))
    scfg.replicas.torch_threads = threads
    engine = Engine(scfg)
    times = []
    try:
        for i in range(n + 2):
            started = time.perf_counter()
            video = load_media("clip.mp4", "video", scfg, "bench", engine.image_size)
            messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
            engine.generate([GenRequest(messages=messages, media=video, max_tokens=cfg.max_tokens)])
            if i >= 2:
                times.append(time.perf_counter() - started)
    finally:
        engine.close()
    return statistics.median(times)


def _batch_sizes(app: str = "bench") -> collections.Counter:
    """Batches run so far by the app's model replica, by size."""
    from ray import serve

    handle = serve.get_deployment_handle("ModelServer", app_name=app)
    try:
        sizes = handle.info.remote().result()["batch_sizes"]
    finally:  # the handle's router reports metrics from a thread of this process until it is shut down
        handle.shutdown()
    return collections.Counter({int(k): v for k, v in sizes.items()})


def _replicas(app: str) -> int:
    from ray import serve

    status = serve.status().applications[app].deployments["ModelServer"]
    return int(status.replica_states.get("RUNNING", 0))


def _autoscale(cfg: BenchServeConfig, media: Path) -> dict:
    from ray import serve

    from vidrip.serve.app import build_app

    scfg = _serve_config(
        cfg,
        media,
        16,
        num_cpus=cfg.autoscale_cpus,
        min_replicas=1,
        max_replicas=cfg.autoscale_max,
        target_ongoing_requests=cfg.autoscale_target_ongoing,
        upscale_delay_s=2.0,
        downscale_delay_s=10.0,
        look_back_period_s=12.0,  # must exceed Serve's metrics interval (10 s)
    )
    serve.run(build_app(scfg), name="autoscale", route_prefix="/")
    seen: list[tuple[float, int]] = []
    done = threading.Event()

    def watch() -> None:
        t0 = time.monotonic()
        while not done.is_set():
            seen.append((round(time.monotonic() - t0, 1), _replicas("autoscale")))
            time.sleep(1.0)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    load = _load(cfg.http_port, cfg.clients, cfg.autoscale_seconds, cfg.max_tokens)
    idle_from = time.monotonic()
    back_down = None
    while time.monotonic() - idle_from < cfg.downscale_timeout_s:
        if _replicas("autoscale") == 1:
            back_down = round(time.monotonic() - idle_from, 1)
            break
        time.sleep(1.0)
    done.set()
    watcher.join()
    serve.delete("autoscale")
    return {
        "max_replicas_under_load": max((n for _, n in seen), default=0),
        "seconds_to_scale_down_after_load": back_down,
        "replicas_timeline": seen,
        "load": load,
    }


def run_bench(cfg: BenchServeConfig) -> dict:
    import ray
    from ray import serve

    from vidrip.runtime import ray_session
    from vidrip.serve.app import build_app

    workdir = Path(cfg.workdir).resolve()
    media = workdir / "serve_media"
    _write_clip(media / "clip.mp4", cfg.video_seconds, cfg.video_size)
    results: dict = {"config": cfg.model_dump(), "modes": {}}
    results["in_process_p50_s"] = round(_in_process(cfg, media, cfg.latency_requests), 4)
    with ray_session(cfg.ray, workdir):
        serve.start(http_options={"host": "127.0.0.1", "port": cfg.http_port})
        try:
            for batch in cfg.batch_sizes:
                serve.run(build_app(_serve_config(cfg, media, batch)), name="bench", route_prefix="/")
                _load(cfg.http_port, cfg.clients, cfg.warmup_seconds, cfg.max_tokens)
                before = _batch_sizes()
                mode = _load(cfg.http_port, cfg.clients, cfg.seconds, cfg.max_tokens)
                sizes = _batch_sizes() - before
                mode["mean_batch"] = round(sum(k * n for k, n in sizes.items()) / max(1, sizes.total()), 2)
                results["modes"][f"batch_{batch}"] = mode
                if batch == cfg.batch_sizes[-1]:  # no batch to wait for: the latency Serve itself adds
                    one = _load(cfg.http_port, 1, cfg.latency_seconds, cfg.max_tokens)
                    results["served_one_client_p50_s"] = one["p50_s"]
                serve.delete("bench")
            if cfg.autoscale_max > 1:
                results["autoscale"] = _autoscale(cfg, media)
        finally:
            for app in ("bench", "autoscale"):  # this benchmark's apps only; Serve and other apps stay
                if app in serve.status().applications:
                    serve.delete(app)
            if ray.is_initialized():
                ray.shutdown()
    first, last = (results["modes"][f"batch_{b}"] for b in (cfg.batch_sizes[0], cfg.batch_sizes[-1]))
    if last["requests_per_s"]:
        results["batching_speedup"] = round(first["requests_per_s"] / last["requests_per_s"], 2)
    results["serve_added_latency_s"] = round(results["served_one_client_p50_s"] - results["in_process_p50_s"], 4)
    (workdir / "bench_serve.json").write_text(json.dumps(results, indent=1))
    (workdir / "bench_serve.md").write_text(format_results(results))
    return results


def _write_clip(path: Path, seconds: float, size: int) -> Path:
    from vidrip.data.encode import write_mp4

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    return write_mp4(path, [np.roll(base, 4 * i, axis=1) for i in range(round(seconds * 4))], fps=4)


def ratios(r: dict) -> list[dict]:
    """The benchmark's ratios for ``make bench``'s report."""
    rows = []
    speedup = r.get("batching_speedup")
    if speedup is not None:
        rows.append(
            {
                "measure": "batched / unbatched requests per second",
                "value": speedup,
                "target": ">= 3",
                "met": speedup >= 3,
            }
        )
    if r.get("in_process_p50_s"):
        value = r["served_one_client_p50_s"] / r["in_process_p50_s"]
        rows.append({"measure": "served / in-process latency (p50)", "value": value, "target": None, "met": None})
    return rows


def format_results(r: dict) -> str:
    c = r["config"]
    lines = [
        "# Serving benchmark (tiny model, CPU)",
        "",
        f"{c['clients']} concurrent openai clients for {c['seconds']:g} s each mode; {c['max_tokens']} tokens per "
        f"answer; a {c['video_seconds']:g} s {c['video_size']}px video per request (1 frame/s, as in training).",
        "",
        "| mode | requests/s | p50 (s) | p99 (s) | mean batch | requests | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, m in r["modes"].items():
        lines.append(
            f"| {mode} | {m['requests_per_s']} | {m['p50_s']} | {m['p99_s']} | {m['mean_batch']} | {m['requests']} "
            f"| {m['errors']} |"
        )
    lines += ["", f"- batching speed-up (first / last mode): **{r.get('batching_speedup')}x** (target >= 3x)"]
    lines.append(
        f"- one client: served p50 {r['served_one_client_p50_s']} s, in-process p50 {r['in_process_p50_s']} s, "
        f"Serve adds **{r['serve_added_latency_s']} s**"
    )
    if "autoscale" in r:
        a = r["autoscale"]
        lines.append(
            f"- autoscaling: up to {a['max_replicas_under_load']} replicas under load "
            f"({a['load']['requests_per_s']} requests/s, {a['load']['errors']} errors); back to 1 replica "
            f"{a['seconds_to_scale_down_after_load']} s after the load stopped"
        )
    return "\n".join(lines) + "\n"
