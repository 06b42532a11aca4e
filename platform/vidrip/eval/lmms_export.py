"""``vidrip eval export-lmms-eval DIR``: the test set as an lmms-eval task, so other models run the same benchmark.

    vidrip eval export-lmms-eval work/lmms_tasks [--config jobs/configs/eval.yaml] [--task vidrip_video_test]
    python -m lmms_eval --model <any> --tasks vidrip_video_test --include_path work/lmms_tasks/vidrip_video_test

The folder ``DIR/<task>/`` holds:

- ``<task>.yaml``: the task (``generate_until``, greedy, ``max_new_tokens`` 1024, the local JSONL as the
  dataset, one metric per judge criterion plus ``judge_failures``);
- ``utils.py``: the hooks ``doc_to_visual``, ``doc_to_text``, ``doc_to_target``, ``process_results`` and the
  aggregations, calling the judge exactly as ``vidrip eval`` does;
- ``vidrip_chat.py`` and ``vidrip_judge_prompts.py``: copies of :mod:`vidrip.chat` and
  :mod:`vidrip.eval.prompts` (standard library and ``openai`` only), so lmms-eval's environment needs no vidrip;
- ``test.jsonl``: the usable test records.

The judge is read from the environment when the task runs: ``VIDRIP_JUDGE_BASE_URL``, ``VIDRIP_JUDGE_MODEL``,
``VIDRIP_JUDGE_API_KEY`` (else ``OPENAI_API_KEY``); the videos from ``VIDRIP_MEDIA_ROOT`` (default: the
export's media root). Consistency needs paired documents, which lmms-eval's generic tasks do not have: it
is left out of the export.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from vidrip.eval.config import EvalConfig
from vidrip.eval.prompts import PAPER_CRITERIA

__all__ = ["export_lmms_eval"]

_UTILS = '''"""lmms-eval hooks for the vidrip test set {task!r} (written by `vidrip eval export-lmms-eval`).

Research use only, not for clinical decisions. The judge: $VIDRIP_JUDGE_BASE_URL, $VIDRIP_JUDGE_MODEL,
$VIDRIP_JUDGE_API_KEY (else $OPENAI_API_KEY). The videos: $VIDRIP_MEDIA_ROOT. A judge reply with no usable
score after 5 retries scores 0, as ViDRiP's released task does, and is counted in `judge_failures`.
"""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from vidrip_chat import ChatClient, ItemFailed  # noqa: E402
from vidrip_judge_prompts import PROMPT_VERSION, judge_messages, parse_judge_score  # noqa: E402

CRITERIA = {criteria!r}
MEDIA_ROOT = {media_root!r}
JUDGE_MODEL = {judge_model!r}
JUDGE_BASE_URL = {judge_base_url!r}
_judge = None


def _client():
    global _judge
    if _judge is None:
        _judge = ChatClient(
            base_url=os.environ.get("VIDRIP_JUDGE_BASE_URL") or JUDGE_BASE_URL,
            api_key=os.environ.get("VIDRIP_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY") or "EMPTY",
            cache_dir=HERE / "judge_cache",
            max_retries=5,
            max_concurrency=1,
            setting="VIDRIP_JUDGE",
            what="judge",
            key_hint="$VIDRIP_JUDGE_API_KEY or $OPENAI_API_KEY",
        )
    return _judge


def doc_to_visual(doc):
    path = Path(os.environ.get("VIDRIP_MEDIA_ROOT") or MEDIA_ROOT) / doc["video_name"]
    if not path.is_file():
        raise FileNotFoundError(f"{{path}}: the test item's video is not there (set VIDRIP_MEDIA_ROOT)")
    return [str(path)]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kwargs = lmms_eval_specific_kwargs or {{}}
    return f"{{kwargs.get('pre_prompt', '')}}{{doc['question']}}{{kwargs.get('post_prompt', '')}}"


def doc_to_target(doc):
    return doc["answer"]


def process_results(doc, results):
    prediction = results[0] if results else ""
    model = os.environ.get("VIDRIP_JUDGE_MODEL") or JUDGE_MODEL
    out, failures = {{}}, 0
    for criterion in CRITERIA:
        messages = judge_messages(criterion, doc["question"], doc["answer"], prediction)
        request = {{"model": model, "messages": messages, "temperature": 0, "max_tokens": 64}}
        try:
            score = _client().complete(
                request, parse_judge_score, cache_extra={{"prompt_version": PROMPT_VERSION}}, remember_unparsable=True
            )
            failed = False
        except ItemFailed:
            score, failed = 0.0, True
            failures += 1
        out[f"gpt_eval_score_{{criterion}}"] = {{
            "video_name": doc["video_name"],
            "Q": doc["question"],
            "A": doc["answer"],
            "pred": prediction,
            "score": score,
            "failed": failed,
        }}
    out["judge_failures"] = failures
    return out


def aggregate_score(results):
    return sum(r["score"] for r in results) / len(results) if results else 0.0


def aggregate_failures(results):
    return sum(results)
'''


class _FunctionTag:
    """lmms-eval's ``!function module.name`` YAML tag, written as such."""

    def __init__(self, target: str):
        self.target = target


