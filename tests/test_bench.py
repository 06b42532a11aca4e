"""The training benchmark's own parts: its FLOP count and its single-process baseline (timings are never asserted)."""

import json
import time

import pytest

from shared_cluster import stop_serve
from vidrip.model.loading import ModelConfig, model_config
from vidrip.model.presets import PRESETS
from vidrip.train.bench import BenchTrainConfig, format_results, run_bench, training_flops_per_sample


def test_flops_are_six_per_parameter_and_token_plus_attention():
    config = model_config(ModelConfig(preset="ov-7b"))
    text = PRESETS["ov-7b"].text
    h, i, layers, vocab = text["hidden_size"], text["intermediate_size"], text["num_hidden_layers"], text["vocab_size"]
    kv = h // text["num_attention_heads"] * text["num_key_value_heads"]
    per_layer = h * h + h + 2 * (h * kv + kv) + h * h + 3 * h * i + 2 * h  # q (bias), k/v (bias), o, MLP, 2 norms
    llm = layers * per_layer + h + vocab * h  # + final norm + lm_head (embedding lookups are not matmuls)
    tokens = 6_000
    text_only = training_flops_per_sample(config, tokens, views=0)
    assert text_only == 6 * llm * tokens + 12 * layers * h * tokens**2
    assert 6.5e9 < llm < 7.7e9  # Qwen2-7B without its input embeddings
    per_frame = training_flops_per_sample(config, tokens, views=1) - text_only
    assert per_frame > 6 * 400e6 * 729  # SigLIP-so400m over 729 patches, plus attention and projector


@pytest.mark.integration
def test_the_single_process_baseline_runs_and_reports(tmp_path, sample_dir, tracking, repo):
    cfg = BenchTrainConfig(
        workdir=str(tmp_path),
        sample={"out": str(sample_dir)},
        steps=3,
        warmup_steps=1,
        modes=["single"],
        deepspeed="zero2",
        tracking=tracking,
    )
    out = run_bench(cfg)
    single = out["results"]["single"]
    assert single["steps_measured"] == 2 and single["samples_per_second"] > 0 and single["tokens_per_second"] > 0
    assert json.loads((tmp_path / "bench_train.json").read_text())["results"] == out["results"]
    assert format_results(out).splitlines()[1].startswith("single          1")


@pytest.mark.integration
def test_the_curation_loop_baseline_and_decode_measure_run(tmp_path, sample_dir, detector_weights):
    from vidrip.curate.bench import _summary, decode_overhead, format_results, ratios, run_loop
    from vidrip.curate.pipeline import CurateConfig

    cfg = CurateConfig(
        inputs=[str(sample_dir / "raw")],
        out=str(tmp_path / "out"),
        instructions=False,
        detect={"weights": str(detector_weights)},
    )
    loop = run_loop(cfg)
    summary = _summary(loop["parts"], loop["seconds"])
    assert summary["clips"] >= 2 and summary["frames_decoded"] > 0 and 0 < summary["heavy_model_frame_share"] < 1
    assert {"transcribe", "shots", "detect", "text", "clips"} <= set(summary["step_seconds"])
    decode = decode_overhead(cfg, repeats=1)
    assert decode["frames"] == summary["frames_decoded"] and decode["raw_decord_frames_per_second"] > 0
    out = {"results": {"loop": summary}, "decode": decode}
    report = format_results(out)
    assert report.splitlines()[1].startswith("loop") and "overhead" in report
    decode_row, share_row = ratios(out)  # no Ray run here: no speed-up row
    assert decode_row["value"] == decode["overhead"] and decode_row["met"] == (decode["overhead"] <= 0.25)
    assert share_row["value"] == summary["heavy_model_frame_share"] and share_row["target"] is None


SCALE_UP_BOUND_S = 300.0  # only an autoscaler that is stuck takes this long to add the second replica


