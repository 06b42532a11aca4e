"""The curation pipeline on Ray Data: raw teaching videos in, clips, tables and instruction JSON out.

Run as::

    vidrip curate --config jobs/configs/curate.yaml [inputs='[work/sample/raw]' out=work/curated]
    python jobs/curate.py --config jobs/configs/curate.yaml
    ray job submit --working-dir . -- python jobs/curate.py --config jobs/configs/curate.yaml ray.address=auto

Steps, each a callable class in its own module, in one of two layouts (``resources.layout``)::

    split:  [probe, transcribe*] ─ [shots, keyframes] ─ [detect*, text (OCR + inpaint)*, trim, clips] ─ [instruct]
    whole:  [probe, transcribe*, shots, keyframes, detect*, text*, trim, clips] ─ [instruct]
    (* model steps: on a GPU node when the cluster has one, ``num_gpus`` = ``resources.gpu_fraction``)

``split`` (the default when the cluster has GPUs) decodes on CPU actors and sends shots to model actors
on the GPU nodes, shot by shot. ``whole`` (the default on a CPU-only cluster) runs every step of one
input in one actor, one actor per ``resources.whole.num_cpus`` CPUs: each operator is an actor pool
(``ActorPoolStrategy``) of processes that each import Ray Data and load their models, and a hop between
operators costs the driver and Ray Data's bookkeeping CPU, which CPU-only nodes take from the steps
themselves (``jobs/bench_curate.py`` on 2 cores against a single-process loop: 7 operators 1.04x, 4
split operators 1.42x, whole 1.65x). A whole video is the unit of work, so a cluster with more CPUs
than inputs is better served by ``split``. Inputs go out largest first, so the last to finish is small.
The CPU share and pool size of each operator are in ``resources``.

The driver collects the rows of each input, and when its last shot is through, writes its part file
(the unit of resumption), its stage-3 video and its chain-of-thought record (see
:mod:`vidrip.curate.outputs`). Re-running skips inputs whose part exists for the same content
hash and processing config.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from tqdm import tqdm

from vidrip.config import StrictConfig
from vidrip.curate.clips import ClipsConfig, WriteClips
from vidrip.curate.detect import Detect, DetectConfig
from vidrip.curate.inputs import resolve_inputs
from vidrip.curate.instruct import Instruct, InstructionGenerator, LLMConfig, VideoContext, video_record
from vidrip.curate.keyframes import Keyframes, KeyframesConfig
from vidrip.curate.outputs import VideoOutcome, aggregate, contact_sheet, write_json_atomic, write_video
from vidrip.curate.probe import Probe, ProbeConfig
from vidrip.curate.rows import batch_rows, rows_batch
from vidrip.curate.shots import Shots, ShotsConfig
from vidrip.curate.text import TextConfig, TextInpaint
from vidrip.curate.transcribe import TranscribeConfig, Transcriber
from vidrip.curate.trim import Trim, TrimConfig
from vidrip.runtime import RayConfig
from vidrip.tracking import Lineage, TrackingConfig

__all__ = [
    "BatchChain",
    "Chain",
    "CurateConfig",
    "CurationResult",
    "ResourcesConfig",
    "WholeVideo",
    "check_ready",
    "input_row",
    "run_curation",
    "video_id",
]

log = logging.getLogger(__name__)


class StepResources(StrictConfig):
    num_cpus: float = Field(gt=0)
    min_actors: int = Field(default=1, ge=1, description="actors started at once")
    max_actors: int = Field(default=1, ge=1, description="the actor pool grows up to this")
    tasks_in_flight: int = Field(default=2, ge=1, description="batches queued per actor (low: even load)")

    @model_validator(mode="after")
    def _check(self) -> StepResources:
        if self.max_actors < self.min_actors:
            raise ValueError(f"max_actors {self.max_actors} < min_actors {self.min_actors}")
        return self


class WholeResources(StrictConfig):
    """The ``whole`` layout's actors: as many as the free CPUs hold start at once, more as CPUs free up."""

    num_cpus: float = Field(default=1.0, gt=0, description="CPUs of each actor (every step of one input)")
    max_actors: int | None = Field(
        default=None, ge=1, description="None: as many as the cluster's CPUs hold, never more than inputs"
    )


