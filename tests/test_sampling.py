"""Tests of data_pipelines.sampling: sample expansion and the original's sparse clip sampling."""

import numpy as np
import pytest

from data_pipelines import raw
from data_pipelines import sampling
from vdit_jax import errors

# The original's reversal probability and local window (VD-IT datasets/ytvos.py:115-139).
REVERSE, LOCAL = 0.3, 3


def _indices(seed, anchor, num_frames, video_length, reverse_p=REVERSE, local_window=LOCAL):
  return sampling.clip_indices(np.random.default_rng(seed), anchor, num_frames, video_length,
                               reverse_p, local_window)


def _record(num_frames, annotated_every=1, meta=None, num_expressions=2):
  names = tuple(f"{i:05d}" for i in range(num_frames))
  mask_frames = names[::annotated_every]
  return raw.VideoRecord(
      dataset="ytvos", split="train", video_id="v", frame_names=names,
      frames=(b"",) * num_frames, frame_format="jpeg", height=4, width=4,
      mask_frames=mask_frames, masks=(b"",) * len(mask_frames),
      expressions=tuple(raw.Expression(str(e), f"object {e}", (e + 1,))
                        for e in range(num_expressions)),
      meta=meta or {})


def _check_window(indices, anchor, video_length, num_frames):
  """The clip structure, derived independently: anchor, its local neighbours, globals."""
  rest = sorted(indices.tolist())
  assert len(rest) == num_frames
  assert all(0 <= i < video_length for i in rest)
  rest.remove(anchor)
  # Globals lie outside [lo, hi], so lo is the greatest index below the anchor and hi the
  # least above it, unless clamped onto the anchor at the video's ends.
  lo = max(i for i in rest if i < anchor) if anchor > 0 else 0
  hi = min(i for i in rest if i > anchor) if anchor < video_length - 1 else anchor
  assert max(0, anchor - 3) <= lo <= max(0, anchor - 1)
  assert min(video_length - 1, anchor + 1) <= hi <= min(video_length - 1, anchor + 3)
  rest.remove(lo)
  rest.remove(hi)
  assert all(g < lo or g > hi for g in rest), (indices, lo, hi)
  assert len(set(rest)) == len(rest)


@pytest.mark.parametrize("anchor", [0, 1, 10, 28, 29])
def test_clip_indices_structure(anchor):
  for seed in range(200):
    indices = _indices(seed, anchor, 5, 30)
    assert indices.dtype == np.int64
    ascending = np.all(np.diff(indices) >= 0)
    descending = np.all(np.diff(indices) <= 0)
    assert ascending or descending
    _check_window(indices, anchor, 30, 5)


@pytest.mark.parametrize("local_window", [1, LOCAL])
def test_clip_indices_distribution(local_window):
  offsets_before, offsets_after, reversed_count = set(), set(), 0
  n = 3000
  for seed in range(n):
    indices = _indices(seed, 15, 5, 40, local_window=local_window)
    reversed_count += bool(indices[0] > indices[-1])
    s = sorted(indices.tolist())
    k = s.index(15)
    offsets_before.add(15 - s[k - 1])
    offsets_after.add(s[k + 1] - 15)
  offsets = set(range(1, local_window + 1))
  assert offsets_before == offsets and offsets_after == offsets
  # Binomial(3000, 0.3): standard deviation 0.0084.
  assert abs(reversed_count / n - 0.3) < 0.035


def test_clip_indices_no_reverse_and_deterministic():
  for seed in range(100):
    a = _indices(seed, 7, 5, 20, reverse_p=0.0)
    assert np.all(np.diff(a) >= 0)
  same = [_indices(3, 7, 5, 20) for _ in range(2)]
  np.testing.assert_array_equal(*same)
  draws = {tuple(_indices(s, 7, 5, 20)) for s in range(20)}
  assert len(draws) > 5


def test_clip_indices_short_videos():
  # 4 frames: nothing (or one frame) outside the window -> globals from the whole video.
  for seed in range(50):
    indices = _indices(seed, 1, 5, 4)
    assert len(indices) == 5 and set(indices.tolist()) <= set(range(4)) and 1 in indices
  # 1 frame: every index is 0.
  np.testing.assert_array_equal(_indices(0, 0, 5, 1), np.zeros(5))
  np.testing.assert_array_equal(_indices(0, 4, 1, 9), [4])
  with pytest.raises(ValueError, match="1 frame or at least 3"):
    _indices(0, 0, 2, 9)
  with pytest.raises(ValueError, match="anchor 9 outside"):
    _indices(0, 9, 5, 9)


def test_expand_ytvos_anchors_every_fifth_annotated_frame():
  record = _record(23)
  samples = sampling.expand(record, stride=5)
  assert [(s.exp_index, s.anchor) for s in samples] == [
      (e, a) for e in range(2) for a in range(0, 23, 5)]
  # Only every 2nd frame annotated: anchors are every 5th of the annotated frames.
  record = _record(40, annotated_every=2)
  anchors = [s.anchor for s in sampling.expand(record, stride=5) if s.exp_index == 0]
  assert anchors == list(range(0, 40, 2))[::5]


def test_expand_anchored_expression():
  record = _record(30, meta={raw.anchor_key("1"): "00017"})
  samples = sampling.expand(record, stride=5)
  assert [(s.exp_index, s.anchor) for s in samples if s.exp_index == 1] == [(1, 17)]
  assert samples[-1].candidates == (17,)
  bad = _record(30, meta={raw.anchor_key("0"): "99999"})
  with pytest.raises(sampling.SampleError, match="anchored on frame '99999'"):
    sampling.expand(bad, stride=5)


def test_resample_draws_from_candidates():
  sample = sampling.expand(_record(23), stride=5)[0]
  anchors = {sampling.resample(np.random.default_rng(s), sample).anchor for s in range(60)}
  assert anchors == set(sample.candidates) == {0, 5, 10, 15, 20}


def test_clip_sampling_from_config_fields():
  """ClipSampling anchors every num_frames-th frame, draws T frames, and never reverses an
  anchored (A2D) expression's clip."""
  clip_sampling = sampling.ClipSampling(num_frames=3, local_window=2, reverse_prob=1.0)
  record = _record(12, meta={raw.anchor_key("1"): "00005"})
  samples = clip_sampling.samples(record)
  assert [(s.exp_index, s.anchor) for s in samples] == [(0, 0), (0, 3), (0, 6), (0, 9), (1, 5)]
  assert [s.anchored for s in samples] == [False] * 4 + [True]
  for seed in range(20):
    rng = np.random.default_rng(seed)
    free, anchored = clip_sampling.indices(rng, samples[2]), clip_sampling.indices(rng, samples[4])
    # T = 3: the anchor and one frame U{1, 2} before and after it.
    assert free[1] == 6 and free[2] in (4, 5) and free[0] in (7, 8)  # reversed
    assert anchored[1] == 5 and anchored[0] in (3, 4) and anchored[2] in (6, 7)
  for fields, message in ((dict(num_frames=2), "sampling.num_frames 2"),
                          (dict(local_window=0), "sampling.local_window 0"),
                          (dict(reverse_prob=1.5), "sampling.reverse_prob 1.5")):
    with pytest.raises(errors.ConfigError, match=message):
      sampling.ClipSampling(**(dict(num_frames=5, local_window=3, reverse_prob=0.3) | fields))
