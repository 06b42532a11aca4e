"""Evaluation: the judge's prompts and parsing, aggregation by hand, a noisy judge on loopback, the whole job
against loopback endpoints (real HTTP, the real openai client, MLflow), and the lmms-eval export."""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from chat_server import ChatServer
from vidrip.chat import UnparsableOutput
from vidrip.eval import prompts
from vidrip.eval.config import EvalConfig
from vidrip.eval.judge import Judge, Judgement
from vidrip.eval.metrics import SampleMetrics, diagnosis_agrees, extract_diagnosis
from vidrip.eval.predict import Prediction
from vidrip.eval.prompts import judge_messages, parse_judge_score
from vidrip.eval.report import aggregate, markdown

SNAPSHOT = Path(__file__).parent / "snapshots" / "eval_prompts.txt"
CRITERION_OF_SYSTEM = {
    "factual accuracy": "correctness",
    "detail orientation": "detail",
    "contextual understanding": "context",
    "temporal understanding": "temporal",
    "consistency of generative outputs": "consistency",
}


def _criterion(body: dict) -> str:
    system = body["messages"][0]["content"]
    return next(c for key, c in CRITERION_OF_SYSTEM.items() if f"evaluating the {key}" in system)


def _prediction_in(body: dict) -> str:
    user = body["messages"][-1]["content"]
    return user.split("Predicted Answer: ", 1)[1].split("\n\n", 1)[0]


# ---------------------------------------------------------------------------------------------- prompts


def render_prompts() -> str:
    parts = [f"PROMPT_VERSION: {prompts.PROMPT_VERSION}"]
    for criterion in ("correctness", "detail", "context", "temporal"):
        system, user = judge_messages(criterion, "<QUESTION>", "<ANSWER>", "<PREDICTION>")
        parts.append(
            f"===== {criterion}: system =====\n{system['content']}\n===== {criterion}: user =====\n{user['content']}"
        )
    system, user = prompts.consistency_messages("<Q1>", "<Q2>", "<ANSWER>", "<P1>", "<P2>")
    parts.append(
        f"===== consistency: system =====\n{system['content']}\n===== consistency: user =====\n{user['content']}"
    )
    return "\n\n".join(parts) + "\n"


def test_judge_prompts_match_snapshot():
    """A prompt change must be a visible diff: update with VIDRIP_UPDATE_SNAPSHOTS=1 (and bump PROMPT_VERSION)."""
    text = render_prompts()
    if os.environ.get("VIDRIP_UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.write_text(text)
    assert SNAPSHOT.read_text() == text, f"prompts changed: rerun with VIDRIP_UPDATE_SNAPSHOTS=1 to update {SNAPSHOT}"


def test_judge_prompts_have_the_video_chatgpt_shape():
    for criterion in ("correctness", "detail", "context", "temporal"):
        system, user = judge_messages(criterion, "Q?", "A.", "P.")
        assert system["role"] == "system" and user["role"] == "user"
        assert "##INSTRUCTIONS" in system["content"]
        assert "Question: Q?\nCorrect Answer: A.\nPredicted Answer: P.\n\n" in user["content"]
        assert "integer value between 0 and 5" in user["content"] and "Python dictionary string" in user["content"]
    with pytest.raises(ValueError, match="consistency has its own"):
        judge_messages("consistency", "Q", "A", "P")


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("{'score': 4}", 4.0),
        ('{"score": 3}', 3.0),
        ("```python\n{'score': 2}\n```", 2.0),
        ("Here is my evaluation: {'score': 5} Hope this helps.", 5.0),
        ("{''score': 4.8}", 4.8),  # the prompt's own example, typo included
        ("{'score': '3'}", 3.0),
        ("{'score': 3.5}", 3.5),
        ("Score: 1", 1.0),
        (" 0 ", 0.0),
        ("{'Score': 2}", 2.0),
    ],
)
def test_noisy_judge_replies_parse(reply, score):
    assert parse_judge_score(reply) == score


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        ("", "empty"),
        ("I think it is good.", "no score"),
        ("{'score': 7}", "outside 0..5"),
        ("{'score': -1}", "outside 0..5"),
        ("{'score': 'high'}", "not a number"),
        ("{'rating': 4}", "no 'score'"),
        ("{'score': True}", "not a number"),
    ],
)
def test_unusable_judge_replies_are_unparsable(reply, why):
    with pytest.raises(UnparsableOutput, match=why):
        parse_judge_score(reply)


