"""One training stage on Ray Train: Hugging Face ``Trainer`` with DeepSpeed inside each worker.

The shape of Ray's own examples: :func:`train_func_per_worker` runs on every worker, and
:func:`fit_stage` is the short driver (``ScalingConfig``, ``RunConfig``, ``TorchTrainer.fit()``).

Data: a plain map-style dataset (:class:`vidrip.data.dataset.InstructionDataset`), not Ray Data.
Training sets here are thousands of records that each name one media file; decoding happens in the
worker's ``DataLoader`` next to the model, and Hugging Face's distributed sampler shards it by rank.
Ray Data would add a second scheduler for no gain at this size (curation, which streams hours of
video, is where Ray Data earns its place).

Checkpoints: the Trainer saves every ``save_steps``; ``RayTrainReportCallback`` reports each one to
Ray Train. A rerun with the same ``run_name`` and ``storage_path`` resumes from the latest reported
checkpoint (``ray.train.get_checkpoint()``), as does a restart after a worker failure
(``FailureConfig(max_failures)``). Each start and resume is a line in ``<output_dir>/events.jsonl``.
On CPU the workers talk over gloo in fp32; on GPU in bf16.

Metrics at every logging step: the Trainer's loss, learning rate and grad norm, plus throughput over
the steps since the last log: ``samples_per_second`` and ``tokens_per_second`` (all workers; non-padding
tokens, image and video tokens included) and ``tokens_per_second_per_worker``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pydantic import Field

from vidrip.config import ConfigPath, StrictConfig, config_file
from vidrip.model.loading import ModelConfig
from vidrip.train.stages import StageSpec

__all__ = [
    "EVENTS_FILE",
    "NON_LORA_FILE",
    "StageResult",
    "StageRunConfig",
    "build_trainer",
    "fit_stage",
    "read_events",
    "train_func_per_worker",
]


class StageRunConfig(StrictConfig):
    """How to run one stage: the stage spec, the model to start from, the data, and the workers."""

    stage: StageSpec
    model: ModelConfig = Field(default_factory=ModelConfig)
    data_root: str = "work/sample"
    output_dir: str = "work/train"
    run_name: str
    num_workers: int = Field(default=2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1.0, gt=0)
    per_device_batch_size: int = Field(default=1, ge=1)
    max_steps: int = Field(default=-1, description="-1: the stage's epochs")
    save_steps: int = Field(default=2, ge=1)
    logging_steps: int = Field(default=1, ge=1)
    deepspeed: ConfigPath | None = Field(
        default="zero2", description="DeepSpeed config JSON: a path, or zero2 / zero3 (packaged); None: plain DDP"
    )
    gradient_checkpointing: bool = False
    max_length: int | None = Field(default=None, ge=16)
    max_failures: int = Field(default=2, ge=0)
    eval_fraction: float = Field(
        default=0.0, ge=0, lt=1, description="held out for validation (eval_loss at every save); 0: none"
    )
    keep_best_by: str | None = Field(
        default=None, description="keep the checkpoints best by this metric (lowest), not the latest"
    )
    seed: int = 0

    @property
    def storage_path(self) -> Path:
        return Path(self.output_dir).resolve() / "ray_results"


NON_LORA_FILE = "non_lora_trainables.safetensors"
EVENTS_FILE = "events.jsonl"


def read_events(output_dir: str | Path) -> list[dict]:
    """The stage's start and resume events, oldest first (``[]`` before its first start)."""
    path = Path(output_dir) / EVENTS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _events_callback(output_dir: Path, world_size: int):
    from transformers import TrainerCallback

    class StageEvents(TrainerCallback):
        """Rank 0 appends ``{"event": "start" | "resume", "step": N, ...}`` when training (re)starts."""

        def on_train_begin(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            event = {
                "event": "resume" if state.global_step > 0 else "start",
                "step": state.global_step,
                "max_steps": state.max_steps,
                "world_size": world_size,
                "time": time.time(),
            }
            output_dir.mkdir(parents=True, exist_ok=True)
            with (output_dir / EVENTS_FILE).open("a") as f:
                f.write(json.dumps(event) + "\n")

    return StageEvents()


def _non_lora_trainables_callback():
    from transformers import TrainerCallback

    class SaveNonLoraTrainables(TrainerCallback):
        """With LoRA, PEFT saves only the adapter; the parts trained in full (vision tower, projector) go
        beside it in ``non_lora_trainables.safetensors`` (LLaVA-NeXT's layout), gathered under ZeRO-3."""

        def on_save(self, args, state, control, model=None, **kwargs):
            import contextlib

            from peft import PeftModel
            from safetensors.torch import save_file

            if not isinstance(model, PeftModel):
                return
            named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and ".lora_" not in n]
            params = [p for _, p in named]
            gather = contextlib.nullcontext()
            if any(hasattr(p, "ds_id") for p in params):  # ZeRO-3 partitions parameters across ranks
                import deepspeed

                gather = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
            with gather:
                tensors = {n.removeprefix("base_model.model."): p.detach().cpu().clone() for n, p in named}
            if state.is_world_process_zero:
                out = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                out.mkdir(parents=True, exist_ok=True)
                save_file(tensors, str(out / NON_LORA_FILE))

    return SaveNonLoraTrainables()


