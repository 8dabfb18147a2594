"""Channels-last resizes and pixel shuffle vs torch.nn.functional on the NCHW transpose."""

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vdit_jax.models import resize

import parity

# (input h, w) -> (output h, w): up, down, mixed, non-integer ratios, identity, to size 1.
SIZES = [((5, 7), (12, 9)), ((9, 13), (4, 5)), ((6, 6), (6, 11)), ((5, 7), (5, 7)),
         ((7, 3), (1, 8))]


def _torch_resize(x: np.ndarray, size, mode: str) -> np.ndarray:
  """(N, h, w, C) numpy through F.interpolate on (N, C, h, w)."""
  kwargs = {} if mode == "nearest" else dict(align_corners=False)
  out = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=size, mode=mode, **kwargs)
  return out.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("mode", ["bicubic", "bilinear", "nearest"])
@pytest.mark.parametrize("sizes", SIZES, ids=lambda s: f"{s[0]}->{s[1]}")
def test_resize_matches_torch(mode, sizes):
  (h, w), size = sizes
  x = np.random.default_rng(0).normal(size=(2, h, w, 3)).astype(np.float32)
  fn = {"bicubic": resize.resize_bicubic, "bilinear": resize.resize_bilinear,
        "nearest": resize.resize_nearest}[mode]
  got = jax.jit(fn, static_argnums=1)(x, size)
  parity.assert_close(got, _torch_resize(x, size, mode), f"{mode} {sizes}")


def test_bicubic_is_not_jax_cubic():
  """The reason for the port: jax.image.resize's cubic (A = -0.5) differs from torch's."""
  x = np.random.default_rng(1).normal(size=(1, 6, 6, 2)).astype(np.float32)
  ref = _torch_resize(x, (13, 13), "bicubic")
  jax_cubic = np.asarray(jax.image.resize(x, (1, 13, 13, 2), "cubic"))
  assert np.abs(jax_cubic - ref).max() > 1e-2
  parity.assert_close(resize.resize_bicubic(x, (13, 13)), ref)


def test_nearest_resizes_bool_masks_like_the_original():
  """Per-level padding masks: F.interpolate(m[None].float(), size).bool()[0]
  (VD-IT models/diffvos_cross.py:280), channels-last with the frames as channels here."""
  m = np.zeros((3, 37, 50), bool)
  m[0, 30:], m[1, :, 41:], m[2] = True, True, True
  ref = F.interpolate(torch.from_numpy(m)[None].float(), size=(5, 7)).bool()[0].numpy()
  got = resize.resize_nearest(m.transpose(1, 2, 0), (5, 7))
  assert got.dtype == bool
  np.testing.assert_array_equal(np.asarray(got).transpose(2, 0, 1), ref)


@pytest.mark.parametrize("factor", [2, 4])
def test_pixel_shuffle_matches_torch(factor):
  x = np.random.default_rng(2).normal(size=(2, 3, 4, 3 * factor * factor)).astype(np.float32)
  ref = F.pixel_shuffle(torch.from_numpy(x).permute(0, 3, 1, 2), factor).permute(0, 2, 3, 1)
  parity.assert_close(resize.pixel_shuffle(x, factor), ref.numpy())


def test_pixel_shuffle_keeps_leading_axes():
  """(B, T, Q, h, w, 16) -> (B, T, Q, 4h, 4w, 1), as F.pixel_shuffle on the flattened batch."""
  x = np.random.default_rng(3).normal(size=(2, 3, 2, 3, 5, 16)).astype(np.float32)
  flat = torch.from_numpy(x.reshape(12, 3, 5, 16)).permute(0, 3, 1, 2)
  ref = F.pixel_shuffle(flat, 4).permute(0, 2, 3, 1).reshape(2, 3, 2, 12, 20, 1)
  parity.assert_close(resize.pixel_shuffle(x, 4), ref.numpy())


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="not a multiple of 16"):
    resize.pixel_shuffle(np.zeros((1, 2, 2, 8), np.float32), 4)
  with pytest.raises(ValueError, match="resize_bicubic expects"):
    resize.resize_bicubic(np.zeros((4, 4), np.float32), (2, 2))
  with pytest.raises(ValueError, match="static \\(height, width\\)"):
    resize.resize_bilinear(np.zeros((1, 4, 4, 1), np.float32), (0, 2))