# ------------------------------------------------------------------------------------------- aggregation


def test_aggregation_matches_hand_computed_numbers():
    j = lambda m, i, c, s, **kw: Judgement(m, i, f"v{i}.mp4", c, s, **kw)  # noqa: E731
    judgements = [
        j("A", 0, "context", 4.0),
        j("A", 1, "context", 2.0),
        j("A", 0, "correctness", 5.0),
        j("A", 1, "correctness", 0.0, failed=True),
        j("A", 0, "detail", 3.0),
        j("A", 1, "detail", 3.5),
        j("B", 0, "context", 1.0),
        j("B", 1, "context", 0.0, prediction_failed=True),
        j("B", 0, "correctness", 2.0),
        j("B", 1, "correctness", 0.0, prediction_failed=True),
        j("B", 0, "detail", 2.0),
        j("B", 1, "detail", 0.0, prediction_failed=True),
    ]
    samples = [
        SampleMetrics("A", 0, 0.9, "x", "x", True),
        SampleMetrics("A", 1, 0.5, "y", "z", False),
        SampleMetrics("B", 0, 0.4, "x", None, False),
        SampleMetrics("B", 1, 0.0, None, None, None),
    ]
    rows = aggregate(["A", "B"], judgements, samples, ["context", "correctness", "detail"], {"B": 1}, {"A": 2, "B": 2})
    a, b = rows
    # A: context (4+2)/2=3, correct (5+0)/2=2.5, detail (3+3.5)/2=3.25; avg 8.75/3=2.9167; norm 58.33
    assert (a.criteria["context"].mean, a.criteria["correctness"].mean, a.criteria["detail"].mean) == (3, 2.5, 3.25)
    assert a.avg == pytest.approx(8.75 / 3) and a.norm_avg == pytest.approx(8.75 / 3 / 5 * 100)
    assert a.criteria["correctness"].judge_failures == 1 and a.criteria["context"].judge_failures == 0
    assert a.similarity == pytest.approx(0.7) and a.diagnosis_agreement == 0.5 and a.diagnosis_n == 2
    # B: context 0.5, correct 1.0, detail 1.0; avg 2.5/3; one failed prediction behind three zeros
    assert b.avg == pytest.approx(2.5 / 3) and b.criteria["detail"].prediction_failures == 1
    assert b.prediction_failures == 1 and b.similarity == pytest.approx(0.2)
    assert b.diagnosis_agreement == 0.0 and b.diagnosis_n == 1 and b.diagnosis_stated == 0.0
    table = markdown(rows, ["# header"], ["context", "correctness", "detail"], judged=True)
    assert "| Model | Context | Correct | Detail | Avg | Norm-Avg |" in table
    assert "| A | 3.00 | 2.50 | 3.25 | 2.92 | 58.3 |" in table
    assert "| B | 0.50 | 1.00 | 1.00 | 0.83 | 16.7 |" in table
    assert "| A | 0/2 | 1/2 | 0/2 | 0/2 |" in table and "| B | 0/2 | 0/2 | 0/2 | 1/2 |" in table


def test_diagnosis_lines_are_compared_without_case_or_punctuation():
    assert extract_diagnosis("Findings.\n\nDiagnosis: Lymph-node  Metastasis.") == "lymph node metastasis"
    assert extract_diagnosis("diagnosis is unclear") is None
    assert extract_diagnosis("Diagnosis: a. Later, final diagnosis: b") == "b"
    assert diagnosis_agrees("... Diagnosis: stroma-rich region", "x. Diagnosis: Stroma rich region.") is True
    assert diagnosis_agrees("... Diagnosis: tumour", "x. Diagnosis: stroma") is False
    assert diagnosis_agrees("no diagnosis line", "x. Diagnosis: stroma") is False
    assert diagnosis_agrees("Diagnosis: x", "a reference without one") is None


