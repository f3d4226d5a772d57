"""Frame sampling: exact test-mode indices, train mode, the unknown-count fallback, window plans."""
from __future__ import annotations

import numpy as np
import pytest

from apclip.engine.video.sampling import (
    StridedReservoir,
    WindowPlan,
    nearest_kept,
    sample_segment_indices,
    sample_train_indices,
    segment_positions,
)

# Worked by hand from index[j, i] = int(i * avg + avg * (2j + 1) / (2N)), avg = F / 8, capped at F - 1.
EXPECTED_T8 = {
    (1, 1): [[0] * 8],
    (1, 7): [[0, 1, 2, 3, 3, 4, 5, 6]],  # 0.4375 + 0.875 i
    (1, 8): [[0, 1, 2, 3, 4, 5, 6, 7]],
    (1, 9): [[0, 1, 2, 3, 5, 6, 7, 8]],  # 0.5625 + 1.125 i
    (1, 300): [[18, 56, 93, 131, 168, 206, 243, 281]],  # 18.75 + 37.5 i
    (2, 1): [[0] * 8, [0] * 8],
    (2, 7): [[0, 1, 1, 2, 3, 4, 5, 6],  # 0.21875 + 0.875 i
             [0, 1, 2, 3, 4, 5, 5, 6]],  # 0.65625 + 0.875 i
    (2, 8): [[0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 3, 4, 5, 6, 7]],
    (2, 9): [[0, 1, 2, 3, 4, 5, 7, 8],  # 0.28125 + 1.125 i
             [0, 1, 3, 4, 5, 6, 7, 8]],  # 0.84375 + 1.125 i
    (2, 300): [[9, 46, 84, 121, 159, 196, 234, 271],  # 9.375 + 37.5 i
               [28, 65, 103, 140, 178, 215, 253, 290]],  # 28.125 + 37.5 i
    (4, 1): [[0] * 8] * 4,
    (4, 7): [[0, 0, 1, 2, 3, 4, 5, 6],  # 0.109375 + 0.875 i
             [0, 1, 2, 2, 3, 4, 5, 6],  # 0.328125 + 0.875 i
             [0, 1, 2, 3, 4, 4, 5, 6],  # 0.546875 + 0.875 i
             [0, 1, 2, 3, 4, 5, 6, 6]],  # 0.765625 + 0.875 i
    (4, 8): [[0, 1, 2, 3, 4, 5, 6, 7]] * 4,
    (4, 9): [[0, 1, 2, 3, 4, 5, 6, 8],  # 0.140625 + 1.125 i
             [0, 1, 2, 3, 4, 6, 7, 8],  # 0.421875 + 1.125 i
             [0, 1, 2, 4, 5, 6, 7, 8],  # 0.703125 + 1.125 i
             [0, 2, 3, 4, 5, 6, 7, 8]],  # 0.984375 + 1.125 i
    (4, 300): [[4, 42, 79, 117, 154, 192, 229, 267],  # 4.6875 + 37.5 i
               [14, 51, 89, 126, 164, 201, 239, 276],  # 14.0625 + 37.5 i
               [23, 60, 98, 135, 173, 210, 248, 285],  # 23.4375 + 37.5 i
               [32, 70, 107, 145, 182, 220, 257, 295]],  # 32.8125 + 37.5 i
}


@pytest.mark.parametrize("clips,num_frames", sorted(EXPECTED_T8))
def test_segment_indices_match_hand_derived_lists(clips: int, num_frames: int) -> None:
    got = sample_segment_indices(num_frames, frames=8, clips=clips)
    assert got.shape == (clips, 8) and got.dtype == np.int64
    assert got.tolist() == EXPECTED_T8[(clips, num_frames)]


def test_single_clip_is_vifi_clip_test_sampling() -> None:
    # mmaction SampleFrames(clip_len=1, num_clips=T, test_mode=True), written the way ViFi-CLIP does.
    for frames in (1, 8, 16, 32):
        for num_frames in range(1, 400):
            avg = num_frames / float(frames)
            vifi = (np.arange(frames) * avg + avg / 2.0).astype(np.int64)
            assert sample_segment_indices(num_frames, frames, 1)[0].tolist() == vifi.tolist(), (frames, num_frames)


def test_clips_are_evenly_shifted_copies_of_one_another() -> None:
    positions = segment_positions(300, frames=8, clips=4)
    np.testing.assert_allclose(np.diff(positions, axis=0), 37.5 / 4)  # clip j+1 = clip j + avg / N
    np.testing.assert_allclose(positions[0], 37.5 / 8 + 37.5 * np.arange(8))


