"""LoRA sweeps on Ray Tune: the search space, concurrency, and a real sweep of real stage-3 trials."""

import csv
import json
from pathlib import Path

import pytest

from vidrip.config import ConfigError, load_config
from vidrip.model.loading import ModelConfig, load_model, load_processor, resolve_checkpoint, save_model
from vidrip.sweep.run import SweepConfig, max_concurrent_trials, run_sweep
from vidrip.sweep.space import Dimension, apply_params, tune_space
from vidrip.tracking import InputError, Lineage
from vidrip.train.chain import CHECKPOINT_TAG, STAGE_TAG
from vidrip.train.stages import default_stage


def test_shipped_sweeps_search_rank_and_learning_rate(repo):
    for name in ("lora_sweep_tiny.yaml", "lora_sweep_7b.yaml"):
        cfg = load_config(SweepConfig, repo / "tune_configs" / name)
        assert set(cfg.space) == {"lora.rank", "lr"}
        assert cfg.stage().lora.alpha is None  # alpha follows 2 x rank, as the paper


def test_space_keys_and_kinds_are_checked_by_name(repo):
    base = repo / "tune_configs/lora_sweep_tiny.yaml"
    with pytest.raises(ConfigError, match=r"space.lora.rnk: the stage has no field 'rnk'"):
        load_config(SweepConfig, base, ["space={lora.rnk: {grid: [4]}}"])
    with pytest.raises(ValueError, match="exactly one of grid, choice, loguniform, uniform"):
        Dimension(grid=[1], choice=[2])
    with pytest.raises(ValueError, match="lower bound must be below"):
        Dimension(loguniform=(1e-3, 1e-5))
    with pytest.raises(ValueError, match=r"space.lora.rank: 'grid' needs search: grid"):
        tune_space({"lora.rank": Dimension(grid=[4, 8])}, "optuna")
    sampled = tune_space({"lora.rank": Dimension(choice=[4, 8]), "lr": Dimension(loguniform=(1e-5, 1e-3))}, "optuna")
    assert sampled["lora.rank"].sample() in (4, 8) and 1e-5 <= sampled["lr"].sample() <= 1e-3
    spec = apply_params(default_stage(3).model_dump(), {"lora.rank": 16, "lr": 2e-5})
    assert (spec["lora"]["rank"], spec["lr"], spec["lora"]["dropout"]) == (16, 2e-5, 0.05)


def test_concurrency_fills_the_cluster_without_oversubscribing_it():
    tiny = SweepConfig(space={"lr": {"grid": [1e-5]}}, num_workers=1, cpus_per_worker=0.95)
    assert max_concurrent_trials(tiny, {"CPU": 2.0}) == 2
    assert max_concurrent_trials(tiny.model_copy(update={"cpus_per_worker": 1.0}), {"CPU": 2.0}) == 1
    gpu = tiny.model_copy(update={"num_workers": 8, "cpus_per_worker": 8, "use_gpu": True})
    assert max_concurrent_trials(gpu, {"CPU": 4 * 96.0, "GPU": 32.0}) == 4  # 4 nodes of 8 GPUs
    assert max_concurrent_trials(gpu, {"CPU": 64.0, "GPU": 32.0}) == 1  # 64 CPUs fit no trial: never less than one


def _stage2_runs(lineage: Lineage, tmp_path) -> list[tuple[str, Path]]:
    """Two training runs' stage 2, as training leaves them in MLflow (FINISHED, with a checkpoint): older first."""
    runs = []
    for seed in (4, 5):
        folder = tmp_path / f"stage2-seed{seed}"
        init = ModelConfig(preset="tiny", seed=seed)
        save_model(load_model(init), load_processor(init), folder)
        with lineage.run("train", init, run_name=f"stage2-seed{seed}", tags={STAGE_TAG: "2"}) as run:
            run.set_tag(CHECKPOINT_TAG, str(folder))
        runs.append((run.run_id, folder))
    return runs