# ------------------------------------------------------------------------------------------ noisy judge


class Sequenced:
    """A judge that answers each distinct request with the next reply of its script ("SLOW" sleeps 3 s)."""

    def __init__(self, script: list[str]):
        self.script, self.seen, self.lock = script, {}, threading.Lock()

    def __call__(self, body: dict) -> str:
        key = json.dumps(body["messages"])
        with self.lock:
            n = self.seen.get(key, 0)
            self.seen[key] = n + 1
        reply = self.script[min(n, len(self.script) - 1)]
        if reply == "SLOW":
            time.sleep(3.0)
            return "{'score': 5}"
        return reply


def _judge_cfg(server: ChatServer, **kw):
    from vidrip.eval.config import JudgeConfig

    return JudgeConfig(base_url=server.base_url, model="judge-x", timeout_s=1.0, **kw)


def _items_and_preds(n: int = 2):
    from vidrip.data.schema import TestRecord

    items = [TestRecord(video_name=f"v{i}.mp4", question=f"Q{i}?", answer=f"A{i}. Diagnosis: d{i}") for i in range(n)]
    preds = [Prediction("m", i, f"v{i}.mp4", "question", f"Q{i}?", f"P{i}") for i in range(n)]
    return items, preds


def test_the_judge_retries_malformed_empty_out_of_range_and_slow_replies(tmp_path):
    script = ["The answer seems fine.", "", "{'score': 9}", "SLOW", "{'score': 2}"]
    items, preds = _items_and_preds(1)
    with ChatServer(responder=Sequenced(script)) as server:
        judge = Judge(_judge_cfg(server, criteria=["correctness"], max_retries=5), server.base_url, tmp_path)
        [j] = judge.score(items, preds)
        assert (j.score, j.failed) == (2.0, False)
        assert judge.chat.stats["retries"] == 4 and judge.chat.stats["requests"] == 5
        assert judge.chat.stats["failures"] == 0
        sent = server.requests[0]
        assert sent["temperature"] == 0 and sent["model"] == "judge-x" and sent["max_tokens"] == 64
        assert "response_format" not in sent  # the paper's judge read a dict from prose


def test_a_structured_judge_is_sent_the_scores_schema(tmp_path):
    """``structured_output``: the endpoint is asked for ``{"score": integer 0-5}`` by JSON schema (what makes
    the demo's stand-in judge answer scores at all)."""
    items, preds = _items_and_preds(1)
    with ChatServer(responder=lambda b: '{"score": 4}') as server:
        judge = Judge(_judge_cfg(server, criteria=["detail"], structured_output=True), server.base_url, tmp_path)
        [j] = judge.score(items, preds)
        assert (j.score, j.failed) == (4.0, False)
        fmt = server.requests[0]["response_format"]
        assert fmt["type"] == "json_schema" and fmt["json_schema"]["schema"]["required"] == ["score"]
        assert fmt["json_schema"]["schema"]["properties"]["score"] == {"type": "integer", "minimum": 0, "maximum": 5}


def test_a_judge_that_never_gives_a_score_scores_zero_and_is_counted_once_cached(tmp_path):
    items, preds = _items_and_preds(2)
    with ChatServer(responder=Sequenced(["no idea"])) as server:
        cfg = _judge_cfg(server, criteria=["correctness", "detail"], max_retries=2)
        judge = Judge(cfg, server.base_url, tmp_path)
        judgements = judge.score(items, preds)
        assert [(j.score, j.failed) for j in judgements] == [(0.0, True)] * 4
        assert all(j.reason.startswith("judge output unparsable after 2 retries") for j in judgements)
        assert judge.chat.stats["requests"] == 4 * 3 and judge.chat.stats["failures"] == 4
        again = Judge(cfg, server.base_url, tmp_path)
        assert [(j.score, j.failed) for j in again.score(items, preds)] == [(0.0, True)] * 4
        assert again.chat.stats["requests"] == 0 and again.chat.stats["cache_hits"] == 4
        asking = Judge(cfg.model_copy(update={"remember_unparsable": False}), server.base_url, tmp_path)
        asking.score(items, preds)
        assert asking.chat.stats["requests"] == 4 * 3