class ResourcesConfig(StrictConfig):
    """Layout, CPU share and pool size of each operator. ``layout: auto`` is ``split`` when the cluster has
    GPUs (and ``gpu`` is ``auto``), else ``whole``. The ``split`` defaults fit one 2-core machine: two
    vision actors (detection and OCR are most of the work) beside one reader and one decoder; on a
    cluster raise ``max_actors``. ``gpu: auto`` puts the model steps on GPUs when there are any."""

    layout: Literal["auto", "split", "whole"] = "auto"
    gpu: Literal["auto", "never"] = "auto"
    gpu_fraction: float = Field(default=0.25, gt=0, le=1, description="GPU share of each model actor")
    whole: WholeResources = WholeResources()
    transcribe: StepResources = StepResources(num_cpus=0.25)  # probe + transcribe
    split: StepResources = StepResources(num_cpus=0.25)  # shots + keyframes
    vision: StepResources = StepResources(num_cpus=0.7, min_actors=2, max_actors=2, tasks_in_flight=1)
    # vision: detect + text + trim + clips
    instruct: StepResources = StepResources(num_cpus=0.05)

    def chosen_layout(self, gpus: float) -> Literal["split", "whole"]:
        if self.layout != "auto":
            return self.layout
        return "split" if gpus > 0 and self.gpu == "auto" else "whole"

    def whole_actors(self, cpus: float, inputs: int) -> int:
        fits = max(1, int(cpus / self.whole.num_cpus + 1e-9))
        return max(1, min(fits, inputs, self.whole.max_actors or fits))


class CurateConfig(StrictConfig):
    """``vidrip curate``: which videos, where to, and every step's settings (one section per step)."""

    inputs: list[str] = Field(min_length=1, description="folders, globs, manifests (.txt/.json) or video files")
    out: str = "work/curated"
    workdir: str = "work"
    name: str = "vidrip-curated"
    description: str = "Pathology teaching-video clips with instructions, curated by vidrip."
    licence: str = "unspecified"
    licence_url: str | None = None
    source_licence: str = Field(default="unspecified", description="licence of the input videos, for the card")
    instructions: bool = Field(default=True, description="generate instructions with the LLM (section `llm`)")
    contact_sheet_clips: int = Field(default=8, ge=0)
    probe: ProbeConfig = ProbeConfig()
    transcribe: TranscribeConfig = TranscribeConfig()
    shots: ShotsConfig = ShotsConfig()
    keyframes: KeyframesConfig = KeyframesConfig()
    detect: DetectConfig = DetectConfig()
    text: TextConfig = TextConfig()
    trim: TrimConfig = TrimConfig()
    clips: ClipsConfig = ClipsConfig()
    llm: LLMConfig = LLMConfig()
    resources: ResourcesConfig = ResourcesConfig()
    ray: RayConfig = RayConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _check(self) -> CurateConfig:
        if self.keyframes.fps > self.clips.fps:
            raise ValueError(f"keyframes.fps {self.keyframes.fps} > clips.fps {self.clips.fps}")
        return self


@dataclass
class CurationResult:
    out: Path
    inputs: int
    skipped: int
    counts: dict[str, int]
    metrics: dict[str, float]
    run_id: str


class Chain:
    """Several row steps in one Ray Data actor (``flat_map``): light steps share one CPU slot."""

    def __init__(self, steps: list[tuple[type, tuple]]):
        self.steps = [cls(*args) for cls, args in steps]

    def __call__(self, row: dict) -> list[dict]:
        rows = [row]
        for step in self.steps:
            rows = [out for r in rows for out in (lambda x: x if isinstance(x, list) else [x])(step(r))]
        return rows


class BatchChain:
    """Batched steps in turn, then row steps on each row, in one Ray Data actor (``map_batches``)."""

    def __init__(self, batch_steps: list[tuple[type, tuple]], row_steps: list[tuple[type, tuple]]):
        self.batch_steps = [cls(*args) for cls, args in batch_steps]
        self.rows = Chain(row_steps)

    def __call__(self, batch: dict) -> dict:
        for step in self.batch_steps:
            batch = step(batch)
        return rows_batch([out for row in batch_rows(batch) for out in self.rows(row)])


def read_steps(cfg: CurateConfig) -> list[tuple[type, tuple]]:
    return [(Probe, (cfg.probe,)), (Transcriber, (cfg.transcribe,))]


def split_steps(cfg: CurateConfig) -> list[tuple[type, tuple]]:
    return [(Shots, (cfg.shots, cfg.clips.fps)), (Keyframes, (cfg.keyframes, cfg.clips.fps))]


