"""The ``vidrip`` command line.

    vidrip sample --out work/sample [seed=3 ...]     build the embedded sample corpus
    vidrip demo [--config jobs/configs/demo.yaml]     the whole pipeline on the sample, as a Ray job
    vidrip validate FILE [--kind test] [--media-root DIR]   check a record file, one line per bad record
    vidrip train [--config train_tiny] [--stages 0-3]  training stages on Ray Train + DeepSpeed
    vidrip merge --checkpoint DIR --out DIR          fold a stage-3 LoRA adapter into the model
    vidrip convert --checkpoint DIR --out DIR        a LLaVA-NeXT llava_qwen checkpoint (ViDRiP's) to Hugging Face
    vidrip tune [--config lora_sweep_tiny]            LoRA sweep of stage 3 on Ray Tune
    vidrip head [workdir=work]                        a Ray head on 127.0.0.1 for `ray job submit`
    vidrip ui [--workdir work] [--port 5000]          MLflow UI on 127.0.0.1
    vidrip curate [--config curate]                   raw teaching videos to clips + instruction JSON (Ray Data)
    vidrip curate train-detector [--config ...]       fine-tune the tissue/person detector curation uses
    vidrip serve [--config serve_tiny]                the OpenAI-compatible endpoint that takes videos (Ray Serve)
    vidrip eval [--config eval]                       models side by side on the paper's Video-ChatGPT judge metrics
    vidrip eval export-lmms-eval DIR [--task NAME]    the test set as an lmms-eval task folder
    vidrip pipeline [--config pipeline_tiny]          curate -> train -> sweep -> merge -> serve -> eval

Every job takes ``--config FILE`` (YAML) and ``key=value`` overrides (dotted keys for sections). A bare
name such as ``train_tiny`` is one of the configs vidrip ships (``vidrip/defaults/``); the defaults are
those, so every command works from any folder (see :mod:`vidrip.config`).
Research use only, not for clinical decisions.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import subprocess
import sys
from pathlib import Path

from vidrip.config import ConfigError, config_file, load_config
from vidrip.runtime import apply_offline_env

__all__ = ["main"]

# The default configs: packaged with vidrip (vidrip/defaults/<name>.yaml), found from any folder
CURATE_CONFIG = "curate"
DETECTOR_CONFIG = "train_detector"
TRAIN_CONFIG = "train_tiny"
TUNE_CONFIG = "lora_sweep_tiny"
SERVE_CONFIG = "serve_tiny"
EVAL_CONFIG = "eval"
PIPELINE_CONFIG = "pipeline_tiny"


def _packaged(name: str) -> str:
    return f"{name}, packaged: {config_file(name)}"


def _add_config_args(p: argparse.ArgumentParser, default: str | None, shown: str | None = None) -> None:
    shown = shown or (_packaged(default) if default else "built-in defaults")
    p.add_argument(
        "--config",
        default=default,
        help=f"YAML config file, or the name of a config vidrip ships (default: {shown})",
    )
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="override config values, e.g. seed=3 ray.num_cpus=2"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vidrip",
        description="Pathology teaching videos to a video-language model, on Ray. "
        "Research use only, not for clinical decisions.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("sample", help="build the embedded sample corpus (real slides, templated instructions)")
    _add_config_args(p, None)
    p.add_argument("--out", help="output folder (overrides the config's 'out')")
    p.add_argument("--seed", type=int, help="random seed (overrides the config's 'seed')")

    p = sub.add_parser(
        "demo", help="the whole pipeline on the embedded sample, submitted with `ray job submit` to a local head"
    )
    _add_config_args(p, None)

    p = sub.add_parser("validate", help="validate an instruction or test record file")
    p.add_argument("file", help="a .json list or .jsonl file of records")
    p.add_argument("--kind", choices=("instruction", "test"), default="instruction")
    p.add_argument("--media-root", help="folder the media paths are relative to (checks that they exist)")

    p = sub.add_parser("train", help="train stages 0-3 on Ray Train + DeepSpeed, each from the previous one")
    _add_config_args(p, TRAIN_CONFIG)
    p.add_argument("--stages", help="which stages, e.g. 0-3 or 0,1 (overrides the config's 'stages')")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print each stage's memory plan per worker (parameters, gradients, optimizer, activations) and "
        "exit: 0 if every stage fits, 1 if not; trains nothing",
    )

    p = sub.add_parser("merge", help="fold a stage-3 LoRA adapter into a standalone Hugging Face checkpoint")
    p.add_argument("--checkpoint", required=True, help="the LoRA stage's checkpoint folder (adapter_config.json)")
    p.add_argument("--out", required=True, help="folder for the merged model")

    p = sub.add_parser(
        "convert", help="convert a LLaVA-NeXT llava_qwen checkpoint (ViDRiP's release format, LoRA too) to Hugging Face"
    )
    p.add_argument("--checkpoint", required=True, help="LLaVA-NeXT folder: config.json + weights, or a LoRA folder")
    p.add_argument("--base", help="for a LoRA folder: its base model's folder (default: the adapter's recorded base)")
    p.add_argument("--out", required=True, help="folder for the Hugging Face checkpoint")

    p = sub.add_parser(
        "curate",
        help="curate raw teaching videos into clips and instruction JSON (Ray Data); "
        "`vidrip curate train-detector` trains its tissue/person detector",
        description="vidrip curate [--config FILE] [key=value ...]: the curation pipeline on Ray Data. "
        "vidrip curate train-detector [--config FILE] [key=value ...]: fine-tune the tissue/person YOLO detector "
        f"on the sample's ground truth (default config {DETECTOR_CONFIG}).",
    )
    _add_config_args(p, None, f"{_packaged(CURATE_CONFIG)}; train-detector: {_packaged(DETECTOR_CONFIG)}")

    p = sub.add_parser("tune", help="sweep LoRA rank x learning rate on stage 3 (Ray Tune, ASHA), promote the best")
    _add_config_args(p, TUNE_CONFIG)

    p = sub.add_parser(
        "serve",
        help="serve an OpenAI-compatible endpoint that takes videos (Ray Serve) until Ctrl-C",
        description="Deploy a Serve config YAML (the one `serve run` takes) on a Ray head on 127.0.0.1 and keep it "
        "up until Ctrl-C. key=value overrides go to the application's args (vidrip.serve.config.ServeConfig), "
        "e.g. adapters.vidrip-video=work/stage3/checkpoint. A key is generated and printed unless one is set "
        "($VIDRIP_API_KEY). Research use only, not for clinical decisions.",
    )
    _add_config_args(p, SERVE_CONFIG)
    p.add_argument("--workdir", default="work", help="Ray's files and the MLflow store (default: work)")
    p.add_argument("--port", type=int, help="HTTP port (default: the YAML's http_options.port)")
    p.add_argument("--ray-address", help="deploy on this Ray cluster (host:port) instead of starting a head")

    p = sub.add_parser(
        "eval",
        help="score models side by side with the paper's Video-ChatGPT judge metrics; "
        "`vidrip eval export-lmms-eval DIR` writes the test set as an lmms-eval task",
        description="vidrip eval [--config FILE] [key=value ...]: every model of the config answers the test set "
        "(32 uniform frames, greedy, cached), the judge scores context, correctness and detail (0-5, cached, "
        "failures counted), and the paper's table is printed and saved with judge-free metrics beside it. "
        "vidrip eval export-lmms-eval DIR [--config FILE] [--task NAME]: the test set as an lmms-eval task folder. "
        "Research use only, not for clinical decisions.",
    )
    _add_config_args(p, EVAL_CONFIG)
    p.add_argument("--task", default="vidrip_video_test", help="export-lmms-eval: the task's name")

    p = sub.add_parser(
        "pipeline",
        help="the whole pipeline as one job: sample, detector, curate, train 0-3, sweep, merge, serve, eval",
        description="Raw teaching videos to an evaluated, served model, each step its own MLflow run under one "
        "parent. A rerun with the same name skips the steps done with the same config and data and resumes the "
        "one that stopped. Starts a Ray head on 127.0.0.1 unless ray.address is set (ray.address=auto inside "
        "`ray job submit`). Research use only, not for clinical decisions.",
    )
    _add_config_args(p, PIPELINE_CONFIG)

    p = sub.add_parser("head", help="keep a Ray head up on 127.0.0.1 for `ray job submit` (Ctrl-C stops it)")
    _add_config_args(p, None)

    p = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1 for a work directory's runs")
    p.add_argument("--workdir", default="work", help="work directory holding mlflow.db (default: work)")
    p.add_argument("--uri", help="tracking URI instead of the work directory's SQLite store")
    p.add_argument("--port", type=int, default=5000)

    return parser


def _cmd_sample(args) -> int:
    from vidrip.data.sample.build import SampleConfig, build_sample

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"out={args.out}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    cfg = load_config(SampleConfig, args.config, overrides)
    meta = build_sample(cfg)
    print(f"sample written to {Path(cfg.out).resolve()} (fingerprint {meta['fingerprint']})")
    for stage, info in meta["datasets"].items():
        print(f"  {stage:7s} {info['records']:4d} records  {Path(cfg.out) / info['file']}")
    print(f"  raw     {len(meta['raw_videos']):4d} videos   {Path(cfg.out) / 'raw'} (with *.truth.json)")
    return 0


def _cmd_demo(args) -> int:
    from vidrip.demo import DemoConfig, run_demo
    from vidrip.pipeline.run import StepRecord, steps_table

    cfg = load_config(DemoConfig, args.config, args.overrides)
    try:
        out = run_demo(cfg)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:  # the job's own log, above, says why
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"\n=== vidrip demo: pipeline {out['name']} as a Ray job on a local head, {out['job_seconds']:.0f} s ===")
    print(steps_table([StepRecord(**s) for s in out["steps"]]))
    if out["table"]:
        print("\n" + out["table"])
    print("\nAsk the served model with the openai client (the demo just ran this):\n")
    print("    " + out["example"].replace("\n", "\n    "))
    ans = out["example_answer"]
    print(
        f"\nanswer of {out['served_model']!r} ({ans['frames']} frames, {ans['request_seconds']} s): {ans['answer']!r}"
    )
    print("(the tiny preset after a few CPU steps cannot learn the task: the plumbing is what this shows)")
    print(f"reference answer: {out['reference_answer']}")
    if out["head_stopped"]:
        print("\nThe endpoint stopped with the demo's Ray head. Serve the same models again with:")
        print(f"    vidrip serve --workdir {cfg.workdir} media.root={cfg.workdir}/sample")
    print(f"\nsummary {out['summary_path']}; MLflow run {out['run_id']}")
    print("browse every run (data -> stages -> sweep -> served model -> evaluation):")
    print(f"    vidrip ui --workdir {cfg.workdir}")
    print("Research use only, not for clinical decisions.")
    return 0


def _cmd_validate(args) -> int:
    from vidrip.data.schema import InstructionRecord, TestRecord, load_records

    kind = TestRecord if args.kind == "test" else InstructionRecord
    result = load_records(args.file, kind, media_root=args.media_root, on_error="skip")
    for err in result.errors:
        print(err)
    print(f"{args.file}: {len(result.records)} good, {len(result.errors)} bad record(s)", file=sys.stderr)
    return 1 if result.errors else 0


def _stage_list(text: str) -> list[int]:
    if "-" in text:
        first, last = text.split("-", 1)
        return list(range(int(first), int(last) + 1))
    return [int(x) for x in text.split(",")]


def _cmd_train(args) -> int:
    from vidrip.runtime import ray_session
    from vidrip.tracking import Lineage
    from vidrip.train.chain import TrainConfig, check_plans, new_run_name, plan_stages, resolve_start, run_stages

    overrides = list(args.overrides)
    if args.stages:
        overrides.append(f"stages={_stage_list(args.stages)}")
    cfg = load_config(TrainConfig, args.config, overrides)
    if args.dry_run:
        plans = plan_stages(cfg)
        print("\n\n".join(plan.table() for plan in plans))
        check_plans(plans)
        return 0
    if cfg.run_name is None:
        cfg = cfg.model_copy(update={"run_name": new_run_name()})
    resolve_start(cfg, Lineage(cfg.tracking, cfg.workdir), cfg.run_name)  # before starting Ray: a named start
    print(f"training run {cfg.run_name} (if interrupted, rerun with run_name={cfg.run_name} to resume)", flush=True)
    with ray_session(cfg.ray, Path(cfg.workdir).resolve()):
        outcomes = run_stages(cfg)
    print("\nstage  steps  final loss  seconds  checkpoint")
    for o in outcomes:
        kept = "" if o.trained else "  (kept: finished earlier)"
        print(f"{o.stage:5d}  {o.global_step:5d}  {o.final_loss:10.4f}  {o.seconds:7.0f}  {o.checkpoint}{kept}")
    print(f"MLflow: experiment {cfg.tracking.experiment_prefix}-train; browse with: vidrip ui --workdir {cfg.workdir}")
    return 0


def _cmd_merge(args) -> int:
    from vidrip.train.merge import merge_adapter

    out = merge_adapter(args.checkpoint, args.out)
    print(f"merged model written to {out}")
    return 0


def _cmd_convert(args) -> int:
    import json

    from vidrip.model.convert import convert_llava_next

    out = convert_llava_next(args.checkpoint, args.out, base=args.base)
    info = json.loads((out / "vidrip_conversion.json").read_text())
    lora = f", LoRA merged into {info['lora']['merged_weights']} weights" if info["lora"] else ""
    print(f"converted {args.checkpoint} -> {out} (video layout '{info['video_newline']}'{lora})")
    print("the weights keep their original licence; research use only, not for clinical decisions")
    return 0


def _cmd_tune(args) -> int:
    from vidrip.runtime import ray_session
    from vidrip.sweep.run import SweepConfig, init_checkpoint, new_sweep_name, run_sweep
    from vidrip.tracking import Lineage

    cfg = load_config(SweepConfig, args.config, args.overrides)
    init_checkpoint(cfg, Lineage(cfg.tracking, cfg.workdir))  # before starting Ray: no named start, no sweep
    if cfg.name is None:
        cfg = cfg.model_copy(update={"name": new_sweep_name()})
    print(f"sweep {cfg.name} (if interrupted, rerun with name={cfg.name} to resume)", flush=True)
    with ray_session(cfg.ray, Path(cfg.workdir).resolve()):
        result = run_sweep(cfg)
    print(f"\n{result.table}")
    stopped = sum(r.status == "stopped early" for r in result.rows)
    failed = sum(r.status == "failed" for r in result.rows)
    print(f"\n{len(result.rows)} trials: {stopped} stopped early by ASHA, {failed} failed; {result.seconds:.0f} s")
    if result.best is not None:
        print(
            f"best: {result.best.trial} (val loss {result.best.best_eval_loss:.4f}) -> "
            f"{cfg.registered_model} version {result.registered_version}, alias '{cfg.alias}'"
        )
    print(f"table: {result.table_path}\nplot:  {result.plot_path}")
    print(f"MLflow: experiment {cfg.tracking.experiment_prefix}-tune; browse with: vidrip ui --workdir {cfg.workdir}")
    return 0 if result.best is not None else 1


def _cmd_curate(args) -> int:
    if args.overrides[:1] == ["train-detector"]:
        return _cmd_train_detector(args.config or DETECTOR_CONFIG, args.overrides[1:])
    from vidrip.chat import ChatError
    from vidrip.curate.pipeline import CurateConfig, check_ready, run_curation
    from vidrip.runtime import ray_session

    cfg = load_config(CurateConfig, args.config or CURATE_CONFIG, args.overrides)
    try:
        check_ready(cfg)  # detector and LLM endpoint, before a Ray head is started
    except ChatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    with ray_session(cfg.ray, Path(cfg.workdir).resolve()):
        result = run_curation(cfg)
    m = result.metrics
    print(f"\ncurated {result.inputs} inputs ({result.skipped} done earlier) -> {result.out}")
    print(
        f"  clips {int(m['clips'])} (kept by the LLM: {int(m['clips_kept'])}), instruction records: "
        f"{int(m['clip_records'])} clip, {int(m['video_records'])} video"
    )
    print(f"  rejected inputs {int(m['inputs_rejected'])}, reject rows {int(m['rejects_rows'])} (rejects.parquet)")
    for key in sorted(k for k in m if k.startswith(("rejected_inputs_by_reason.", "dropped_seconds."))):
        print(f"    {key.split('.', 1)[0].replace('_', ' ')}: {key.split('.', 1)[1]}: {m[key]:g}")
    print(
        f"  frames decoded {int(m['frames.decoded'])}, seen by the detector {int(m['frames.keyframes'])} "
        f"({m['heavy_model_frame_share']:.0%}), in clips {int(m['frames.in_clips'])}; "
        f"OCR text boxes {int(m['text_boxes_before'])} before inpainting, {int(m['text_boxes_after'])} after"
    )
    print(
        f"MLflow: run {result.run_id} (experiment {cfg.tracking.experiment_prefix}-curate); "
        f"browse with: vidrip ui --workdir {cfg.workdir}"
    )
    return 0


def _cmd_train_detector(config: str, overrides: list[str]) -> int:
    from vidrip.curate.detector_train import DetectorTrainConfig, train_detector

    cfg = load_config(DetectorTrainConfig, config, overrides)
    result = train_detector(cfg)
    print(
        f"detector: {result.weights}  mAP50 {result.map50:.3f} (tissue {result.map50_tissue:.3f}, "
        f"person {result.map50_person:.3f}) on {result.val_images} held-out frames; {result.seconds:.0f} s"
    )
    return 0


def _cmd_head(args) -> int:
    import shlex
    import signal

    from vidrip.runtime import HeadConfig, LocalRayHead

    cfg = load_config(HeadConfig, args.config, args.overrides)
    with LocalRayHead(cfg.ray, cfg.workdir) as head:  # refuses a config whose ray.address is set
        signal.signal(signal.SIGTERM, lambda *_: head.stop())
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in head.submit_env().items())
        print(f"Ray head ready on {cfg.ray.gcs_address}, dashboard {cfg.ray.dashboard_url} (Ctrl-C stops it)")
        print(f"submit jobs with:\n  export {exports}")
        workdir = Path(cfg.workdir).resolve()
        job = f"python jobs/pipeline.py --config jobs/configs/pipeline_tiny.yaml ray.address=auto workdir={workdir}"
        print(f"  ray job submit --working-dir . -- {job} sample.out={workdir / 'sample'}")
        print(f"  serve run serve_apps/tiny.yaml --address {cfg.ray.gcs_address}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            head.wait()
    return 0


def _cmd_serve(args) -> int:
    import signal
    import threading

    from vidrip.runtime import RayConfig
    from vidrip.serve.launch import load_serve_yaml, served

    spec = load_serve_yaml(args.config, args.overrides)
    if args.port is not None:
        spec.port = args.port
    ray_cfg = RayConfig(address=args.ray_address) if args.ray_address else RayConfig()
    stop = threading.Event()
    with served(spec, args.workdir, ray_cfg) as endpoint:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())  # after ray.init, which installs its own
        key = endpoint.api_key
        print(f"vidrip endpoint: {endpoint.base_url}  (models: {', '.join(spec.config.model_names())})")
        print(f"page to try it:  {endpoint.url}/")
        if key and endpoint.generated_key:
            print(f"API key (generated for this run; set VIDRIP_API_KEY to choose one): {key}")
        print(
            "ask it:\n"
            f"  python serve_apps/client.py --base-url {endpoint.base_url} --api-key {key or 'none'} "
            "--model vidrip-base --video work/sample/test/<video>.mp4\n"
            "Research use only, not for clinical decisions. Ctrl-C stops it.",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            while not stop.wait(1.0):
                pass
    return 0


def _cmd_eval(args) -> int:
    from vidrip.chat import ChatError
    from vidrip.eval.config import EvalConfig

    overrides = list(args.overrides)
    if overrides[:1] == ["export-lmms-eval"]:
        from vidrip.eval.lmms_export import export_lmms_eval

        if len(overrides) < 2 or "=" in overrides[1]:
            print(
                "usage: vidrip eval export-lmms-eval DIR [--config FILE] [--task NAME] [key=value ...]", file=sys.stderr
            )
            return 2
        cfg = load_config(EvalConfig, args.config, overrides[2:])
        folder = export_lmms_eval(cfg, overrides[1], task=args.task)
        print(f"lmms-eval task written to {folder}")
        print(f"  python -m lmms_eval --model <model> --tasks {args.task} --include_path {folder}")
        print("  judge: set VIDRIP_JUDGE_BASE_URL, VIDRIP_JUDGE_MODEL, VIDRIP_JUDGE_API_KEY (or OPENAI_API_KEY)")
        return 0
    cfg = load_config(EvalConfig, args.config, overrides)
    try:
        result = _evaluate(cfg)
    except ChatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n" + result.table)
    calls = ", ".join(f"{who}: {st['requests']} calls, {st['cache_hits']} cached" for who, st in result.stats.items())
    print(f"requests: {calls}")
    print(f"seconds: {', '.join(f'{k} {v:.1f}' for k, v in result.seconds.items())}")
    print(f"written to {cfg.out} (table.md, table.csv, chart.png, per-sample JSONL); MLflow run {result.run_id}")
    return 0


def _evaluate(cfg):
    """The evaluation; when a model or the judge has ``base_url: null``, the config's ``serve`` app is deployed
    first (on ``cfg.ray``) and deleted after, leaving every other application on the cluster alone."""
    from vidrip.eval.run import evaluate
    from vidrip.serve.launch import load_serve_yaml, served, served_revisions
    from vidrip.tracking import Lineage, TrackingConfig

    cfg.check_endpoints()
    lineage = Lineage(cfg.tracking, cfg.workdir)
    if not cfg.needs_serve():
        return evaluate(cfg, lineage=lineage)
    spec = load_serve_yaml(cfg.serve.config, cfg.serve.overrides)
    if cfg.serve.port is not None:
        spec.port = cfg.serve.port
    registry = lineage
    if spec.config.tracking_uri:  # the app resolves its models:/ references in a store of its own
        registry = Lineage(TrackingConfig(uri=spec.config.tracking_uri), cfg.workdir)
    revisions = served_revisions(spec.config, registry)
    models = [
        m.model_copy(update={"revision": revisions.get(m.model)}) if m.base_url is None and not m.revision else m
        for m in cfg.models
    ]
    with served(spec, cfg.workdir, cfg.ray) as endpoint:
        return evaluate(cfg.model_copy(update={"models": models}), endpoint, lineage)


def _cmd_pipeline(args) -> int:
    from vidrip.pipeline.config import PipelineConfig
    from vidrip.pipeline.run import run_pipeline, steps_table
    from vidrip.runtime import ray_session

    cfg = load_config(PipelineConfig, args.config, args.overrides)
    with ray_session(cfg.ray, Path(cfg.workdir).resolve()):
        result = run_pipeline(cfg)
    print(f"\n=== vidrip pipeline {result.name}: done in {result.seconds:.0f} s ===")
    print(steps_table(result.steps))
    if result.table:
        print("\n" + result.table)
    ep = result.endpoint
    kept = cfg.keep_serving and cfg.ray.address is not None
    state = "serving" if kept else "was served (stopped with the Ray head this command started)"
    print(f"\nendpoint {ep['base_url']} {state}: models {', '.join(ep['models'])}; key in {ep['api_key_file']}")
    print(f"summary {result.summary_path}; MLflow run {result.run_id}; browse: vidrip ui --workdir {cfg.workdir}")
    print("Research use only, not for clinical decisions.")
    return 0


def _cmd_ui(args) -> int:
    from vidrip.tracking import TrackingConfig, serve_ui_command

    cmd = serve_ui_command(TrackingConfig(uri=args.uri), args.workdir, port=args.port)
    print(f"MLflow UI: http://127.0.0.1:{args.port}  (Ctrl-C to stop)", flush=True)
    return subprocess.call(cmd)


def main(argv: list[str] | None = None) -> int:
    apply_offline_env()
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handlers = {
        "sample": _cmd_sample,
        "demo": _cmd_demo,
        "validate": _cmd_validate,
        "head": _cmd_head,
        "train": _cmd_train,
        "merge": _cmd_merge,
        "convert": _cmd_convert,
        "tune": _cmd_tune,
        "curate": _cmd_curate,
        "serve": _cmd_serve,
        "eval": _cmd_eval,
        "pipeline": _cmd_pipeline,
        "ui": _cmd_ui,
    }
    try:
        return handlers[args.command](args)
    except ConfigError as exc:
        print(f"config error:\n{exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
