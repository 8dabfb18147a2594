"""PyTorch references for the deformable-attention tests, assembled from torch modules
(nn.Linear, nn.LayerNorm, nn.MultiheadAttention) and F.grid_sample, following VD-IT
models/deformable_transformer.py and models/ops (module names as in its state dict).

Everything takes channels-last tensors, as the JAX port does; the original's NCHW maps
flattened with `flatten(2).transpose(1, 2)` are the same (N, h*w, C) sequences.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def grid_sample_attention(value, shapes, locations, weights):
  """ms_deform_attn by F.grid_sample: value (B, S, H, Dh), locations (B, Lq, H, L, P, 2),
  weights (B, Lq, H, L, P) -> (B, Lq, H*Dh)."""
  b, _, heads, dh = value.shape
  lq, levels, points = locations.shape[1], locations.shape[3], locations.shape[4]
  grid = 2 * locations - 1
  per_level, start = [], 0
  for l, (h, w) in enumerate(shapes):
    image = value[:, start:start + h * w].permute(0, 2, 3, 1).reshape(b * heads, dh, h, w)
    level_grid = grid[:, :, :, l].permute(0, 2, 1, 3, 4).reshape(b * heads, lq, points, 2)
    per_level.append(F.grid_sample(image, level_grid, mode="bilinear", padding_mode="zeros",
                                   align_corners=False))  # (B*H, Dh, Lq, P)
    start += h * w
  sampled = torch.stack(per_level, dim=-2).flatten(-2)  # (B*H, Dh, Lq, L*P)
  w = weights.permute(0, 2, 1, 3, 4).reshape(b * heads, 1, lq, levels * points)
  return (sampled * w).sum(-1).reshape(b, heads * dh, lq).transpose(1, 2)


def inverse_sigmoid(x, eps=1e-5):
  x = x.clamp(0, 1)
  return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class TorchMSDeformAttn(nn.Module):

  def __init__(self, d_model, n_levels, n_heads, n_points):
    super().__init__()
    self.n_levels, self.n_heads, self.n_points = n_levels, n_heads, n_points
    self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
    self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
    self.value_proj = nn.Linear(d_model, d_model)
    self.output_proj = nn.Linear(d_model, d_model)

  def forward(self, query, reference_points, src, shapes, padding_mask=None):
    n, lq, c = query.shape
    h, l, p = self.n_heads, self.n_levels, self.n_points
    value = self.value_proj(src)
    if padding_mask is not None:
      value = value.masked_fill(padding_mask[..., None], 0.0)
    value = value.view(n, -1, h, c // h)
    offsets = self.sampling_offsets(query).view(n, lq, h, l, p, 2)
    weights = F.softmax(self.attention_weights(query).view(n, lq, h, l * p), -1)
    weights = weights.view(n, lq, h, l, p)
    if reference_points.shape[-1] == 2:
      normalizer = torch.tensor([[w, hh] for hh, w in shapes], dtype=torch.float32)
      locations = (reference_points[:, :, None, :, None, :]
                   + offsets / normalizer[None, None, None, :, None, :])
    else:
      locations = (reference_points[:, :, None, :, None, :2]
                   + offsets / p * reference_points[:, :, None, :, None, 2:] * 0.5)
    return self.output_proj(grid_sample_attention(value, shapes, locations, weights))


def offset_bias(n_heads, n_levels, n_points):
  """The original's polar-grid sampling-offset bias, (H*L*P*2,)."""
  theta = torch.arange(n_heads, dtype=torch.float32) * (2.0 * math.pi / n_heads)
  grid = torch.stack([theta.cos(), theta.sin()], -1)
  grid = grid / grid.abs().max(-1, keepdim=True)[0]
  grid = grid.view(n_heads, 1, 1, 2).repeat(1, n_levels, n_points, 1)
  for i in range(n_points):
    grid[:, :, i, :] *= i + 1
  return grid.flatten()


class TorchEncoderLayer(nn.Module):

  def __init__(self, d_model, d_ffn, n_levels, n_heads, n_points):
    super().__init__()
    self.self_attn = TorchMSDeformAttn(d_model, n_levels, n_heads, n_points)
    self.norm1 = nn.LayerNorm(d_model)
    self.linear1 = nn.Linear(d_model, d_ffn)
    self.linear2 = nn.Linear(d_ffn, d_model)
    self.norm2 = nn.LayerNorm(d_model)

  def forward(self, src, pos, reference_points, shapes, padding_mask):
    src = self.norm1(src + self.self_attn(src + pos, reference_points, src, shapes, padding_mask))
    return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class TorchDecoderLayer(nn.Module):

  def __init__(self, d_model, d_ffn, n_levels, n_heads, n_points):
    super().__init__()
    self.cross_attn = TorchMSDeformAttn(d_model, n_levels, n_heads, n_points)
    self.norm1 = nn.LayerNorm(d_model)
    self.self_attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
    self.norm2 = nn.LayerNorm(d_model)
    self.linear1 = nn.Linear(d_model, d_ffn)
    self.linear2 = nn.Linear(d_ffn, d_model)
    self.norm3 = nn.LayerNorm(d_model)

  def forward(self, tgt, query_pos, reference_points, src, shapes, padding_mask):
    q = tgt + query_pos
    tgt = self.norm2(tgt + self.self_attn(q, q, tgt, need_weights=False)[0])
    tgt = self.norm1(tgt + self.cross_attn(tgt + query_pos, reference_points, src, shapes,
                                           padding_mask))
    return self.norm3(tgt + self.linear2(F.relu(self.linear1(tgt))))