def test_sampling_rejects_empty_videos_and_bad_counts() -> None:
    with pytest.raises(ValueError, match="0 frames"):
        sample_segment_indices(0, 8)
    with pytest.raises(ValueError, match="0 frames"):
        sample_train_indices(0, 8, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="frames and clips"):
        sample_segment_indices(10, 0)
    with pytest.raises(ValueError, match="frames and clips"):
        sample_segment_indices(10, 8, clips=0)


def test_train_sampling_is_seeded_and_stays_in_its_segment() -> None:
    first = sample_train_indices(300, 8, 2, rng=np.random.default_rng(7))
    again = sample_train_indices(300, 8, 2, rng=np.random.default_rng(7))
    other = sample_train_indices(300, 8, 2, rng=np.random.default_rng(8))
    assert first.shape == (2, 8)
    assert first.tolist() == again.tolist()
    assert first.tolist() != other.tolist()
    segment = 300 // 8  # 37 whole frames; the last 4 frames are never drawn, as in ViFi-CLIP
    lower = np.arange(8) * segment
    assert ((first >= lower) & (first < lower + segment)).all()
    draws = np.concatenate([sample_train_indices(300, 8, 1, rng=np.random.default_rng(s)) for s in range(200)])
    assert len(np.unique(draws[:, 0])) > 25  # offsets really vary within the segment


def test_train_sampling_with_fewer_frames_than_t_repeats() -> None:
    got = sample_train_indices(5, 8, 2, rng=np.random.default_rng(0))
    assert got.tolist() == [[0, 1, 1, 2, 2, 3, 4, 4]] * 2  # round(i * 5 / 8), half to even


def test_nearest_kept_picks_the_closest_and_the_lower_on_ties() -> None:
    targets = np.array([[0, 3, 4, 5, 9, 20]])
    assert nearest_kept(targets, [0, 4, 8]).tolist() == [[0, 4, 4, 4, 8, 8]]
    assert nearest_kept(np.array([2, 6]), {4, 0, 8}).tolist() == [0, 4]  # ties: 2 between 0/4, 6 between 4/8
    with pytest.raises(ValueError):
        nearest_kept(targets, [])


def test_strided_reservoir_stays_bounded_and_evenly_spread() -> None:
    reservoir: StridedReservoir[int] = StridedReservoir(capacity=10)
    peak = 0
    for index in range(1000):
        if reservoir.wants(index):
            reservoir.add(index, index * 10)
        peak = max(peak, len(reservoir.items))
    assert peak <= 10
    assert reservoir.stride == 128  # 1000 / 128 = 7.8 -> 8 kept; 1000 / 64 = 15.6 would overflow
    assert sorted(reservoir.items) == list(range(0, 1000, 128))
    assert all(value == key * 10 for key, value in reservoir.items.items())


def test_strided_reservoir_keeps_everything_of_a_short_sequence() -> None:
    reservoir: StridedReservoir[int] = StridedReservoir(capacity=64)
    for index in range(64):
        assert reservoir.wants(index)
        reservoir.add(index, index)
    assert reservoir.stride == 1 and sorted(reservoir.items) == list(range(64))


def test_window_plan_in_frames_uses_the_segment_formula() -> None:
    plan = WindowPlan(span=50, stride=25, unit="frames", frames=8, clips=2)
    expected = sample_segment_indices(50, 8, 2)
    np.testing.assert_array_equal(plan.targets(0), expected)
    np.testing.assert_array_equal(plan.targets(3), expected + 75)
    assert plan.start(3) == 75 and plan.max_open_windows == 2


def test_window_plan_in_seconds_uses_segment_centres() -> None:
    plan = WindowPlan(span=2.0, stride=0.5, unit="seconds", frames=4, clips=1)
    np.testing.assert_allclose(plan.targets(2, origin=10.0), [[11.25, 11.75, 12.25, 12.75]])
    assert plan.max_open_windows == 4


@pytest.mark.parametrize("kwargs,message", [
    ({"span": 0, "stride": 1}, "must be > 0"),
    ({"span": 2, "stride": -1}, "must be > 0"),
    ({"span": 2.5, "stride": 1, "unit": "frames"}, "whole numbers"),
    ({"span": 2, "stride": 1, "unit": "minutes"}, "unit must be"),
    ({"span": 2, "stride": 1, "frames": 0}, "frames and clips"),
])
def test_window_plan_validates(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WindowPlan(**kwargs)
