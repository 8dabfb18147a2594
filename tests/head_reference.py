"""PyTorch references for the head tests, written from VD-IT models/diffvos_cross.py,
decoder.py, position_encoding.py and text_encoder/text_encoder.py (module names as in its
state dict), channels-last where the JAX port is."""

import math

import numpy as np
import torch
import torch.nn.functional as F

from configs import common
from deformable_reference import TorchDeformableTransformer, inverse_sigmoid


def _torch_sines(embed: torch.Tensor, num_pos_feats: int) -> torch.Tensor:
  dim_t = torch.arange(num_pos_feats, dtype=torch.float32)
  dim_t = 10000 ** (2 * (dim_t // 2) / num_pos_feats)
  pos = embed[..., None] / dim_t
  return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)


def torch_sine_2d(pad_mask: np.ndarray, num_pos_feats: int) -> np.ndarray:
  """PositionEmbeddingSine2D(normalize=True), channels-last: (N, h, w) -> (N, h, w, 2F)."""
  not_mask = ~torch.from_numpy(pad_mask)
  y = not_mask.cumsum(1, dtype=torch.float32)
  x = not_mask.cumsum(2, dtype=torch.float32)
  y = (y - 0.5) / (y[:, -1:, :] + 1e-6) * 2 * math.pi
  x = (x - 0.5) / (x[:, :, -1:] + 1e-6) * 2 * math.pi
  return torch.cat([_torch_sines(y, num_pos_feats), _torch_sines(x, num_pos_feats)], -1).numpy()


def torch_sine_1d(pad_mask: np.ndarray, num_pos_feats: int) -> np.ndarray:
  """PositionEmbeddingSine1D(normalize=True), channels-last: (B, L) -> (B, L, F)."""
  x = (~torch.from_numpy(pad_mask)).cumsum(1, dtype=torch.float32)
  x = x / (x[:, -1:] + 1e-6) * 2 * math.pi
  return _torch_sines(x, num_pos_feats).numpy()


class TorchFeatureResizer(torch.nn.Module):

  def __init__(self, cin, cout, dropout):
    super().__init__()
    self.fc = torch.nn.Linear(cin, cout)
    self.layer_norm = torch.nn.LayerNorm(cout, eps=1e-12)
    self.dropout = torch.nn.Dropout(dropout)

  def forward(self, x):
    return self.dropout(self.layer_norm(self.fc(x)))


class TorchMLP(torch.nn.Module):

  def __init__(self, cin, hidden, cout, num_layers):
    super().__init__()
    dims = [cin] + [hidden] * (num_layers - 1) + [cout]
    self.layers = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(dims, dims[1:]))

  def forward(self, x):
    for layer in self.layers[:-1]:
      x = F.relu(layer(x))
    return self.layers[-1](x)


class TorchMSO(torch.nn.Module):

  def __init__(self, mask_dim, img_dim):
    super().__init__()
    conv = lambda cin: torch.nn.Conv2d(cin, mask_dim, 3, padding=1)
    self.conv1_1div8, self.conv2_1div8 = conv(mask_dim + img_dim[1]), conv(mask_dim)
    self.conv1_1div4, self.conv2_1div4 = conv(mask_dim + img_dim[0]), conv(mask_dim)

  def forward(self, masks, fine, coarse):
    x = torch.cat([masks, coarse], 1)
    masks = masks + self.conv2_1div8(F.relu(self.conv1_1div8(F.relu(x))))
    masks = F.interpolate(masks, size=fine.shape[-2:], mode="bilinear", align_corners=False)
    x = torch.cat([masks, fine], 1)
    return masks + self.conv2_1div4(F.relu(self.conv1_1div4(F.relu(x))))