def _function_representer(dumper: yaml.SafeDumper, data: _FunctionTag):
    return dumper.represent_scalar("!function", data.target)


class _TaskDumper(yaml.SafeDumper):
    pass


_TaskDumper.add_representer(_FunctionTag, _function_representer)


def export_lmms_eval(cfg: EvalConfig, out_dir: str | Path, task: str = "vidrip_video_test") -> Path:
    """Write the task folder ``out_dir/task`` (see module docstring); returns it."""
    from vidrip import chat
    from vidrip.eval import prompts
    from vidrip.eval.run import load_test_set

    if not task.isidentifier():
        raise ValueError(f"--task {task!r}: use letters, digits and underscores (it names files and metrics)")
    test_set = load_test_set(cfg)
    items, fingerprint = test_set.items, test_set.fingerprint
    folder = Path(out_dir) / task
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "test.jsonl"
    data.write_text("".join(json.dumps(item.to_json(), ensure_ascii=False) + "\n" for item in items))
    criteria = [c for c in (cfg.judge.criteria if cfg.judge else PAPER_CRITERIA) if c != "consistency"]
    judge_model = cfg.judge.model if cfg.judge else "gpt-3.5-turbo-0125"
    judge_base_url = (cfg.judge.base_url if cfg.judge else None) or "https://api.openai.com/v1"
    shutil.copyfile(chat.__file__, folder / "vidrip_chat.py")
    source = Path(prompts.__file__).read_text()
    if "from vidrip.chat import" not in source:
        raise RuntimeError(f"{prompts.__file__}: expected its import of vidrip.chat")
    (folder / "vidrip_judge_prompts.py").write_text(
        source.replace("from vidrip.chat import", "from vidrip_chat import")
    )
    (folder / "utils.py").write_text(
        _UTILS.format(
            task=task,
            criteria=criteria,
            media_root=str(cfg.resolved_media_root().resolve()),
            judge_model=judge_model,
            judge_base_url=judge_base_url,
        )
    )
    spec = {
        "task": task,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data.resolve())}, "local_files_only": True},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_visual": _FunctionTag("utils.doc_to_visual"),
        "doc_to_text": _FunctionTag("utils.doc_to_text"),
        "doc_to_target": _FunctionTag("utils.doc_to_target"),
        "process_results": _FunctionTag("utils.process_results"),
        "metric_list": [
            {
                "metric": f"gpt_eval_score_{c}",
                "aggregation": _FunctionTag("utils.aggregate_score"),
                "higher_is_better": True,
            }
            for c in criteria
        ]
        + [
            {
                "metric": "judge_failures",
                "aggregation": _FunctionTag("utils.aggregate_failures"),
                "higher_is_better": False,
            }
        ],
        "generation_kwargs": {
            "max_new_tokens": 1024,
            "temperature": 0,
            "top_p": 1.0,
            "num_beams": 1,
            "do_sample": False,
        },
        "lmms_eval_specific_kwargs": {"default": {"pre_prompt": "", "post_prompt": ""}},
        "metadata": {
            "version": 0.0,
            "gpt_eval_model_name": judge_model,
            "modality": "video",
            "test_set_fingerprint": fingerprint,
            "note": "vidrip export; research use only, not for clinical decisions",
        },
    }
    text = yaml.dump(spec, Dumper=_TaskDumper, sort_keys=False, allow_unicode=True)
    (folder / f"{task}.yaml").write_text(f"# lmms-eval task written by `vidrip eval export-lmms-eval`\n{text}")
    return folder
