"""Training throughput: Ray Train against a single-process Hugging Face ``Trainer``, in one run.

Run as::

    make bench                                                     # the CPU benchmark below
    python jobs/bench_train.py --config jobs/configs/bench_train.yaml
    python jobs/bench_train.py --config jobs/configs/bench_train_gpu.yaml    # on a GPU machine: ov-7b, MFU

Every mode trains the same stage on the same data for ``steps`` optimizer steps, with the same
DeepSpeed config, and reads its per-step times from the Trainer's own log (vidrip's throughput metrics):

- ``single``: one process, the stage's ``Trainer`` built in this process (no Ray), with as many torch
  threads as a Ray worker gets (``cpus_per_worker``), so the two differ only by Ray Train;
- ``ray-N``: Ray Train with N workers on a local cluster.

Reported: median step time after ``warmup_steps``, samples/s, tokens/s (all workers and per worker),
and Ray Train's overhead as a ratio of step times against ``single`` (target: at most 1.3x). On a GPU
also the model FLOPs utilisation against ``peak_tflops`` (989: H100 dense bf16), counting training
FLOPs as 6 x parameters per token plus attention, for the LLM over its tokens and the vision tower
over its patches. Results go to ``<workdir>/bench_train.json`` and an MLflow run.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
from pathlib import Path
from typing import Literal

from pydantic import Field

from vidrip.config import ConfigPath, StrictConfig, config_file
from vidrip.data.sample.build import SampleConfig
from vidrip.data.video import FramePolicy
from vidrip.model.loading import ModelConfig
from vidrip.runtime import RayConfig, RayPorts
from vidrip.tracking import TrackingConfig
from vidrip.train.loop import StageRunConfig
from vidrip.train.stages import default_stage

__all__ = ["BenchTrainConfig", "format_results", "run_bench", "training_flops_per_sample"]

log = logging.getLogger(__name__)


class BenchTrainConfig(StrictConfig):
    """What to measure (see the module docstring)."""

    workdir: str = "work/bench"
    sample: SampleConfig = Field(default_factory=lambda: SampleConfig(out="work/bench/sample"))
    model: ModelConfig = Field(default_factory=ModelConfig)
    stage: int = Field(default=1, ge=0, le=3)
    frames: FramePolicy | None = Field(default=None, description="None: the stage's own frames policy")
    global_batch_size: int = Field(default=2, ge=1)
    per_device_batch_size: int = Field(default=1, ge=1)
    steps: int = Field(default=12, ge=2)
    warmup_steps: int = Field(default=3, ge=0)
    modes: list[Literal["single", "ray-1", "ray-2", "ray-4", "ray-8"]] = Field(
        default_factory=lambda: ["single", "ray-1", "ray-2"]
    )
    cpus_per_worker: float = Field(default=1.0, gt=0)
    use_gpu: bool = False
    gradient_checkpointing: bool = False
    deepspeed: ConfigPath | None = Field(
        default="zero2", description="DeepSpeed config JSON: a path, or zero2 / zero3 (packaged); None: plain DDP"
    )
    peak_tflops: float = Field(default=989.0, gt=0, description="per GPU, for MFU (H100 dense bf16)")
    ray: RayConfig = Field(default_factory=lambda: RayConfig(num_cpus=2, ports=RayPorts().shifted(2000)))
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)


def training_flops_per_sample(config, text_tokens: int, views: int) -> float:
    """Training FLOPs of one sample: 6 x matmul parameters per token (forward + backward) plus attention
    (12 x layers x hidden x sequence per token), for the LLM over ``text_tokens`` (all of its input,
    visual tokens included) and for the vision tower and projector over each of ``views`` frames or images.
    Parameters are counted on the model itself (built on the meta device); embedding lookups are not matmuls."""
    import torch

    from vidrip.model.grid_newline import LlavaOnevisionVideoLayoutForConditionalGeneration as Model

    with torch.device("meta"):
        model = Model(config)
    inner = model.model
    llm = sum(p.numel() for n, p in inner.language_model.named_parameters() if "embed_tokens" not in n)
    llm += model.lm_head.weight.numel()
    per_patch = sum(p.numel() for p in inner.vision_tower.parameters())
    per_patch += sum(p.numel() for p in inner.multi_modal_projector.parameters())
    text, vision = config.text_config, config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    flops = 6 * llm * text_tokens + 12 * text.num_hidden_layers * text.hidden_size * text_tokens**2
    per_view = 6 * per_patch * patches + 12 * vision.num_hidden_layers * vision.hidden_size * patches**2
    return float(flops + per_view * views)


def _run_config(cfg: BenchTrainConfig, mode: str, data_root: Path) -> StageRunConfig:
    spec = default_stage(cfg.stage).model_copy(update={"global_batch_size": cfg.global_batch_size})
    if cfg.frames is not None:
        spec = spec.model_copy(update={"frames": cfg.frames})
    workers = 1 if mode == "single" else int(mode.split("-")[1])
    return StageRunConfig(
        stage=spec,
        model=cfg.model,
        data_root=str(data_root),
        output_dir=str(Path(cfg.workdir).resolve() / "runs" / mode),
        run_name=f"bench-{mode}-{os.getpid()}",
        num_workers=workers,
        use_gpu=cfg.use_gpu,
        cpus_per_worker=cfg.cpus_per_worker,
        per_device_batch_size=cfg.per_device_batch_size,
        max_steps=cfg.steps,
        save_steps=cfg.steps,
        logging_steps=1,
        deepspeed=str(config_file(cfg.deepspeed).resolve()) if cfg.deepspeed else None,
        gradient_checkpointing=cfg.gradient_checkpointing,
        max_failures=0,
    )


def _single_process_child(run_json: str) -> list[dict]:
    """In a fresh process: the stage's Trainer as rank 0 of a world of one; returns its log history."""
    import socket

    from vidrip.train.loop import build_trainer

    run = StageRunConfig.model_validate_json(run_json)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}
    )
    deepspeed = json.loads(config_file(run.deepspeed).read_text()) if run.deepspeed else None
    trainer = build_trainer(run.model_copy(update={"save_steps": run.max_steps + 1}), deepspeed, 0, 1)
    trainer.train()
    return list(trainer.state.log_history)