def model_steps(cfg: CurateConfig) -> list[tuple[type, tuple]]:
    return [(Detect, (cfg.detect,)), (TextInpaint, (cfg.text,))]


def cut_steps(cfg: CurateConfig, out: str) -> list[tuple[type, tuple]]:
    return [(Trim, (cfg.trim, cfg.clips.fps)), (WriteClips, (cfg.clips, out))]


class WholeVideo:
    """Every step on one input in one actor (``flat_map``): one video row in, its clip rows out. The
    model steps see its shots ``detect.batch_size`` at a time, as in the split layout."""

    def __init__(self, cfg: CurateConfig, out: str):
        self.read = Chain(read_steps(cfg))
        self.split = Chain(split_steps(cfg))
        self.vision = BatchChain(model_steps(cfg), cut_steps(cfg, out))
        self.batch_size = cfg.detect.batch_size

    def __call__(self, row: dict) -> list[dict]:
        shots = [shot for r in self.read(row) for shot in self.split(r)]
        out = []
        for i in range(0, len(shots), self.batch_size):
            out += batch_rows(self.vision(rows_batch(shots[i : i + self.batch_size])))
        return out


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")[:40] or "video"


def video_id(path: Path, sha: str | None) -> str:
    """An input's id in every output: its name and the start of its content hash."""
    return f"{_slug(path.stem)}-{(sha or 'unreadable')[:10]}"


def input_row(vid: str, path: Path) -> dict:
    """The row an input enters the pipeline as."""
    return {"key": vid, "path": str(path), "state": json.dumps({"source": str(path)})}


def sha256_file(path: Path) -> str | None:
    """Content hash; None for a file that cannot be read (it becomes a reject at probe)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def processing_sha(cfg: CurateConfig) -> str:
    """What decides the outputs: every step's settings, the detector's bytes and the LLM's model."""
    steps = cfg.model_dump(
        mode="json",
        include={"probe", "transcribe", "shots", "keyframes", "detect", "text", "trim", "clips", "instructions"},
    )
    steps["llm"] = cfg.llm.model_dump(mode="json", include={"model", "temperature", "max_tokens", "min_quality"})
    steps["detect"].pop("weights")  # where the detector lies does not matter, its bytes do
    steps["detector_sha256"] = sha256_file(Path(cfg.detect.weights))
    return hashlib.sha256(json.dumps(steps, sort_keys=True).encode()).hexdigest()[:16]


def _pool(res: StepResources):
    from ray.data import ActorPoolStrategy

    pool = ActorPoolStrategy(
        min_size=res.min_actors, max_size=res.max_actors, max_tasks_in_flight_per_actor=res.tasks_in_flight
    )
    return {"compute": pool, "num_cpus": res.num_cpus}


def build_dataset(cfg: CurateConfig, items: list[dict], out: Path, cluster: dict[str, float], free: dict[str, float]):
    """The Ray Data pipeline over ``items`` (``{"key", "path", "state"}`` rows), lazily, in the layout
    ``resources`` chooses for a cluster of ``cluster`` resources (``ray.cluster_resources()``), ``free`` of
    them now (``ray.available_resources()``)."""
    import ray
    from ray.data import ActorPoolStrategy

    ctx = ray.data.DataContext.get_current()
    ctx.issue_detectors_config.detectors = []  # its memory hints are noise here: models are loaded per actor
    r = cfg.resources
    gpus = cluster.get("GPU", 0)
    gpu = {"num_gpus": r.gpu_fraction} if gpus > 0 and r.gpu == "auto" else {}
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    if r.chosen_layout(gpus) == "whole":
        free_cpus = free.get("CPU", 0)
        if free_cpus < r.whole.num_cpus:
            log.warning(
                "curate: %.2f CPUs free, each actor asks for resources.whole.num_cpus=%s: waiting for CPUs",
                free_cpus,
                r.whole.num_cpus,
            )
        now = r.whole_actors(free_cpus, len(items))  # started at once, each loads its models
        most = max(now, r.whole_actors(cluster.get("CPU", 0), len(items)))  # as CPUs free up
        pool = ActorPoolStrategy(min_size=now, max_size=most, max_tasks_in_flight_per_actor=1)
        whole = {"compute": pool, "num_cpus": r.whole.num_cpus}
        ds = ds.flat_map(WholeVideo, fn_constructor_args=(cfg, str(out)), **whole, **gpu)
        log.info("curate: whole layout, %d-%d actors of %s CPUs", now, most, r.whole.num_cpus)
    else:
        ds = ds.flat_map(Chain, fn_constructor_args=(read_steps(cfg),), **_pool(r.transcribe), **gpu)
        ds = ds.flat_map(Chain, fn_constructor_args=(split_steps(cfg),), **_pool(r.split))
        ds = ds.map_batches(
            BatchChain,
            fn_constructor_args=(model_steps(cfg), cut_steps(cfg, str(out))),
            batch_size=cfg.detect.batch_size,
            batch_format="numpy",
            **_pool(r.vision),
            **gpu,
        )
        log.info("curate: split layout")
    if cfg.instructions:
        ds = ds.map_batches(
            Instruct,
            fn_constructor_args=(cfg.llm, str(out / "llm_cache")),
            batch_size=cfg.llm.max_concurrency,
            batch_format="numpy",
            **_pool(r.instruct),
        )
    return ds