def torch_dynamic_masks(feats, params, refs, sizes, layers, channels, rel_coord, stride=8):
  """The original's route: tile the features per query, append the relative coordinates,
  one grouped 1x1 conv per layer with groups = instances. feats (B, T, C, h, w) -> (B, T, Q,
  channels, h, w)."""
  b, t, c, h, w = feats.shape
  q = params.shape[2]
  scale = torch.stack([sizes[:, 1], sizes[:, 0]], 1).float()
  pixels = refs * scale[:, None, None, :]
  ys, xs = torch.meshgrid(torch.arange(h) * stride, torch.arange(w) * stride, indexing="ij")
  centres = torch.stack([xs, ys], -1).float() + stride // 2
  x = feats[:, :, None].expand(b, t, q, c, h, w)
  if rel_coord:
    rel = (pixels[:, :, :, None, None, :] - centres).permute(0, 1, 2, 5, 3, 4)
    x = torch.cat([x, rel], 3)
  x = x.reshape(1, -1, h, w)
  ins = [x.shape[1] // (b * t * q)] + [channels] * (layers - 1)
  splits = torch.split_with_sizes(params.reshape(b * t * q, -1),
                                  [i * channels for i in ins] + [channels] * layers, dim=1)
  for k in range(layers):
    weight = splits[k].reshape(b * t * q * channels, -1, 1, 1)
    x = F.conv2d(x, weight, splits[layers + k].reshape(-1), groups=b * t * q)
    if k < layers - 1:
      x = F.relu(x)
  return x.reshape(b, t, q, channels, h, w)


class TorchFusion(torch.nn.Module):
  """VisionLanguageFusionModule (models/segmentation.py:94-112), sequence-first as there."""

  def __init__(self, d_model, nhead):
    super().__init__()
    self.multihead_attn = torch.nn.MultiheadAttention(d_model, nhead)

  def forward(self, queries, text, text_pos, text_pad):
    """queries (Q, B, C); text, text_pos (L, B, C); text_pad (B, L) True on padding."""
    attended = self.multihead_attn(queries, text + text_pos, text, key_padding_mask=text_pad)[0]
    return queries * attended


def legacy_nearest(mask, size):
  """F.interpolate(mode="nearest") of a (N, h, w) bool mask, as the original resizes masks."""
  return F.interpolate(mask[None].float(), size=size).bool()[0]


class TorchReferringHead(torch.nn.Module):
  """The original VDIT module minus backbone and RoBERTa (models/diffvos_cross.py:39-551):
  `forward` gives every decoder layer's logits, boxes, stride-2 masks and 16-channel dynamic
  masks; `refine` runs MSO + pixel shuffle for one query per clip. `pos_2d(mask, F)` is the
  2-D position encoding (the original's formula, or the port's to compare exactly)."""

  def __init__(self, in_channels, text_dim, hidden_dim, nheads, enc_layers, dec_layers,
               dim_feedforward, enc_n_points, dec_n_points, num_queries, num_classes,
               dynamic_mask_channels, controller_layers, rel_coord, pos_2d):
    super().__init__()
    self.num_queries, self.channels = num_queries, dynamic_mask_channels
    self.controller_layers, self.rel_coord, self.pos_2d = controller_layers, rel_coord, pos_2d
    self.transformer = TorchDeformableTransformer(hidden_dim, nheads, enc_layers, dec_layers,
                                                  dim_feedforward, 4, dec_n_points, enc_n_points)
    proj = lambda cin, k, s: torch.nn.Sequential(
        torch.nn.Conv2d(cin, hidden_dim, k, stride=s, padding=k // 2),
        torch.nn.GroupNorm(32, hidden_dim))
    self.input_proj = torch.nn.ModuleList([proj(c, 1, 1) for c in in_channels[1:]]
                                          + [proj(in_channels[-1], 3, 2)])
    self.class_embed = torch.nn.ModuleList(torch.nn.Linear(hidden_dim, num_classes)
                                           for _ in range(dec_layers))
    self.bbox_embed = torch.nn.ModuleList(TorchMLP(hidden_dim, hidden_dim, 4, 3)
                                          for _ in range(dec_layers))
    self.query_tensors = torch.nn.Parameter(torch.randn(num_queries, hidden_dim))
    self.query_embed = torch.nn.Embedding(num_queries, hidden_dim)
    self.text_proj = TorchFeatureResizer(text_dim, hidden_dim, 0.1)
    self.fusion_module = TorchFusion(hidden_dim, 8)
    first = (hidden_dim + 2 * rel_coord) * dynamic_mask_channels
    params = (first + (controller_layers - 1) * dynamic_mask_channels ** 2
              + controller_layers * dynamic_mask_channels)
    self.controller = TorchMLP(hidden_dim, hidden_dim, params, 3)
    self.mask_refine = TorchMSO(dynamic_mask_channels, in_channels[:2])

  def _tgt(self, text_hidden, text_pad, t):
    text = self.text_proj(text_hidden)
    text_pos = torch.from_numpy(torch_sine_1d(text_pad.numpy(), text.shape[-1]))
    b = text.shape[0]
    queries = self.query_tensors[:, None].expand(-1, b, -1)
    fused = self.fusion_module(queries, text.transpose(0, 1), text_pos.transpose(0, 1), text_pad)
    return fused.permute(1, 0, 2)[:, None].expand(-1, t, -1, -1)

  def forward(self, features, pad_mask, text_hidden, text_pad, sizes):
    """features: 4 x (B*T, h, w, C); pad_mask (B, T, H, W) True on padding; text_pad (B, L)
    True on padding; sizes (B, 2). Returns a list of per-layer dicts, last layer last."""
    b, t = pad_mask.shape[:2]
    frame_mask = pad_mask.flatten(0, 1)
    nchw = lambda x: x.permute(0, 3, 1, 2)
    nhwc = lambda x: x.permute(0, 2, 3, 1)
    srcs = [nhwc(self.input_proj[l](nchw(x))) for l, x in enumerate(features[1:])]
    srcs.append(nhwc(self.input_proj[-1](nchw(features[-1]))))
    masks = [legacy_nearest(frame_mask, s.shape[1:3]) for s in srcs]
    pos = [torch.from_numpy(self.pos_2d(m.numpy(), s.shape[-1] // 2)) for m, s in zip(masks, srcs)]
    tgt = self._tgt(text_hidden, text_pad, t)
    hs, memory, init_ref, inter_refs = self.transformer(
        srcs, tgt, masks, pos, self.query_embed.weight, self.bbox_embed)
    size = memory[0].shape[1:3]
    fused = sum(F.interpolate(nchw(m), size=size, mode="bicubic", align_corners=False)
                for m in memory)
    mask_features = fused.reshape(b, t, *fused.shape[1:])
    layers = []
    for l in range(hs.shape[0]):
      reference = init_ref if l == 0 else inter_refs[l - 1]
      tmp = self.bbox_embed[l](hs[l])
      if reference.shape[-1] == 4:
        tmp = tmp + inverse_sigmoid(reference)
      else:
        tmp = torch.cat([tmp[..., :2] + inverse_sigmoid(reference), tmp[..., 2:]], -1)
      unflat = lambda x: x.reshape(b, t, *x.shape[1:])
      params = unflat(self.controller(hs[l]))
      dynamic = torch_dynamic_masks(mask_features, params, unflat(inter_refs[l][..., :2]),
                                    sizes, self.controller_layers, self.channels,
                                    self.rel_coord)
      low = F.pixel_shuffle(dynamic.flatten(0, 2), 4)[:, 0]
      low = low.reshape(b, t, self.num_queries, *low.shape[1:])
      layers.append({"pred_logits": unflat(self.class_embed[l](hs[l])),
                     "pred_boxes": unflat(tmp.sigmoid()), "pred_masks_low": low,
                     "dynamic_masks": dynamic})
    return layers

  def refine(self, dynamic, features, query):
    """dynamic (B, T, Q, C16, h8, w8); query (B,) -> (B, T, H, W) stride-1 logits."""
    b, t = dynamic.shape[:2]
    chosen = dynamic[torch.arange(b), :, query].flatten(0, 1)
    nchw = lambda x: x.permute(0, 3, 1, 2)
    refined = self.mask_refine(chosen, nchw(features[0]), nchw(features[1]))
    masks = F.pixel_shuffle(refined, 4)[:, 0]
    return masks.reshape(b, t, *masks.shape[1:])


def full_size_torch_keys() -> dict[str, tuple[int, ...]]:
  """The original head's state-dict keys and shapes at full size: the torch module tree of
  TorchReferringHead (built from VD-IT models/diffvos_cross.py's __init__) on the meta
  device, with the decoder's bbox_embed alias the original registers."""
  c = common.head()
  with torch.device("meta"):
    model = TorchReferringHead(
        c.in_channels, c.text_dim, c.hidden_dim, c.nheads, c.enc_layers, c.dec_layers,
        c.dim_feedforward, c.enc_n_points, c.dec_n_points, c.num_queries, c.num_classes,
        c.dynamic_mask_channels, c.controller_layers, c.rel_coord, None)
  keys = {k: tuple(v.shape) for k, v in model.state_dict().items()}
  keys.update({f"transformer.decoder.{k}": s for k, s in keys.items()
               if k.startswith("bbox_embed.")})
  return keys
