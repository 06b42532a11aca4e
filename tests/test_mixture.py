"""Stage data mixtures: sampling rules over validated record files."""

import json

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