def _samples_per_rank_step(args) -> int:
    return args.per_device_train_batch_size * args.gradient_accumulation_steps


def _gradient_accumulation(cfg: StageRunConfig) -> int:
    per_step = cfg.per_device_batch_size * cfg.num_workers
    return max(1, cfg.stage.global_batch_size // per_step)


def build_trainer(cfg: StageRunConfig, deepspeed: dict | None, rank: int, world_size: int, callbacks=()):
    """The stage's Hugging Face ``Trainer`` for one worker (rank ``rank`` of ``world_size``): model with its
    trainable parts, data, optimizer groups, throughput logging; ``callbacks`` run after vidrip's own."""
    import torch
    from transformers import Trainer, TrainingArguments

    from vidrip.data.dataset import InstructionDataset
    from vidrip.data.mixture import mixture_records, split_records
    from vidrip.model.collate import Collator
    from vidrip.model.loading import load_model, load_processor
    from vidrip.train.trainable import apply_trainable, param_groups

    spec = cfg.stage
    torch.manual_seed(cfg.seed)
    processor = load_processor(cfg.model)
    model = apply_trainable(load_model(cfg.model), spec)
    model.train()
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    records = mixture_records(spec.data, cfg.data_root, seed=cfg.seed)
    held_out = []
    if cfg.eval_fraction > 0:
        records, held_out = split_records(records, cfg.eval_fraction, seed=cfg.seed)
    size = cfg.model.spec.image_size
    dataset = InstructionDataset(records, cfg.data_root, frames=spec.frames, size=size)
    eval_dataset = InstructionDataset(held_out, cfg.data_root, frames=spec.frames, size=size) if held_out else None

    # each rank saves into its own folder (ranks may share a disk); every rank reports its files, and Ray
    # Train gathers them into one checkpoint (model, processor, and each rank's ZeRO optimizer shard)
    work = Path(cfg.output_dir).resolve() / "hf" / f"rank{rank}"
    args = TrainingArguments(
        output_dir=str(work),
        per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=_gradient_accumulation(cfg),
        learning_rate=spec.lr,
        lr_scheduler_type=spec.scheduler,
        warmup_steps=spec.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of all steps
        weight_decay=spec.weight_decay,
        num_train_epochs=spec.epochs,
        max_steps=cfg.max_steps,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        eval_strategy="steps" if eval_dataset is not None else "no",
        eval_steps=cfg.save_steps,  # evaluated just before each save: every checkpoint carries its eval_loss
        per_device_eval_batch_size=cfg.per_device_batch_size,
        report_to=[],
        deepspeed=deepspeed,
        bf16=cfg.use_gpu,
        use_cpu=not cfg.use_gpu,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=True,  # SigLIP's post_layernorm takes no part in LLaVA's forward
        seed=cfg.seed,
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
    )

    class StageTrainer(Trainer):
        _last_log: tuple[float, int, int] | None = None  # (time, global step, tokens seen) at the last log

        def create_optimizer(self, model=None):  # the vision tower at its own learning rate
            if self.optimizer is None:
                self.optimizer = torch.optim.AdamW(param_groups(self.model, spec), lr=spec.lr)
            return self.optimizer

        def log(self, logs, start_time=None):  # throughput since the previous log, beside the loss
            now, step, tokens = time.perf_counter(), self.state.global_step, self.state.num_input_tokens_seen
            if "loss" in logs and self._last_log is not None and step > self._last_log[1]:
                seconds = now - self._last_log[0]
                samples = (step - self._last_log[1]) * self.args.world_size * _samples_per_rank_step(self.args)
                logs["samples_per_second"] = samples / seconds
                logs["tokens_per_second"] = (tokens - self._last_log[2]) / seconds
                logs["tokens_per_second_per_worker"] = logs["tokens_per_second"] / self.args.world_size
            self._last_log = (now, step, tokens)
            super().log(logs, start_time)

    return StageTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        data_collator=Collator(processor, max_length=cfg.max_length),
        processing_class=processor,  # saved with every checkpoint: each one is a complete model folder
        callbacks=[_events_callback(Path(cfg.output_dir), world_size), _non_lora_trainables_callback(), *callbacks],
    )