def _single_process(run: StageRunConfig, cpus: float) -> list[dict]:
    """The stage's Trainer in one fresh process, with the thread limits a Ray worker with ``cpus`` CPUs gets."""
    from vidrip.childproc import run_in_child

    threads = str(max(1, int(cpus))) if not run.use_gpu else None
    return run_in_child(_single_process_child, run.model_dump_json(), threads)


def _ray(run: StageRunConfig) -> list[dict]:
    from vidrip.train.loop import fit_stage

    result = fit_stage(run)
    state = Path(result.checkpoint) / "checkpoint" / "trainer_state.json"
    return json.loads(state.read_text())["log_history"]


def _summary(history: list[dict], warmup: int, workers: int, global_batch: int) -> dict:
    steps = [e for e in history if "samples_per_second" in e and e["step"] > warmup]
    if not steps:
        raise RuntimeError(f"no step after the {warmup} warm-up steps logged its throughput; raise 'steps'")
    step_times = [global_batch / e["samples_per_second"] for e in steps]
    tokens = statistics.median(e["tokens_per_second"] for e in steps)
    return {
        "workers": workers,
        "steps_measured": len(steps),
        "step_seconds": statistics.median(step_times),
        "samples_per_second": statistics.median(e["samples_per_second"] for e in steps),
        "tokens_per_second": tokens,
        "tokens_per_second_per_worker": tokens / workers,
        "samples_per_second_per_worker": statistics.median(e["samples_per_second"] for e in steps) / workers,
        "final_loss": [e["loss"] for e in history if "loss" in e][-1],
    }