@pytest.mark.integration
def test_the_serving_benchmark_runs_every_measure(ray_head, tmp_path, monkeypatch):
    from ray import serve

    import vidrip.serve.bench as serve_bench
    from conftest import free_port
    from vidrip.runtime import RayConfig
    from vidrip.serve.bench import BenchServeConfig
    from vidrip.serve.bench import format_results as format_serve
    from vidrip.serve.bench import run_bench as run_serve_bench

    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "auth_token").write_text((ray_head.workdir / "ray" / "auth_token").read_text())
    cfg = BenchServeConfig(
        workdir=str(tmp_path),
        clients=4,
        seconds=3,
        warmup_seconds=1,
        batch_sizes=[4, 1],
        max_tokens=4,
        video_size=64,
        latency_requests=2,
        latency_seconds=2,
        autoscale_seconds=5,
        autoscale_target_ongoing=0.5,
        http_port=free_port(),
        ray=RayConfig(address=ray_head.config.gcs_address, ports=ray_head.config.ports),
    )

    # The autoscaling measure loads the app for a fixed window; whether Serve adds the second replica within
    # it depends on the machine. Here the load goes on, window after window, until Serve reports the replica
    # RUNNING (the event the measure is about), bounded only against a stuck run.
    load = serve_bench._load

    def load_until_scaled_up(port, clients, seconds, max_tokens):
        if "autoscale" not in serve.status().applications:  # the batching and latency measures
            return load(port, clients, seconds, max_tokens)
        deadline, windows = time.monotonic() + SCALE_UP_BOUND_S, []
        while not windows or (serve_bench._replicas("autoscale") < cfg.autoscale_max and time.monotonic() < deadline):
            windows.append(load(port, clients, seconds, max_tokens))
        merged = {**windows[-1], **{k: sum(w[k] for w in windows) for k in ("requests", "errors", "wall_seconds")}}
        merged["error_examples"] = sorted({e for w in windows for e in w["error_examples"]})[:3]
        merged["requests_per_s"] = round(merged["requests"] / merged["wall_seconds"], 3)
        return merged

    monkeypatch.setattr(serve_bench, "_load", load_until_scaled_up)
    try:
        out = run_serve_bench(cfg)  # deletes its own apps and leaves Serve running, as on a shared cluster
    finally:
        stop_serve(ray_head)
    for mode in ("batch_4", "batch_1"):
        assert out["modes"][mode]["requests"] > 0 and out["modes"][mode]["errors"] == 0, out["modes"][mode]
    assert out["batching_speedup"] > 0 and out["in_process_p50_s"] > 0 and out["served_one_client_p50_s"] > 0
    scale = out["autoscale"]
    assert scale["max_replicas_under_load"] == 2, scale["replicas_timeline"]
    assert scale["seconds_to_scale_down_after_load"] is not None and scale["load"]["errors"] == 0, scale
    assert json.loads((tmp_path / "bench_serve.json").read_text())["modes"] == out["modes"]
    assert "batching speed-up" in format_serve(out)
    from vidrip.bench_report import report

    text = report(tmp_path)  # `make bench`'s report of what this folder holds
    speedup = out["batching_speedup"]
    met = "yes" if speedup >= 3 else "**no**"
    assert f"| bench_serve | batched / unbatched requests per second | {speedup:.3g} | >= 3 | {met} |" in text
    assert f"| bench_train | not run ({tmp_path / 'bench_train.json'} missing) |" in text
    assert "## serving: Ray Serve batching, latency, autoscaling" in text and "| batch_4 |" in text


def test_the_fingerprint_benchmark_measures_both_passes_and_reports_the_ratio(tmp_path):
    from vidrip.bench_report import report
    from vidrip.data.bench import BenchFingerprintConfig, run_bench

    out = run_bench(BenchFingerprintConfig(workdir=str(tmp_path), files=40, file_bytes=1024, repeats=1))
    assert out["first_s"] > 0 and out["second_s"] > 0
    assert out["second_vs_first"] == pytest.approx(out["second_s"] / out["first_s"], abs=5e-4)
    assert len(json.loads((tmp_path / "fingerprint_digests.json").read_text())) == 40  # the cache a later job reads
    assert "| bench_fingerprint | second fingerprint / first |" in report(tmp_path)