def check_ready(cfg: CurateConfig) -> None:
    """Fail before any work if the detector or the LLM endpoint cannot be used."""
    if not Path(cfg.detect.weights).is_file():
        raise FileNotFoundError(
            f"detect.weights: {cfg.detect.weights} not found; train it with "
            "`vidrip curate train-detector --config jobs/configs/train_detector.yaml` or point detect.weights at one"
        )
    if cfg.instructions:
        with InstructionGenerator(cfg.llm, Path(cfg.out) / "llm_cache") as gen:
            gen.check_endpoint()


class _Finisher:
    """Writes one input's outputs when its last row has arrived (the video-level LLM call included)."""

    def __init__(self, cfg: CurateConfig, out: Path, config_sha: str):
        self.cfg, self.out, self.config_sha = cfg, out, config_sha
        self.generator = InstructionGenerator(cfg.llm, out / "llm_cache") if cfg.instructions else None

    def __call__(self, outcome: VideoOutcome) -> dict:
        from PIL import Image

        part = outcome.part(self.config_sha)
        (self.out / "previews").mkdir(parents=True, exist_ok=True)
        for cid, strip in outcome.previews().items():
            Image.fromarray(strip).save(self.out / "previews" / f"{cid}.png")
        if self.generator is None:
            for clip in part["clips"]:
                clip.update(kept=True, reason="no LLM step (instructions: false)")
        kept = [c for c in part["clips"] if c.get("kept")]
        part["video_file"], part["video_record"] = None, None
        if kept:
            part["video_file"] = write_video(self.out, outcome.video_id, [c["video"] for c in kept], self.cfg.clips.fps)
        if kept and self.generator is not None:
            ctx = VideoContext(
                video_id=outcome.video_id,
                video=part["video_file"],
                source=outcome.source.name,
                transcript=part["transcript"],
                screen_text=part["screen_text"],
                clip_descriptions=[c["concise"] or c["description"] for c in kept],
            )
            result = self.generator.videos([ctx])[0]
            part["video_instruction"] = {"ok": result.ok, "reason": result.reason, "diagnosis": result.diagnosis}
            part["video_record"] = video_record(ctx, result) if result.ok else None
        write_json_atomic(self.out / "parts" / f"{outcome.video_id}.json", part)
        return part

    def close(self) -> None:
        if self.generator is not None:
            self.generator.close()


def _with_absolute_paths(cfg: CurateConfig) -> CurateConfig:
    """The config with its file paths made absolute here, so that Ray workers, whatever their working
    directory, read the same files (on a multi-node cluster: on shared storage)."""

    def absolute(p: str | None) -> str | None:
        return None if p is None else str(Path(p).expanduser().resolve())

    return cfg.model_copy(
        update={
            "out": absolute(cfg.out),
            "detect": cfg.detect.model_copy(update={"weights": absolute(cfg.detect.weights)}),
            "transcribe": cfg.transcribe.model_copy(update={"model": absolute(cfg.transcribe.model)}),
            "text": cfg.text.model_copy(
                update={
                    "doctr_det_weights": absolute(cfg.text.doctr_det_weights),
                    "doctr_reco_weights": absolute(cfg.text.doctr_reco_weights),
                }
            ),
        }
    )


def _load_part(path: Path, config_sha: str, sha: str | None) -> dict | None:
    if not path.is_file():
        return None
    try:
        part = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return part if part.get("config_sha") == config_sha and part.get("sha256") == sha else None


