"""The demo: the whole pipeline on the embedded sample, submitted with ``ray job submit`` to a local Ray head.

Run as::

    make demo                      # sets up .venv first
    vidrip demo                    # or: python jobs/demo.py --config jobs/configs/demo.yaml

Starts a Ray head on 127.0.0.1 (explicit ports, token auth; unless ``ray.address`` names a running
cluster), submits ``jobs/pipeline.py --config <pipeline>`` with the repository as the job's working
directory, streams the job's logs (each step's progress bars), and when it SUCCEEDED prints the steps
with their wall time, the evaluation table, an ``openai``-client example against the endpoint (run for
real, with its answer), and the ``vidrip ui`` command to browse the runs. It stops only the head it
started (and with it the endpoint). A second ``make demo`` skips every step already done.

The tiny preset on a few CPU steps cannot learn the task: the plumbing is what this shows. Research use
only, not for clinical decisions.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import time
from pathlib import Path

from pydantic import Field

from vidrip.config import ConfigPath, StrictConfig, config_file, load_config
from vidrip.paths import console_script, repo_root
from vidrip.pipeline.config import PipelineConfig
from vidrip.runtime import LocalRayHead, RayConfig, ray_env

__all__ = ["DemoConfig", "ask_endpoint", "client_example", "demo_pipeline_config", "run_demo", "submit_command"]

log = logging.getLogger(__name__)


class DemoConfig(StrictConfig):
    """The demo job: which pipeline config to submit, where, and what to ask the served model."""

    workdir: str = "work"
    pipeline: ConfigPath = Field(
        default="pipeline_tiny", description="the pipeline config submitted: a packaged config's name or a path"
    )
    pipeline_overrides: list[str] = Field(default_factory=list, description="key=value for the pipeline config")
    ray: RayConfig = Field(default_factory=lambda: RayConfig(num_cpus=2))
    job_timeout_s: float = Field(default=3600.0, gt=0, description="give up on the job after this long")
    question_index: int = Field(default=0, ge=0, description="which test question the example asks")
    max_new_tokens: int = Field(default=48, ge=1, le=1024)


def demo_pipeline_config(cfg: DemoConfig) -> tuple[PipelineConfig, list[str]]:
    """The pipeline config as the job will load it, and the overrides that make it so: the demo's work
    directory (absolute: the job runs in a copy of the repository), its sample under it, the cluster the
    job is submitted to."""
    workdir = Path(cfg.workdir).resolve()
    overrides = [f"workdir={workdir}", f"sample.out={workdir / 'sample'}", "ray.address=auto"]
    overrides += cfg.pipeline_overrides
    return load_config(PipelineConfig, cfg.pipeline, overrides), overrides


def submit_command(cfg: DemoConfig, overrides: list[str], submission_id: str) -> list[str]:
    """``ray job submit`` of the pipeline, the repository as working directory (``.gitignore`` respected).
    Ray's CLI quotes each word of the entrypoint for the job's shell (``shlex.join``)."""
    return [
        console_script("ray"),
        "job",
        "submit",
        "--address",
        cfg.ray.dashboard_url,
        "--working-dir",
        str(repo_root()),
        "--submission-id",
        submission_id,
        "--",
        "python",
        "jobs/pipeline.py",
        "--config",
        _job_config(cfg.pipeline),
        *overrides,
    ]


def _job_config(ref: str) -> str:
    """The pipeline config as the job finds it, running in a copy of the repository: a packaged config by its
    name, a file of the repository by its path there, any other file by its absolute path."""
    if config_file(ref) != Path(ref):
        return ref
    path, root = Path(os.path.abspath(ref)), repo_root()
    return str(path.relative_to(root)) if root is not None and path.is_relative_to(root) else str(path)


def client_example(base_url: str, key_file: str | None, model: str, video: str, question: str) -> str:
    """Python that asks the endpoint about a video with the ``openai`` client (printed by the demo)."""
    key = f"open({key_file!r}).read()" if key_file else '"EMPTY"'
    return "\n".join(
        [
            "import openai",
            f"client = openai.OpenAI(base_url={base_url!r}, api_key={key})",
            "reply = client.chat.completions.create(",
            f"    model={model!r},",
            "    messages=[{",
            '        "role": "user",',
            '        "content": [{"type": "video_url", "video_url": {"url": ' + repr(video) + "}},",
            '                    {"type": "text", "text": ' + repr(question) + "}],",
            "    }],",
            ")",
            "print(reply.choices[0].message.content)",
        ]
    )


def ask_endpoint(base_url: str, api_key: str, model: str, video: str, question: str, max_tokens: int) -> dict:
    """What :func:`client_example` does, for real: the answer, usage and the frames the endpoint used."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=300)
    started = time.perf_counter()
    reply = client.chat.completions.create(
        model=model,
        messages=[
            {
                "role": "user",
                "content": [{"type": "video_url", "video_url": {"url": video}}, {"type": "text", "text": question}],
            }
        ],
        max_tokens=max_tokens,
    )
    shown = reply.model_extra.get("media") or {}
    return {
        "answer": reply.choices[0].message.content,
        "prompt_tokens": reply.usage.prompt_tokens,
        "completion_tokens": reply.usage.completion_tokens,
        "frames": shown.get("frames", 0),
        "request_seconds": round(time.perf_counter() - started, 3),
    }