class TorchDeformableTransformer(nn.Module):
  """encoder.layers, decoder.layers, level_embed, reference_points, as in the original."""

  def __init__(self, d_model, nhead, num_encoder_layers, num_decoder_layers, d_ffn, levels,
               dec_n_points, enc_n_points):
    super().__init__()
    self.encoder = nn.Module()
    self.encoder.layers = nn.ModuleList(
        [TorchEncoderLayer(d_model, d_ffn, levels, nhead, enc_n_points)
         for _ in range(num_encoder_layers)])
    self.decoder = nn.Module()
    self.decoder.layers = nn.ModuleList(
        [TorchDecoderLayer(d_model, d_ffn, levels, nhead, dec_n_points)
         for _ in range(num_decoder_layers)])
    self.level_embed = nn.Parameter(torch.zeros(levels, d_model))
    self.reference_points = nn.Linear(d_model, 2)

  @staticmethod
  def valid_ratio(mask):
    _, h, w = mask.shape
    valid_h = (~mask[:, :, 0]).sum(1).float()
    valid_w = (~mask[:, 0, :]).sum(1).float()
    return torch.stack([valid_w / w, valid_h / h], -1)

  @staticmethod
  def encoder_reference_points(shapes, ratios):
    points = []
    for l, (h, w) in enumerate(shapes):
      y, x = torch.meshgrid(torch.linspace(0.5, h - 0.5, h), torch.linspace(0.5, w - 0.5, w),
                            indexing="ij")
      x = x.reshape(-1)[None] / (ratios[:, None, l, 0] * w)
      y = y.reshape(-1)[None] / (ratios[:, None, l, 1] * h)
      points.append(torch.stack([x, y], -1))
    return torch.cat(points, 1)[:, :, None] * ratios[:, None]

  def forward(self, srcs, tgt, masks, pos_embeds, query_embed, bbox_embed):
    """srcs, pos_embeds: per level (N, h, w, C); masks (N, h, w); tgt (B, T, Q, C)."""
    shapes = [tuple(s.shape[1:3]) for s in srcs]
    n = srcs[0].shape[0]
    src = torch.cat([s.flatten(1, 2) for s in srcs], 1)
    mask = torch.cat([m.flatten(1) for m in masks], 1)
    pos = torch.cat([p.flatten(1, 2) + self.level_embed[l] for l, p in enumerate(pos_embeds)], 1)
    ratios = torch.stack([self.valid_ratio(m) for m in masks], 1)
    memory = src
    enc_ref = self.encoder_reference_points(shapes, ratios)
    for layer in self.encoder.layers:
      memory = layer(memory, pos, enc_ref, shapes, mask)

    b, t, q, c = tgt.shape
    output = tgt.reshape(b * t, q, c)
    query_pos = query_embed[None].expand(n, -1, -1)
    reference = self.reference_points(query_pos).sigmoid()
    init_reference = reference
    outputs, references = [], []
    for lid, layer in enumerate(self.decoder.layers):
      if reference.shape[-1] == 4:
        ref_input = reference[:, :, None] * torch.cat([ratios, ratios], -1)[:, None]
      else:
        ref_input = reference[:, :, None] * ratios[:, None]
      output = layer(output, query_pos, ref_input, memory, shapes, mask)
      tmp = bbox_embed[lid](output)
      if reference.shape[-1] == 4:
        new_reference = (tmp + inverse_sigmoid(reference)).sigmoid()
      else:
        new_reference = tmp.clone()
        new_reference[..., :2] = tmp[..., :2] + inverse_sigmoid(reference)
        new_reference = new_reference.sigmoid()
      reference = new_reference.detach()
      outputs.append(output)
      references.append(reference)
    levels, start = [], 0
    for h, w in shapes[:-1]:
      levels.append(memory[:, start:start + h * w].reshape(n, h, w, c))
      start += h * w
    return torch.stack(outputs), levels, init_reference, torch.stack(references)


def level_masks(shapes, valid_fractions):
  """Per level (N, h, w) bool masks, True right of / below each frame's valid fraction
  (fy, fx) of the level (at least one valid row and column)."""
  masks = []
  for h, w in shapes:
    mask = np.zeros((len(valid_fractions), h, w), bool)
    for i, (fy, fx) in enumerate(valid_fractions):
      mask[i, max(1, math.ceil(fy * h)):, :] = True
      mask[i, :, max(1, math.ceil(fx * w)):] = True
    masks.append(mask)
  return masks
