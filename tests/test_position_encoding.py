"""Sine position encodings vs the original's formula (VD-IT models/position_encoding.py:12-85),
re-written in torch below, on masks with padding, fully padded rows / columns and frames."""

import functools

import jax
import numpy as np
import pytest

from vdit_jax.models import position_encoding

import parity
from head_reference import torch_sine_1d, torch_sine_2d

FEATS_2D, FEATS_1D = 128, 256  # the original's hidden_dim // 2 and hidden_dim


def _masks() -> np.ndarray:
  """(4, 9, 11) padding masks: bottom/right padding to 5 x 7, none, irregular with a fully
  padded inner row and column, all padding."""
  m = np.zeros((4, 9, 11), bool)
  m[0, 5:], m[0, :, 7:] = True, True
  m[2] = np.random.default_rng(0).random((9, 11)) < 0.3
  m[2, 4], m[2, :, 6] = True, True
  m[3] = True
  return m


@pytest.fixture(scope="module")
def encoded_2d():
  masks = _masks()
  fn = jax.jit(functools.partial(position_encoding.sine_2d, num_pos_feats=FEATS_2D))
  return masks, np.asarray(fn(masks))


def test_2d_matches_the_original_where_it_is_defined(encoded_2d):
  """Every pixel whose row and column hold a valid pixel (all valid pixels among them)."""
  masks, got = encoded_2d
  assert got.shape == (4, 9, 11, 2 * FEATS_2D) and np.isfinite(got).all()
  valid = ~masks
  defined = valid.any(axis=2, keepdims=True) & valid.any(axis=1, keepdims=True)
  ref = torch_sine_2d(masks, FEATS_2D)
  assert (valid <= defined).all() and defined[2].sum() > valid[2].sum()
  parity.assert_close(got[defined], ref[defined], "defined pixels")


def test_2d_continues_rectangular_padding(encoded_2d):
  """Frame 0 (valid 5 x 7): the padded columns carry the valid columns' y encoding and the
  padded rows the valid rows' x encoding, i.e. the original's values for masks padded along
  one axis only."""
  masks, got = encoded_2d
  rows_only, cols_only = np.zeros((1, 9, 11), bool), np.zeros((1, 9, 11), bool)
  rows_only[:, 5:], cols_only[:, :, 7:] = True, True
  parity.assert_close(got[:1, ..., :FEATS_2D], torch_sine_2d(rows_only, FEATS_2D)[..., :FEATS_2D])
  parity.assert_close(got[:1, ..., FEATS_2D:], torch_sine_2d(cols_only, FEATS_2D)[..., FEATS_2D:])


def test_2d_fully_padded_frame_encodes_as_unpadded(encoded_2d):
  masks, got = encoded_2d
  assert masks[3].all() and not masks[1].any()
  parity.assert_close(got[3], torch_sine_2d(masks[1:2], FEATS_2D)[0])


def test_1d_matches_the_original():
  """Captions of 6, 3 and 0 tokens."""
  token_mask = np.arange(6)[None, :] < np.array([[6], [3], [0]])
  got = jax.jit(functools.partial(position_encoding.sine_1d, num_pos_feats=FEATS_1D))(token_mask)
  assert np.isfinite(np.asarray(got)).all()
  parity.assert_close(got, torch_sine_1d(~token_mask, FEATS_1D))


def test_bad_masks_are_named():
  with pytest.raises(ValueError, match="sine_2d expects"):
    position_encoding.sine_2d(np.zeros((4, 4), bool), 8)
  with pytest.raises(ValueError, match="must be even"):
    position_encoding.sine_1d(np.ones((1, 4), bool), 7)
