"""Record schemas: good records load; every bad record is reported once, naming file, index and field."""

import json
import subprocess

import pytest

from vidrip.data.schema import InstructionRecord, RecordFileError, TestRecord, load_records


def _write(path, records):
    path.write_text(json.dumps(records))
    return path


def _rec(i, **kw):
    base = {
        "id": f"r{i}",
        "image": "img.png",
        "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "Tissue."}],
    }
    base.update(kw)
    return base


@pytest.fixture
def media(tmp_path):
    (tmp_path / "img.png").write_bytes(b"png")
    (tmp_path / "v.mp4").write_bytes(b"mp4")
    return tmp_path


def test_good_records_load(media):
    f = _write(media / "ok.json", [_rec(0), _rec(1, image=None, video="v.mp4")])
    result = load_records(f, InstructionRecord, media_root=media)
    assert [r.media_kind for r in result.records] == ["image", "video"]
    assert result.errors == []


def test_bad_record_file_one_line_per_bad_record(media):
    records = [
        _rec(0),
        {"image": "img.png", "conversations": _rec(1)["conversations"]},  # missing id
        _rec(2, image="missing.png"),  # missing media
        _rec(3, conversations="not a list"),  # wrong type
        _rec(4),
        _rec(5, conversations=[{"from": "gpt", "value": "<image>\nx"}, {"from": "human", "value": "y"}]),
    ]
    f = _write(media / "bad.json", records)
    with pytest.raises(RecordFileError) as exc:
        load_records(f, InstructionRecord, media_root=media)
    lines = [str(e) for e in exc.value.errors]
    assert len(lines) == 4
    assert lines[0] == f"{f}: record 1: field 'id': Field required"
    assert lines[1].startswith(f"{f}: record 2: field 'image': media file not found")
    assert lines[2].startswith(f"{f}: record 3: field 'conversations':")
    assert lines[3].startswith(f"{f}: record 5: field '<record>':") and "human first" in lines[3]


def test_skip_mode_keeps_good_records(media):
    f = _write(media / "mixed.json", [_rec(0), _rec(1, image="missing.png"), _rec(2)])
    result = load_records(f, InstructionRecord, media_root=media, on_error="skip")
    assert [r.id for r in result.records] == ["r0", "r2"]
    assert [e.index for e in result.errors] == [1]


def test_placeholder_rules():
    with pytest.raises(ValueError, match="exactly one '<image>'"):
        InstructionRecord.model_validate(
            _rec(0, conversations=[{"from": "human", "value": "no placeholder"}, {"from": "gpt", "value": "a"}])
        )
    with pytest.raises(ValueError, match="has no 'image' or 'video'"):
        InstructionRecord.model_validate(_rec(0, image=None))
    with pytest.raises(ValueError, match="not both"):
        InstructionRecord.model_validate(_rec(0, video="v.mp4"))


def test_jsonl_and_test_records(media):
    good = {"video_name": "v.mp4", "question": "Q?", "answer": "A."}
    lines = [
        json.dumps(good),
        "",
        json.dumps({**good, "question": ""}),
        '{"video_name": "v.mp4", "question": "cut off',
        json.dumps({**good, "question": "Q2?"}),
    ]
    f = media / "test.jsonl"
    f.write_text("\n".join(lines) + "\n")
    result = load_records(f, TestRecord, media_root=media, on_error="skip")
    assert [r.question for r in result.records] == ["Q?", "Q2?"]  # a broken line does not stop the file
    assert [(e.index, e.field) for e in result.errors] == [(1, "question"), (2, "<json>")]
    assert "line 4" in result.errors[1].message


def test_not_a_list_and_bad_json(tmp_path):
    f = tmp_path / "obj.json"
    f.write_text("{}")
    with pytest.raises(RecordFileError, match="expected a JSON list"):
        load_records(f, InstructionRecord)
    f.write_text("[{")
    with pytest.raises(RecordFileError, match="<json>"):
        load_records(f, InstructionRecord)


def test_validate_command_prints_one_line_per_bad_record(media, venv_bin):
    f = _write(media / "bad.json", [_rec(0), _rec(1, image="missing.png"), _rec(2, id="")])
    out = subprocess.run(
        [venv_bin / "vidrip", "validate", str(f), "--media-root", str(media)], capture_output=True, text=True
    )
    assert out.returncode == 1
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{f}: record 1: field 'image'")
    assert lines[1].startswith(f"{f}: record 2: field 'id'")
    assert "1 good, 2 bad" in out.stderr