def run_demo(cfg: DemoConfig) -> dict:
    """Submit the pipeline, wait for it, ask the endpoint; returns the summary with the example's answer."""
    from vidrip.data.sample.build import DATASET_FILES
    from vidrip.data.schema import TestRecord, load_records
    from vidrip.pipeline.run import validate

    workdir = Path(cfg.workdir).resolve()
    pipeline, overrides = demo_pipeline_config(cfg)
    validate(pipeline)  # a wrong key in any step's config fails here, before a head starts
    head = LocalRayHead(cfg.ray, workdir).start() if cfg.ray.address is None else None
    try:
        env = {**os.environ, **(head.submit_env() if head else ray_env(cfg.ray, workdir))}
        submission = f"vidrip-demo-{time.strftime('%Y%m%d-%H%M%S')}"
        command = submit_command(cfg, overrides, submission)
        log.info("submitting the pipeline: %s", shlex.join(command))
        started = time.perf_counter()
        done = subprocess.run(command, env=env, timeout=cfg.job_timeout_s, check=False)
        job_seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(
                f"the pipeline job {submission} did not succeed (its log is above); `make demo` again resumes it "
                "where it stopped"
            )
        summary_path = workdir / "pipeline" / pipeline.name / "summary.json"
        summary = json.loads(summary_path.read_text())
        by_step = {s["step"]: s for s in summary["steps"]}
        sample_dir = Path(by_step["sample"]["outputs"]["dir"])
        tests = load_records(sample_dir / DATASET_FILES["test"], TestRecord, media_root=sample_dir).records
        if cfg.question_index >= len(tests):
            raise ValueError(f"question_index={cfg.question_index}: the sample has {len(tests)} test questions")
        item = tests[cfg.question_index]
        endpoint = summary["endpoint"]
        model = "vidrip-video" if "vidrip-video" in endpoint["models"] else endpoint["models"][0]
        key_file = endpoint["api_key_file"]
        api_key = Path(key_file).read_text().strip() if key_file else "EMPTY"
        example = client_example(endpoint["base_url"], key_file, model, item.video_name, item.question)
        answer = ask_endpoint(endpoint["base_url"], api_key, model, item.video_name, item.question, cfg.max_new_tokens)
        table = Path(by_step["eval"]["outputs"]["table_md"]).read_text() if "eval" in by_step else None
    finally:
        if head is not None:
            head.stop()
    return {
        **summary,
        "summary_path": str(summary_path),
        "submission_id": submission,
        "job_seconds": round(job_seconds, 1),
        "table": table,
        "example": example,
        "example_answer": answer,
        "served_model": model,
        "question": item.question,
        "reference_answer": item.answer,
        "head_stopped": head is not None,
    }