def run_bench(cfg: BenchTrainConfig) -> dict:
    """Measure every mode of ``cfg``; returns (and writes) the results."""
    from vidrip.data.sample.build import build_sample
    from vidrip.model.loading import model_config
    from vidrip.runtime import ray_session
    from vidrip.tracking import Lineage

    workdir = Path(cfg.workdir).resolve()
    sample = Path(cfg.sample.out)
    if not (sample / "metadata.json").is_file():
        build_sample(cfg.sample)
    results: dict[str, dict] = {}
    lineage = Lineage(cfg.tracking, workdir)
    with lineage.run("bench", cfg, dataset=sample, run_name="bench_train") as tracked:
        for mode in (m for m in cfg.modes if m == "single"):
            log.info("bench: single process, %d steps", cfg.steps)
            run = _run_config(cfg, mode, sample)
            results[mode] = _summary(
                _single_process(run, cfg.cpus_per_worker), cfg.warmup_steps, 1, cfg.global_batch_size
            )
        ray_modes = [m for m in cfg.modes if m != "single"]
        if ray_modes:
            with ray_session(cfg.ray, workdir):
                for mode in ray_modes:
                    log.info("bench: Ray Train, %s, %d steps", mode, cfg.steps)
                    run = _run_config(cfg, mode, sample)
                    history = _ray(run)
                    results[mode] = _summary(history, cfg.warmup_steps, run.num_workers, cfg.global_batch_size)
        if "single" in results:
            for mode in ray_modes:
                results[mode]["step_time_vs_single"] = results[mode]["step_seconds"] / results["single"]["step_seconds"]
        if cfg.use_gpu:
            spec = _run_config(cfg, cfg.modes[0], sample).stage
            frames = spec.frames.num_frames if spec.frames.rule == "uniform" else spec.frames.max_frames
            config = model_config(cfg.model)
            for r in results.values():
                tokens_per_sample = r["tokens_per_second"] / r["samples_per_second"]
                flops = training_flops_per_sample(config, round(tokens_per_sample), frames)
                r["mfu"] = flops * r["samples_per_second_per_worker"] / (cfg.peak_tflops * 1e12)
        for mode, r in results.items():
            tracked.log_metrics({f"{mode}.{k}": float(v) for k, v in r.items()})
    out = {"config": cfg.model_dump(mode="json"), "results": results}
    (workdir / "bench_train.json").write_text(json.dumps(out, indent=2))
    return out


def ratios(out: dict) -> list[dict]:
    """The benchmark's ratios for ``make bench``'s report: Ray Train's step time against one process."""
    rows = []
    for mode, r in out["results"].items():
        if "step_time_vs_single" in r:
            value = r["step_time_vs_single"]
            rows.append(
                {
                    "measure": f"{mode} step time / single process",
                    "value": value,
                    "target": "<= 1.3",
                    "met": value <= 1.3,
                }
            )
        if "mfu" in r:
            rows.append({"measure": f"{mode} MFU", "value": r["mfu"], "target": None, "met": None})
    return rows


def format_results(out: dict) -> str:
    rows = ["mode      workers  step s  samples/s  tokens/s  tokens/s/worker  vs single   MFU"]
    for mode, r in out["results"].items():
        ratio = f"{r['step_time_vs_single']:.2f}x" if "step_time_vs_single" in r else "-"
        mfu = f"{r['mfu']:.1%}" if "mfu" in r else "-"
        rows.append(
            f"{mode:8s}  {r['workers']:7d}  {r['step_seconds']:6.2f}  {r['samples_per_second']:9.2f}  "
            f"{r['tokens_per_second']:8.0f}  {r['tokens_per_second_per_worker']:15.0f}  {ratio:>9s}  {mfu:>5s}"
        )
    return "\n".join(rows)