def test_the_same_judgement_asked_four_times_at_once_is_paid_once(tmp_path):
    items, _ = _items_and_preds(1)
    preds = [Prediction(m, 0, "v0.mp4", "question", "Q0?", "the same answer") for m in "abcd"]
    with ChatServer(responder=lambda b: "{'score': 3}", delay_s=0.3) as server:
        judge = Judge(_judge_cfg(server, criteria=["detail"], max_concurrency=4), server.base_url, tmp_path)
        assert [j.score for j in judge.score(items, preds)] == [3.0] * 4
        assert len(server.requests) == 1 and judge.chat.stats["cache_hits"] == 3


def test_rate_limits_are_waited_out(tmp_path):
    items, preds = _items_and_preds(1)
    with ChatServer(fail_first=2, fail_status=429, retry_after="0.05", responder=lambda b: "{'score': 3}") as server:
        judge = Judge(_judge_cfg(server, criteria=["detail"]), server.base_url, tmp_path)
        [j] = judge.score(items, preds)
        assert j.score == 3.0 and not j.failed and len(server.requests) == 3
        assert judge.chat.stats["retries"] == 2 and judge.chat.stats["requests"] == 3


def test_a_failed_prediction_scores_zero_without_asking_and_consistency_needs_question_2(tmp_path):
    from vidrip.data.schema import TestRecord

    items = [
        TestRecord(video_name="a.mp4", question="What?", answer="X.", question_2="Which?"),
        TestRecord(video_name="b.mp4", question="What?", answer="Y."),
    ]
    preds = [
        Prediction("m", 0, "a.mp4", "question", "What?", "X."),
        Prediction("m", 0, "a.mp4", "question_2", "Which?", "X too."),
        Prediction("m", 1, "b.mp4", "question", "What?", "", error="model request failed"),
    ]
    with ChatServer(responder=lambda b: "{'score': 4}") as server:
        judge = Judge(_judge_cfg(server, criteria=["context", "consistency"]), server.base_url, tmp_path)
        got = {(j.index, j.criterion): j for j in judge.score(items, preds)}
        assert set(got) == {(0, "context"), (0, "consistency"), (1, "context")}
        assert got[(0, "consistency")].score == 4.0 and got[(1, "context")].prediction_failed
        assert got[(1, "context")].score == 0.0 and len(server.requests) == 2
        consistency = next(b for b in server.requests if _criterion(b) == "consistency")
        assert "Predicted Answer to Question 2: X too." in consistency["messages"][1]["content"]


# -------------------------------------------------------------------------------------------- the job


def _video_key(body: dict) -> str:
    url = body["messages"][0]["content"][0]["video_url"]["url"]
    return hashlib.sha256(base64.b64decode(url.split(",", 1)[1])).hexdigest()


@pytest.fixture
def test_set(sample_dir, tmp_path):
    """The sample's test set, plus one record whose video is missing."""
    records = json.loads((sample_dir / "test.json").read_text())
    bad = {"video_name": "videos/missing.mp4", "question": "Q?", "answer": "A."}
    path = tmp_path / "test.json"
    path.write_text(json.dumps([*records, bad]))
    return path, records


