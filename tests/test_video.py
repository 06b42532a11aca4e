"""Frame sampling rules of the paper, and decord reading with clear errors for bad files."""

import shutil
import subprocess

import numpy as np
import pytest

from vidrip.data.encode import write_mp4
from vidrip.data.video import FramePolicy, VideoReadError, fps_indices, read_frames, uniform_indices


def test_one_frame_per_second():
    assert fps_indices(total=100, video_fps=10, fps=1).tolist() == list(range(0, 100, 10))
    assert fps_indices(total=12, video_fps=4, fps=2).tolist() == [0, 2, 4, 6, 8, 10]


def test_long_videos_get_32_uniform_frames():
    idx = fps_indices(total=30 * 120, video_fps=30, fps=1, max_frames=32)
    assert len(idx) == 32
    assert idx[0] == 0 and idx[-1] == 30 * 120 - 1
    assert np.array_equal(idx, np.linspace(0, 3599, 32).round().astype(int))


def test_uniform_rule():
    assert uniform_indices(10, 4).tolist() == [0, 3, 6, 9]
    assert uniform_indices(3, 8).tolist() == [0, 1, 2]
    assert uniform_indices(0, 8).tolist() == []


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 5 s clip at 4 fps whose frame i has brightness 10*i (so indices can be read back)."""
    path = tmp_path_factory.mktemp("video") / "ramp.mp4"
    frames = [np.full((48, 64, 3), 10 * i, dtype=np.uint8) for i in range(20)]
    return write_mp4(path, frames, fps=4, crf=0)


def test_read_frames_fps_rule(clip):
    sampled = read_frames(clip, FramePolicy(rule="fps", fps=1))
    assert sampled.indices.tolist() == [0, 4, 8, 12, 16]
    assert sampled.timestamps.tolist() == [0, 1, 2, 3, 4]
    assert sampled.array.shape == (5, 48, 64, 3)
    assert np.allclose(sampled.array.mean(axis=(1, 2, 3)), [0, 40, 80, 120, 160], atol=3)


def test_read_frames_uniform_with_decode_time_resize(clip):
    sampled = read_frames(clip, FramePolicy(rule="uniform", num_frames=3), size=32)
    assert sampled.array.shape == (3, 32, 32, 3)
    assert sampled.indices.tolist() == [0, 10, 19]


def test_sample_video_reads(sample_dir):
    sampled = read_frames(sample_dir / "videos" / "stage3_000.mp4", FramePolicy(), size=64)
    assert sampled.array.shape[1:] == (64, 64, 3) and sampled.array.shape[0] == round(sampled.duration)


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("empty.mp4", b"", "empty"),
        ("text.mp4", b"this is not a video\n" * 50, "no decodable video stream"),
    ],
)
def test_unreadable_files_name_the_file(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(VideoReadError, match=reason) as exc:
        read_frames(path)
    assert exc.value.path == str(path)


def test_missing_file(tmp_path):
    with pytest.raises(VideoReadError, match="file not found"):
        read_frames(tmp_path / "nope.mp4")


def test_truncated_file(clip, tmp_path):
    data = clip.read_bytes()
    cut = tmp_path / "truncated.mp4"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(VideoReadError, match=str(cut)):
        read_frames(cut)


def test_audio_only_file(tmp_path):
    wav = tmp_path / "tone.m4a"
    subprocess.run(
        [shutil.which("ffmpeg"), "-v", "error", "-f", "lavfi", "-i", "sine=duration=1", str(wav)], check=True
    )
    with pytest.raises(VideoReadError, match=str(wav)):
        read_frames(wav)