def run_curation(cfg: CurateConfig, progress: bool = True, lineage: Lineage | None = None) -> CurationResult:
    """Curate ``cfg.inputs`` into ``cfg.out`` on the connected Ray cluster, tracked in MLflow (``lineage``:
    the caller's, e.g. a pipeline step's, else one for ``cfg.tracking``)."""
    import ray

    from vidrip.curate.card import DatasetInfo, check_croissant, output_counts, write_card, write_croissant
    from vidrip.curate.metrics import log_curation

    cfg = _with_absolute_paths(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = resolve_inputs(cfg.inputs)
    check_ready(cfg)
    config_sha = processing_sha(cfg)
    lineage = lineage or Lineage(cfg.tracking, cfg.workdir)
    with lineage.run("curate", cfg) as run:
        started = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            shas = list(
                tqdm(pool.map(sha256_file, paths), total=len(paths), desc="hash", unit="file", disable=not progress)
            )
        ids = [video_id(p, s) for p, s in zip(paths, shas, strict=True)]
        parts = {
            vid: _load_part(out / "parts" / f"{vid}.json", config_sha, s) for vid, s in zip(ids, shas, strict=True)
        }
        todo = [(vid, p, s) for vid, p, s in zip(ids, paths, shas, strict=True) if parts[vid] is None]
        log.info(
            "curate: %d inputs, %d done earlier, %d to process -> %s",
            len(paths),
            len(paths) - len(todo),
            len(todo),
            out,
        )
        pipeline_started = time.perf_counter()
        if todo:
            finisher = _Finisher(cfg, out, config_sha)
            outcomes = {vid: VideoOutcome(vid, p, s or "") for vid, p, s in todo}
            largest_first = sorted(todo, key=lambda t: _size(t[1]), reverse=True)
            items = [input_row(vid, p) for vid, p, _ in largest_first]
            ds = build_dataset(cfg, items, out, ray.cluster_resources(), ray.available_resources())
            try:
                with tqdm(total=len(todo), desc="curate", unit="video", disable=not progress) as bar:
                    for row in ds.iter_rows():
                        outcome = outcomes[row["key"]]
                        outcome.add(row)
                        if outcome.complete and parts[outcome.video_id] is None:
                            parts[outcome.video_id] = finisher(outcome)
                            bar.update()
            finally:
                finisher.close()
            for vid, outcome in outcomes.items():
                if parts[vid] is None:  # never expected: recorded, so that no input goes missing
                    log.warning("%s: only %d rows came back from the pipeline", outcome.source, len(outcome.rows))
                    if not outcome.rows:
                        lost = {"error": {"step": "pipeline", "reason": "no result came back from the pipeline"}}
                        outcome.add({"key": vid, "path": str(outcome.source), "state": json.dumps(lost)})
                    parts[vid] = finisher(outcome)
        pipeline_seconds = time.perf_counter() - pipeline_started
        done = [p for p in parts.values() if p is not None]
        counts = aggregate(out, done)
        info = DatasetInfo(
            name=cfg.name,
            description=cfg.description,
            licence=cfg.licence,
            licence_url=cfg.licence_url,
            sources=[{"path": p["source"], "sha256": p["sha256"], "licence": cfg.source_licence} for p in done],
            generator={"model": cfg.llm.model, "base_url": cfg.llm.base_url or "", "prompt_version": _prompt_version()}
            if cfg.instructions
            else {"model": "none"},
            pipeline={"config_sha": config_sha, "mlflow_run_id": run.run_id},
            counts=output_counts(out) | {"inputs": len(paths)},
        )
        write_card(out, info)
        check = check_croissant(write_croissant(out, info))
        clip_ids = [c["clip_id"] for p in done for c in p["clips"]][: cfg.contact_sheet_clips]
        sheet = contact_sheet(out, clip_ids, out / "contact_sheet.png")
        metrics = log_curation(run, done, counts, check, sheet, out, seconds=time.perf_counter() - started)
        metrics["pipeline_seconds"] = round(pipeline_seconds, 3)
        run.log_metric("pipeline_seconds", metrics["pipeline_seconds"])
        run.set_tag("vidrip.output", str(out))
        return CurationResult(out, len(paths), len(paths) - len(todo), counts, metrics, run.run_id)


def _prompt_version() -> str:
    from vidrip.curate.instruct import PROMPT_VERSION

    return PROMPT_VERSION