def test_eval_job_scores_two_models_writes_the_table_tracks_it_and_pays_nothing_on_rerun(
    sample_dir, test_set, tmp_path, tracking
):
    import mlflow

    from vidrip.eval.run import evaluate

    path, records = test_set
    answers = {}  # video digest -> (reference answer, item index)
    for i, r in enumerate(records):
        answers.setdefault(hashlib.sha256((sample_dir / r["video_name"]).read_bytes()).hexdigest(), []).append(i)

    def model(body: dict) -> str:
        i = answers[_video_key(body)][0]
        if body["model"] == "good":
            return records[i]["answer"]  # right, diagnosis included
        return "Some tissue is shown. Diagnosis: something else"

    def judge(body: dict) -> str:
        criterion, prediction = _criterion(body), _prediction_in(body)
        good = "something else" not in prediction
        replies = {  # each criterion's reply in another usual shape of noise
            "correctness": "{'score': 5}" if good else "{'score': 1}",
            "detail": "```python\n{'score': 4.0}\n```" if good else "{'score': 2}",
            "context": 'Sure: {"score": "3"}' if good else "I cannot tell.",
        }
        return replies[criterion]

    with ChatServer(responder=model) as models, ChatServer(responder=judge) as judge_server:
        cfg = EvalConfig.model_validate(
            {
                "test_set": str(path),
                "media_root": str(sample_dir),
                "models": [
                    {"name": "stage 3", "base_url": models.base_url, "model": "good", "revision": "run-1"},
                    {"name": "baseline", "base_url": models.base_url, "model": "bad", "max_tokens": 256},
                ],
                "judge": {"base_url": judge_server.base_url, "model": "judge-x", "max_retries": 1},
                "out": str(tmp_path / "eval"),
                "workdir": str(tmp_path),
                "tracking": tracking.model_dump(),
            }
        )
        result = evaluate(cfg)
        n = len(records)
        sent = models.requests[0]
        assert sent["media_io_kwargs"] == {"video": {"num_frames": 32}}
        assert sent["temperature"] == 0 and {r["max_tokens"] for r in models.requests} == {1024, 256}
        assert len(models.requests) == 2 * n and result.skipped_records and "missing.mp4" in result.skipped_records[0]
        # judge calls: good: 3 per item; baseline: correctness + detail once, context 1 + 1 retry
        assert result.stats["judge"]["requests"] == 3 * n + 4 * n and result.stats["judge"]["failures"] == n

        good, bad = result.rows
        assert (good.criteria["correctness"].mean, good.criteria["detail"].mean, good.criteria["context"].mean) == (
            5.0,
            4.0,
            3.0,
        )
        assert good.avg == 4.0 and good.norm_avg == 80.0 and good.diagnosis_agreement == 1.0
        assert good.similarity == pytest.approx(1.0, abs=1e-4)
        assert bad.criteria["context"].mean == 0.0 and bad.criteria["context"].judge_failures == n
        assert bad.avg == pytest.approx(1.0) and bad.diagnosis_agreement == 0.0 and bad.similarity < 0.9

        table = Path(result.paths["table_md"]).read_text()
        assert "| Model | Context | Correct | Detail | Avg | Norm-Avg |" in table
        assert "| stage 3 | 3.00 | 5.00 | 4.00 | 4.00 | 80.0 |" in table
        assert "| baseline | 0.00 | 1.00 | 2.00 | 1.00 | 20.0 |" in table
        assert "Judge: judge-x" in table and "fingerprint" in table and f"{n} items" in table
        with open(result.paths["table_csv"]) as f:
            rows = list(csv.DictReader(f))
        assert rows[0]["Model"] == "stage 3" and float(rows[0]["Norm-Avg"]) == 80.0
        assert rows[1]["Context judge failures"] == str(n)
        assert Path(result.paths["chart"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        failures = [json.loads(line) for line in Path(result.paths["failures"]).read_text().splitlines()]
        assert len(failures) == n and {f["criterion"] for f in failures} == {"context"}

        client = mlflow.MlflowClient(tracking_uri=cfg.tracking.uri)
        run = client.get_run(result.run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags["vidrip.eval.model.0.revision"] == "run-1"
        assert run.data.tags["vidrip.eval.judge"] == "judge-x"
        assert run.data.metrics["stage_3.norm_avg"] == 80.0 and run.data.metrics["baseline.context_judge_failures"] == n
        artifacts = {a.path for a in client.list_artifacts(result.run_id)}
        assert {"table.md", "table.csv", "chart.png", "judgements.jsonl", "failures.jsonl"} <= artifacts

        again = evaluate(cfg)
        assert again.stats["judge"]["requests"] == 0 and again.stats["judge"]["cache_hits"] == 6 * n
        assert all(st["requests"] == 0 for who, st in again.stats.items() if who != "judge")
        assert len(models.requests) == 2 * n
        assert Path(again.paths["table_md"]).read_text() == table

        moved = evaluate(cfg.model_copy(update={"models": [cfg.models[0].model_copy(update={"revision": "run-2"})]}))
        assert moved.stats["stage 3"]["requests"] == n  # new weights behind the same name: asked again


def test_without_a_judge_the_judge_free_metrics_still_say_something(sample_dir, tmp_path, tracking):
    from vidrip.eval.run import evaluate

    with ChatServer(responder=lambda b: "Tissue. Diagnosis: stroma-rich region") as server:
        cfg = EvalConfig.model_validate(
            {
                "test_set": str(sample_dir / "test.json"),
                "models": [{"name": "m", "base_url": server.base_url, "model": "m", "num_frames": None}],
                "judge": None,
                "judge_free": {"similarity": False},
                "out": str(tmp_path / "eval"),
                "workdir": str(tmp_path),
                "tracking": tracking.model_dump(),
            }
        )
        result = evaluate(cfg)
        assert "media_io_kwargs" not in server.requests[0]
    table = result.table
    assert "No judge configured" in table and "| Model | Context" not in table
    assert "Diagnosis agreement" in table and "chart" not in result.paths
    [row] = result.rows
    assert row.diagnosis_stated == 1.0 and 0 < row.diagnosis_agreement < 1


def test_served_models_are_tagged_with_their_registry_version_and_base(tmp_path, tracking):
    from vidrip.serve.config import ServeConfig
    from vidrip.serve.launch import served_revisions
    from vidrip.tracking import Lineage

    adapter = tmp_path / "stage3"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/models/stage2"}))
    lineage = Lineage(tracking, tmp_path)
    with lineage.run("train", ServeConfig()) as run:
        pass
    version = lineage.register("vidrip-video", adapter, run.run_id)
    lineage.client.set_registered_model_alias("vidrip-video", "champion", version.version)
    cfg = ServeConfig(adapters={"vidrip-video": "models:/vidrip-video@champion", "other": str(adapter)})
    got = served_revisions(cfg, lineage)
    assert got["vidrip-video"] == (
        f"models:/vidrip-video@champion = version 1 of MLflow run {run.run_id} ({adapter.resolve()})"
    )
    assert got["other"] == str(adapter.resolve()) and got["vidrip-base"] == "/models/stage2"


def test_endpoints_left_to_serve_need_a_serve_section(sample_dir):
    from vidrip.config import ConfigError

    cfg = EvalConfig.model_validate(
        {"test_set": str(sample_dir / "test.json"), "models": [{"name": "m", "model": "x"}]}
    )
    with pytest.raises(ConfigError, match=r"models\[0\]\.base_url, judge\.base_url: not set"):
        cfg.check_endpoints()
    with pytest.raises(ValueError, match="each needs its own name"):
        EvalConfig.model_validate({"models": [{"name": "m", "model": "x"}, {"name": "m", "model": "y"}]})
    with pytest.raises(ValueError, match="criteria"):
        EvalConfig.model_validate({"models": [{"name": "m", "model": "x"}], "judge": {"criteria": ["colour"]}})


# ---------------------------------------------------------------------------------------------- lmms-eval


class _FunctionLoader(yaml.SafeLoader):
    """Reads lmms-eval's ``!function module.name`` tags as lmms-eval does."""


_FunctionLoader.add_constructor("!function", lambda loader, node: ("function", loader.construct_scalar(node)))


def test_the_lmms_eval_export_loads_and_its_hooks_score_like_vidrip_eval(sample_dir, tmp_path, subprocess_env):
    from vidrip.eval.lmms_export import export_lmms_eval

    cfg = EvalConfig.model_validate(
        {"test_set": str(sample_dir / "test.json"), "models": [{"name": "m", "model": "x", "base_url": "http://x/v1"}]}
    )
    folder = export_lmms_eval(cfg, tmp_path / "tasks")
    spec = yaml.load((folder / "vidrip_video_test.yaml").read_text(), Loader=_FunctionLoader)
    assert spec["task"] == "vidrip_video_test" and spec["output_type"] == "generate_until"
    assert spec["generation_kwargs"]["max_new_tokens"] == 1024 and spec["generation_kwargs"]["do_sample"] is False
    assert [m["metric"] for m in spec["metric_list"]] == [
        "gpt_eval_score_context",
        "gpt_eval_score_correctness",
        "gpt_eval_score_detail",
        "judge_failures",
    ]
    hooks = [spec[k] for k in ("doc_to_visual", "doc_to_text", "doc_to_target", "process_results")]
    hooks += [m["aggregation"] for m in spec["metric_list"]]
    data = Path(spec["dataset_kwargs"]["data_files"]["test"])
    docs = [json.loads(line) for line in data.read_text().splitlines()]
    assert len(docs) == len(json.loads((sample_dir / "test.json").read_text()))

    # the hooks, in a process where vidrip cannot be imported: the folder stands alone
    script = f"""
import json, sys
sys.modules["vidrip"] = None
sys.path.insert(0, {str(folder)!r})
import utils
hooks = {json.dumps([h[1] for h in hooks])}
assert all(callable(getattr(utils, name.split(".", 1)[1])) for name in hooks), hooks
docs = [json.loads(line) for line in open({str(data)!r})]
out = []
for doc in docs:
    [video] = utils.doc_to_visual(doc)
    assert video.endswith(doc["video_name"]), video
    assert utils.doc_to_text(doc, {{"pre_prompt": "P: ", "post_prompt": ""}}) == "P: " + doc["question"]
    out.append(utils.process_results(doc, ["Tissue. Diagnosis: x"]))
print(json.dumps({{
    "context": utils.aggregate_score([o["gpt_eval_score_context"] for o in out]),
    "correctness": utils.aggregate_score([o["gpt_eval_score_correctness"] for o in out]),
    "failures": utils.aggregate_failures([o["judge_failures"] for o in out]),
}}))
"""

    def judge(body: dict) -> str:
        return {"context": "{'score': 2}", "correctness": "nothing useful", "detail": "{'score': 4}"}[_criterion(body)]

    with ChatServer(responder=judge) as server:
        env = {**subprocess_env, "VIDRIP_JUDGE_BASE_URL": server.base_url, "VIDRIP_JUDGE_MODEL": "judge-x"}
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
        assert out.returncode == 0, out.stderr
        got = json.loads(out.stdout.strip().splitlines()[-1])
        assert got == {"context": 2.0, "correctness": 0.0, "failures": len(docs)}
        assert {b["model"] for b in server.requests} == {"judge-x"}


@pytest.mark.skipif(
    not os.environ.get("VIDRIP_LMMS_EVAL_PYTHON"),
    reason="set VIDRIP_LMMS_EVAL_PYTHON to a Python with lmms-eval (make test-lmms-eval builds one)",
)
def test_lmms_eval_itself_loads_the_exported_task(sample_dir, tmp_path, subprocess_env):
    from vidrip.eval.lmms_export import export_lmms_eval

    cfg = EvalConfig.model_validate(
        {"test_set": str(sample_dir / "test.json"), "models": [{"name": "m", "model": "x", "base_url": "http://x/v1"}]}
    )
    folder = export_lmms_eval(cfg, tmp_path / "tasks")
    script = f"""
from lmms_eval.tasks import TaskManager, get_task_dict
manager = TaskManager(include_path={str(folder)!r}, include_defaults=False)
assert "vidrip_video_test" in manager.all_tasks, manager.all_tasks
task = get_task_dict(["vidrip_video_test"], manager)["vidrip_video_test"]
docs = list(task.test_docs())
print(len(docs), task.doc_to_visual(docs[0])[0], task.config.generation_kwargs["max_new_tokens"])
"""
    env = {**subprocess_env, "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run(
        [os.environ["VIDRIP_LMMS_EVAL_PYTHON"], "-c", script], capture_output=True, text=True, env=env, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    count, video, max_new = out.stdout.strip().splitlines()[-1].split()
    assert int(count) == len(json.loads((sample_dir / "test.json").read_text()))
    assert Path(video).is_file() and int(max_new) == 1024
