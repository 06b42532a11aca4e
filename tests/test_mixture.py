"""Stage data mixtures: sampling rules over validated record files."""

import json
from pathlib import Path

import pytest

from vidrip.data.mixture import DataSource, mixture_records
from vidrip.data.schema import RecordFileError


def test_all_first_pct_and_random_n(sample_dir):
    every = mixture_records([DataSource(file="stage0_align.json")], sample_dir)
    assert [r.id for r in every] == ["s0-000", "s0-001", "s0-002", "s0-003"]
    first = mixture_records([DataSource(file="stage0_align.json", sampling="first_pct", amount=50)], sample_dir)
    assert [r.id for r in first] == ["s0-000", "s0-001"]
    mix = [
        DataSource(file="stage1_image_sft.json"),
        DataSource(file="stage0_align.json", sampling="random_n", amount=3),
    ]
    a = mixture_records(mix, sample_dir, seed=1)
    assert [r.id[:2] for r in a] == ["s1"] * 4 + ["s0"] * 3
    assert a == mixture_records(mix, sample_dir, seed=1)  # same seed, same draw
    assert len({r.id for r in a[4:]}) == 3


def test_a_bad_file_fails_the_mixture_at_load(sample_dir, tmp_path):
    records = json.loads((sample_dir / "stage0_align.json").read_text())
    records[1]["image"] = "images/missing.png"
    (tmp_path / "bad.json").write_text(json.dumps(records))
    (tmp_path / "images").symlink_to(sample_dir / "images")
    with pytest.raises(RecordFileError, match=r"record 1: field 'image'"):
        mixture_records([DataSource(file="bad.json")], tmp_path)
    assert len(mixture_records([DataSource(file="bad.json")], tmp_path, on_error="skip")) == len(records) - 1


def test_a_source_in_a_folder_of_its_own_names_media_from_data_root(sample_dir, tmp_path):
    """A curation job's output (records naming ``clips/...`` relative to it) mixed with data_root's own
    files, the folder given under data_root or absolute: every media path resolves from data_root."""
    from vidrip.data.dataset import InstructionDataset
    from vidrip.data.video import FramePolicy

    data_root = tmp_path / "root"
    (data_root / "images").mkdir(parents=True)
    (data_root / "stage0_align.json").write_text((sample_dir / "stage0_align.json").read_text())
    for image in (sample_dir / "images").iterdir():
        (data_root / "images" / image.name).symlink_to(image)
    records = json.loads((sample_dir / "stage2_clip_sft.json").read_text())[:2]
    sources = {str(data_root / "curated"): "curated", str(tmp_path / "elsewhere"): str(tmp_path / "elsewhere")}
    for folder, root in sources.items():
        (Path(folder) / "clips").mkdir(parents=True)
        for r in records:
            (Path(folder) / f"clips/{r['id']}.mp4").symlink_to(sample_dir / r["video"])
        curated = [r | {"video": f"clips/{r['id']}.mp4"} for r in records]
        (Path(folder) / "clip_instructions.json").write_text(json.dumps(curated))
        mix = [DataSource(file="stage0_align.json"), DataSource(file="clip_instructions.json", root=root)]
        mixed = mixture_records(mix, data_root)
        assert [r.video for r in mixed[-2:]] == [str(Path(root) / r["video"]) for r in curated]
        ds = InstructionDataset(mixed, data_root, frames=FramePolicy(rule="fps", fps=1), size=32)
        assert ds[len(mixed) - 1].frames.shape[1:] == (32, 32, 3)
    curated[0]["video"] = "clips/missing.mp4"
    (data_root / "curated" / "clip_instructions.json").write_text(json.dumps(curated))
    with pytest.raises(RecordFileError, match=r"record 0: field 'video'"):
        mixture_records([DataSource(file="clip_instructions.json", root="curated")], data_root)