def train_func_per_worker(config: dict) -> None:
    """Runs on each Ray Train worker: build the stage's trainer, train, report checkpoints to Ray Train."""
    import ray.train
    from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer

    cfg = StageRunConfig.model_validate(config["run"])
    ctx = ray.train.get_context()
    trainer = build_trainer(
        cfg,
        config["deepspeed"],
        ctx.get_world_rank(),
        ctx.get_world_size(),
        callbacks=[RayTrainReportCallback()],  # after the saving callbacks: save, then report
    )
    trainer = prepare_trainer(trainer)
    checkpoint = ray.train.get_checkpoint()  # set when resuming a run or restarting after a failure
    if checkpoint is None:
        trainer.train()
    else:
        with checkpoint.as_directory() as ckpt_dir:
            trainer.train(resume_from_checkpoint=str(Path(ckpt_dir) / RayTrainReportCallback.CHECKPOINT_NAME))


class StageResult(StrictConfig):
    checkpoint: str  # Ray Train checkpoint folder; the Hugging Face model folder is its "checkpoint/"
    metrics: dict
    global_step: int


def fit_stage(cfg: StageRunConfig, callbacks=()) -> StageResult:
    """Run one stage on the connected Ray cluster; returns its last checkpoint and metrics.
    ``callbacks``: Ray Train callbacks (a sweep's trial passes Tune's ``TuneReportCallback``)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    # workers run elsewhere (another folder, another node): hand them absolute paths and the parsed config
    cfg = cfg.model_copy(
        update={"data_root": str(Path(cfg.data_root).resolve()), "output_dir": str(Path(cfg.output_dir).resolve())}
    )
    deepspeed = json.loads(config_file(cfg.deepspeed).read_text()) if cfg.deepspeed else None
    trainer = TorchTrainer(
        train_func_per_worker,
        train_loop_config={"run": cfg.model_dump(mode="json"), "deepspeed": deepspeed},
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker={"CPU": cfg.cpus_per_worker}
        ),
        run_config=RunConfig(
            name=cfg.run_name,
            storage_path=str(cfg.storage_path),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=2,
                checkpoint_score_attribute=cfg.keep_best_by,
                checkpoint_score_order="min",
            ),
            callbacks=list(callbacks),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"stage {cfg.stage.index} ({cfg.run_name}) finished without a checkpoint")
    metrics = dict(result.metrics or {})
    return StageResult(checkpoint=result.checkpoint.path, metrics=metrics, global_step=int(metrics["step"]))
