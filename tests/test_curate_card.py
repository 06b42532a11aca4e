"""Dataset card and Croissant metadata of a curation output: written, loaded back with mlcroissant, broken on purpose.

The output is a tiny fake of the curation layout (2 clips, 1 video, 1 reject); mlcroissant reads only
local files (the session's network guard fails the run on any other attempt).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vidrip import netguard
from vidrip.curate.card import (
    CLIP_INSTRUCTIONS,
    CLIPS_TABLE,
    CROISSANT_CONFORMS_TO,
    CURATION_STEPS,
    REJECTS_TABLE,
    VIDEO_INSTRUCTIONS,
    DatasetInfo,
    check_croissant,
    endpoint_host,
    output_counts,
    write_card,
    write_croissant,
)
from vidrip.data.encode import write_mp4
from vidrip.data.fingerprint import file_sha256
from vidrip.data.schema import InstructionRecord

pytestmark = [
    # third-party code (mlcroissant 1.1.1 on rdflib 7 and pandas 3), not ours
    pytest.mark.filterwarnings("ignore:ConjunctiveGraph is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The inplace keyword in DataFrame.reset_index is deprecated"),
]

SOURCE = "/data/raw/lymph_node_teaching.mp4"
SOURCE_SHA = "5" * 64
LICENCE = "CC-BY-NC-ND-3.0"
LICENCE_URL = "https://creativecommons.org/licenses/by-nc-nd/3.0/"


def _record(rid: str, video: str, question: str, answer: str) -> dict:
    rec = {
        "id": rid,
        "video": video,
        "conversations": [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}],
    }
    return InstructionRecord.model_validate(rec).to_json()


def _write_output(out: Path) -> dict[str, int]:
    """The curation layout with 2 clips, 1 video, 1 reject; returns the rows written per record set."""
    frames = [np.full((32, 48, 3), 30 * i, np.uint8) for i in range(4)]
    for clip in ("vid0-000", "vid0-001"):
        write_mp4(out / "clips" / f"{clip}.mp4", frames, fps=2)
    write_mp4(out / "videos" / "vid0.mp4", frames, fps=2)
    clips = pd.DataFrame(
        {
            "clip_id": ["vid0-000", "vid0-001"],
            "video": ["clips/vid0-000.mp4", "clips/vid0-001.mp4"],
            "source": [SOURCE, SOURCE],
            "source_sha256": [SOURCE_SHA, SOURCE_SHA],
            "start": [2.0, 8.5],
            "end": [6.0, 12.5],
            "fps": [2.0, 2.0],
            "num_frames": [4, 4],
            "width": [48, 48],
            "height": [32, 32],
            "transcript": ["Low power view of a lymph node.", "Here the capsule | is breached."],
            "screen_text": [["H&E x4", "lymph node"], []],
            "quality": pd.array([4, None], dtype="Int64"),
            "kept": [True, False],
            "crop": [[20, 24, 300, 220], [0, 0, 320, 240]],
        }
    )
    clips.to_parquet(out / CLIPS_TABLE, index=False)
    rejects = pd.DataFrame(
        {"source": [SOURCE], "step": ["tissue"], "reason": ["presenter only"], "start": [0.0], "end": [None]}
    ).astype({"start": "float64", "end": "float64"})
    rejects.to_parquet(out / REJECTS_TABLE, index=False)
    clip_records = [
        _record("vid0-000-0", "clips/vid0-000.mp4", "Describe this clip.", "Sheets of tumour cells."),
        _record("vid0-000-1", "clips/vid0-000.mp4", "Which stain is this?", "H&E."),
    ]
    video_records = [
        _record(
            "vid0",
            "videos/vid0.mp4",
            "What is the diagnosis?",
            "Metastatic carcinoma in a lymph node. Diagnosis: lymph node metastasis",
        )
    ]
    (out / CLIP_INSTRUCTIONS).write_text(json.dumps(clip_records, indent=1))
    (out / VIDEO_INSTRUCTIONS).write_text(json.dumps(video_records, indent=1))
    return {"clips": 2, "rejects": 1, "clip_instructions": 2, "video_instructions": 1}


def _info(out: Path) -> DatasetInfo:
    return DatasetInfo(
        name="vidrip-curated-test",
        description="Curated clips and LLM instructions from one teaching video (test fixture).",
        licence=LICENCE,
        licence_url=LICENCE_URL,
        sources=[
            {"path": SOURCE, "sha256": SOURCE_SHA, "licence": LICENCE, "provenance": "ViDRiP release, YouTube"},
        ],
        generator={"model": "qwen2-7b-instruct", "base_url": "http://user:pw@127.0.0.1:8000/v1", "prompt_version": "3"},
        pipeline={"config_sha256": "c" * 16, "git_commit": "d" * 40, "vidrip_version": "0.1.0", "date": "2026-01-31"},
        counts=output_counts(out),
    )


@pytest.fixture(scope="module")
def curated(tmp_path_factory) -> tuple[Path, dict[str, int], DatasetInfo]:
    out = tmp_path_factory.mktemp("curated") / "out"
    written = _write_output(out)
    info = _info(out)
    write_card(out, info)
    write_croissant(out, info)
    return out, written, info


@pytest.fixture
def broken(curated, tmp_path) -> Path:
    """A private copy of the output, to break."""
    out = tmp_path / "out"
    shutil.copytree(curated[0], out)
    return out


def test_check_croissant_counts_every_record_set(curated, caplog):
    out, written, _ = curated
    with caplog.at_level(logging.WARNING):
        assert check_croissant(out / "croissant.json") == written
    assert "not standard" not in caplog.text  # the @context is the one Croissant 1.0 gives


def test_records_read_back_with_their_values(curated):
    import mlcroissant as mlc

    out, _, _ = curated
    ds = mlc.Dataset(jsonld=out / "croissant.json")
    clips = list(ds.records("clips"))
    assert [c["clips/clip_id"] for c in clips] == [b"vid0-000", b"vid0-001"]
    assert clips[0]["clips/screen_text"] == [b"H&E x4", b"lymph node"] and clips[1]["clips/screen_text"] == []
    assert list(clips[0]["clips/crop"]) == [20, 24, 300, 220]
    assert [c["clips/quality"] for c in clips] == [4, None]
    assert [c["clips/kept"] for c in clips] == [True, False]
    assert clips[1]["clips/start"] == 8.5 and clips[0]["clips/num_frames"] == 4
    (reject,) = ds.records("rejects")
    assert reject["rejects/reason"] == b"presenter only" and reject["rejects/end"] is None
    (video,) = ds.records("video_instructions")
    assert video["video_instructions/video"] == b"videos/vid0.mp4"
    assert video["video_instructions/question"].startswith(b"<image>\n")
    assert video["video_instructions/answer"].endswith(b"Diagnosis: lymph node metastasis")
    assert ds.metadata.license[0].name == LICENCE and ds.metadata.license[0].url == LICENCE_URL


def test_croissant_document(curated):
    out, _, _ = curated
    doc = json.loads((out / "croissant.json").read_text())
    assert doc["conformsTo"] == CROISSANT_CONFORMS_TO and doc["@type"] == "sc:Dataset"
    assert "Research use only, not for clinical decisions" in doc["description"]
    assert "citeAs" in doc and doc["dateCreated"] == "2026-01-31"
    files = {d["@id"]: d for d in doc["distribution"]}
    for name in (CLIPS_TABLE, REJECTS_TABLE, CLIP_INSTRUCTIONS, VIDEO_INSTRUCTIONS):
        assert files[name]["sha256"] == file_sha256(out / name)
        assert files[name]["contentUrl"] == name
    assert files[CLIPS_TABLE]["encodingFormat"] == "application/x-parquet"
    assert files["clip-files"]["includes"] == "clips/*.mp4" and files["video-files"]["includes"] == "videos/*.mp4"
    assert doc["isBasedOn"] == [
        {
            "@type": "sc:VideoObject",
            "name": SOURCE,
            "sha256": SOURCE_SHA,
            "description": "ViDRiP release, YouTube",
            "license": LICENCE,
        }
    ]
    text = json.dumps(doc)
    assert "127.0.0.1:8000" in text and "user:pw" not in text and "/v1" not in text


def test_card(curated):
    out, _, info = curated
    card = (out / "README.md").read_text()
    assert card.startswith("# vidrip-curated-test\n")
    assert "Research use only, not for clinical decisions." in card
    assert LICENCE in card and LICENCE_URL in card
    assert SOURCE in card and SOURCE_SHA in card and "ViDRiP release, YouTube" in card
    assert "| 127.0.0.1:8000 |" in card and "user:pw" not in card
    assert "| kept_clips | 1 |" in card and f"| records: `{CLIP_INSTRUCTIONS}` | 2 |" in card
    positions = [card.index(f"**{name}**") for name, _ in CURATION_STEPS]
    assert positions == sorted(positions)
    assert info.counts == {
        "inputs": 1,
        "clips": 2,
        "kept_clips": 1,
        "rejects": 1,
        "records": {CLIP_INSTRUCTIONS: 2, VIDEO_INSTRUCTIONS: 1},
    }


def test_wrong_sha256_in_metadata_fails(broken):
    meta = broken / "croissant.json"
    doc = json.loads(meta.read_text())
    next(d for d in doc["distribution"] if d["@id"] == REJECTS_TABLE)["sha256"] = "0" * 64
    meta.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"rejects\.parquet is not identical") as err:
        check_croissant(meta)
    assert str(meta) in str(err.value) and "'rejects'" in str(err.value)


def test_file_changed_after_writing_fails(broken):
    records = json.loads((broken / CLIP_INSTRUCTIONS).read_text())
    (broken / CLIP_INSTRUCTIONS).write_text(json.dumps(records[:1]))
    with pytest.raises(ValueError, match=r"clip_instructions\.json is not identical"):
        check_croissant(broken / "croissant.json")


def test_missing_file_fails(broken):
    (broken / VIDEO_INSTRUCTIONS).unlink()
    with pytest.raises(ValueError, match=r"'video_instructions\.json' not found") as err:
        check_croissant(broken / "croissant.json")
    assert str(broken / "croissant.json") in str(err.value)


def test_invalid_metadata_fails(broken):
    meta = broken / "croissant.json"
    doc = json.loads(meta.read_text())
    del next(d for d in doc["distribution"] if d["@id"] == CLIPS_TABLE)["encodingFormat"]
    meta.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"(?s)not valid Croissant.*encodingFormat\" is mandatory"):
        check_croissant(meta)


def test_write_croissant_needs_every_file(broken):
    (broken / REJECTS_TABLE).unlink()
    with pytest.raises(FileNotFoundError, match=r"rejects\.parquet"):
        write_croissant(broken, DatasetInfo(name="x", description="x", licence=LICENCE, licence_url=LICENCE_URL))


def test_generator_shows_host_only_and_refuses_credentials():
    assert endpoint_host("https://key:secret@llm.example.org:8443/v1?x=1") == "llm.example.org:8443"
    assert endpoint_host("127.0.0.1:8000/v1") == "127.0.0.1:8000"
    assert endpoint_host("http://[::1]:8000/v1") == "[::1]:8000"
    info = DatasetInfo(
        name="x", description="x", licence=LICENCE, licence_url=LICENCE_URL, generator={"host": "http://h:1/v1"}
    )
    assert info.generator == {"host": "h:1"}
    with pytest.raises(ValueError, match="credentials"):
        DatasetInfo(name="x", description="x", licence=LICENCE, licence_url=LICENCE_URL, generator={"api_key": "k"})


def test_mlcroissant_contacted_nothing(guard_dir):
    """Runs last in this file: nothing above (mlcroissant, rdflib) tried to leave the machine."""
    ours = [
        a
        for a in netguard.attempts(guard_dir)
        if any(m in a["stack"] for m in ("mlcroissant", "rdflib", "curate/card.py"))
    ]
    assert ours == []