def test_a_sweep_without_a_named_start_lists_the_candidates(tmp_path, tracking, sample_dir):
    lineage = Lineage(tracking, tmp_path)
    (older, _), (newer, _) = _stage2_runs(lineage, tmp_path)
    cfg = SweepConfig(
        workdir=str(tmp_path), data_root=str(sample_dir), space={"lr": {"grid": [1e-5]}}, tracking=tracking
    )
    with pytest.raises(InputError, match="init_from: not set") as refused:
        run_sweep(cfg)  # refused before it needs Ray
    listed = [line.split()[:2] for line in str(refused.value).splitlines()[2:]]
    assert listed == [[newer, "stage2-seed5"], [older, "stage2-seed4"]]


@pytest.mark.integration
def test_a_sweep_stops_trials_early_survives_failures_and_promotes_the_best(
    ray_client, sample_dir, tmp_path, tracking, repo
):
    lineage = Lineage(tracking, tmp_path)
    (stage2_run, stage2), _newer = _stage2_runs(lineage, tmp_path)  # the sweep starts from the older, by its id

    cfg = SweepConfig(
        workdir=str(tmp_path),
        data_root=str(sample_dir),
        init_from=stage2_run,
        name="test-sweep",
        stage_overrides={"global_batch_size": 2},
        # rank varies fastest: the two 3e-3 trials run first and set the bar that the 1e-5 ones fall below at
        # their first evaluation, after 4 steps (ASHA stops them there); rank 0 makes two trials fail
        space={"lora.rank": {"grid": [4, 8, 0]}, "lr": {"grid": [3e-3, 1e-5]}},
        max_steps=8,
        eval_every=4,
        eval_fraction=0.5,
        deepspeed="zero3",
        tracking=tracking,
    )
    result = run_sweep(cfg)

    statuses = sorted(r.status for r in result.rows)
    assert len(result.rows) == 6 and statuses.count("failed") == 2
    assert all(r.params["lora.rank"] == 0 and "rank" in r.error for r in result.rows if r.status == "failed")
    slow = [r for r in result.rows if r.params["lr"] == 1e-5 and r.status != "failed"]
    assert len(slow) == 2 and all(r.status == "stopped early" and r.steps == 4 for r in slow)  # cut short by ASHA
    assert all(r.steps == 8 for r in result.rows if r.status == "finished")
    scored = [r for r in result.rows if r.best_eval_loss is not None]
    assert len(scored) == 4 and result.best == min(scored, key=lambda r: r.best_eval_loss)

    client = lineage.client
    champion = client.get_model_version_by_alias("vidrip-video", "champion")
    assert champion.source == result.best.checkpoint
    loaded_base = json.loads((Path(champion.source) / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert loaded_base == str(stage2)  # the checkpoint the trials loaded: the older run's, as named
    champion_cfg = ModelConfig(checkpoint="models:/vidrip-video@champion")  # how the serve app loads it
    champion_model = load_model(resolve_checkpoint(champion_cfg, tracking.uri))
    assert champion_model.peft_config["default"].r == result.best.params["lora.rank"]
    assert load_processor(resolve_checkpoint(champion_cfg, tracking.uri)).tokenizer.eos_token == "<|im_end|>"

    parent = client.get_run(result.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["vidrip.init_from_run"] == stage2_run
    trials = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{result.run_id}'"
    )
    assert len(trials) == 6
    assert sorted(t.info.status for t in trials) == ["FAILED"] * 2 + ["FINISHED"] * 4
    best_run = client.get_run(champion.run_id)
    assert best_run.data.params["lora.rank"] == str(result.best.params["lora.rank"])
    evals = sorted(m.step for m in client.get_metric_history(best_run.info.run_id, "eval_loss"))
    assert evals == list(range(4, result.best.steps + 1, 4))  # one evaluation every eval_every steps
    running = client.search_runs([parent.info.experiment_id], filter_string="attributes.status = 'RUNNING'")
    assert not running

    with open(result.table_path) as f:
        assert len(list(csv.reader(f))) == 1 + 6
    with open(result.plot_path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    again = run_sweep(cfg)  # the same name: the finished sweep is restored, nothing runs or is logged twice
    assert [(r.trial, r.status) for r in again.rows] == [(r.trial, r.status) for r in result.rows]
    assert again.run_id == result.run_id and again.registered_version == result.registered_version
    assert len(client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{result.run_id}'")) == 6
