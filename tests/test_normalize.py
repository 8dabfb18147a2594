"""The backbone's [-1, 1] frames on the device vs the original's host path in torch
(torchvision ToTensor + Normalize, the collate's zero padding, then the backbone's
de-normalisation)."""

import jax
import numpy as np
import pytest
import torch

from vdit_jax.models import normalize

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SIZES = ((5, 7), (3, 6))  # (h, w) of each clip before padding
PADDED = (6, 8)


def _batch(t=3):
  """uint8 frames zero-padded at the bottom/right to PADDED, as the pipelines emit them, with
  every 8-bit value present; and the unpadded frames."""
  rng = np.random.default_rng(0)
  clips = [rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8) for h, w in SIZES]
  clips[0].reshape(-1)[:256] = np.arange(256)
  frames = np.zeros((len(SIZES), t, *PADDED, 3), np.uint8)
  pad_mask = np.ones((len(SIZES), *PADDED), bool)
  for i, (clip, (h, w)) in enumerate(zip(clips, SIZES)):
    frames[i, :, :h, :w] = clip
    pad_mask[i, :h, :w] = False
  return frames, pad_mask, clips


def _torch_original(clips):
  """The original: per frame ToTensor (CHW float / 255) and Normalize in float32, then the
  collate's zeros tensor with each clip copied into its top-left corner; channels last."""
  mean = torch.tensor(MEAN, dtype=torch.float32)[:, None, None]
  std = torch.tensor(STD, dtype=torch.float32)[:, None, None]
  out = torch.zeros((len(clips), clips[0].shape[0], 3, *PADDED), dtype=torch.float32)
  for i, clip in enumerate(clips):
    for t, frame in enumerate(clip):
      x = torch.from_numpy(frame).permute(2, 0, 1).float().div(255)
      out[i, t, :, :frame.shape[0], :frame.shape[1]] = x.sub(mean).div(std)
  return out.permute(0, 1, 3, 4, 2).numpy()


def test_backbone_frames_are_the_originals_bit_for_bit():
  """Every (8-bit value, channel) pair and a padded row through the original's float32
  steps in torch: normalise, zero-pad, de-normalise, map to [-1, 1] (VD-IT
  models/itcross_video_swin_transformer.py:717-719); equal bit for bit, so CLIP's int
  truncation of (x + 1) * 127.5 agrees too. Padding carries the mean colour."""
  frames = np.zeros((1, 1, 17, 16, 3), np.uint8)
  frames[0, 0, :16] = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
  pad_mask = np.zeros((1, 17, 16), bool)
  pad_mask[0, 16] = True
  got = np.asarray(jax.jit(normalize.backbone_frames, static_argnums=(2, 3))(
      frames, pad_mask, MEAN, STD))
  mean = torch.tensor(MEAN).reshape(3, 1, 1)
  std = torch.tensor(STD).reshape(3, 1, 1)
  x = torch.from_numpy(frames[0, 0]).permute(2, 0, 1).float().div(255)
  normalized = x.sub(mean).div(std).masked_fill(torch.from_numpy(pad_mask[0]), 0.0)
  ref = ((normalized * std + mean) * 2 - 1).permute(1, 2, 0)
  np.testing.assert_array_equal(got[0, 0], ref.numpy())
  np.testing.assert_array_equal(((got[0, 0] + 1) * 127.5).astype(np.int32),
                                ((ref + 1) * 127.5).to(torch.int).numpy())
  np.testing.assert_allclose(got[0, 0, 16], np.tile(np.array(MEAN) * 2 - 1, (16, 1)), atol=1e-6)


def test_bad_shapes_are_named():
  frames, pad_mask, _ = _batch()
  fn = normalize.backbone_frames
  with pytest.raises(ValueError, match=r"backbone_frames: frames must be \(B, T, H, W, C\) uint8"):
    fn(frames.astype(np.float32), pad_mask, MEAN, STD)
  with pytest.raises(ValueError, match=r"pad_mask shape \(2, 8, 6\)"):
    fn(frames, pad_mask.transpose(0, 2, 1), MEAN, STD)
  with pytest.raises(ValueError, match="one value per channel"):
    fn(frames, pad_mask, MEAN[:2], STD)
