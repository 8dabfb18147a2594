"""PyTorch references for the feature extractor's adapters, written from VD-IT
`Text-To-Video-Finetuning/train_itcross_pn.py` (`Crossattn`, `ResidualMLP`, `FeatureExtractor`)
with the attribute names of its state dict, channels-first as torch runs them."""

import torch
import torch.nn.functional as F
from torch import nn


class TorchCrossAttention(nn.Module):
  """`Crossattn`: post-norm bias-free multi-head attention, then a post-norm ReLU FFN."""

  def __init__(self, width: int, heads: int, ffn_dim: int, eps: float):
    super().__init__()
    self.heads = heads
    self.cros_attn = nn.Module()
    for name in ("w_qs", "w_ks", "w_vs", "fc"):
      setattr(self.cros_attn, name, nn.Linear(width, width, bias=False))
    self.cros_attn.layer_norm = nn.LayerNorm(width, eps=eps)
    self.pos_ffn = nn.Module()
    self.pos_ffn.w_1 = nn.Linear(width, ffn_dim)
    self.pos_ffn.w_2 = nn.Linear(ffn_dim, width)
    self.pos_ffn.layer_norm = nn.LayerNorm(width, eps=eps)

  def forward(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """text (N, L, D) queries, image (N, M, D) keys and values."""
    a, f = self.cros_attn, self.pos_ffn
    seq_first = lambda x: x.transpose(0, 1)
    attended, _ = F.multi_head_attention_forward(
        seq_first(text), seq_first(image), seq_first(image), text.shape[-1], self.heads,
        None, None, None, None, False, 0.0, a.fc.weight, None, training=False,
        need_weights=False, use_separate_proj_weight=True, q_proj_weight=a.w_qs.weight,
        k_proj_weight=a.w_ks.weight, v_proj_weight=a.w_vs.weight)
    x = a.layer_norm(seq_first(attended) + text)
    return f.layer_norm(f.w_2(F.relu(f.w_1(x))) + x)


class TorchAdapters(nn.Module):
  """VD-IT's trainable FeatureExtractor parts (`train_itcross_pn.py:155-245`)."""

  def __init__(self, vision_width: int, width: int, latent: int, level_channels, out_channels,
               *, fusion_heads: int, fusion_ffn_dim: int, fusion_ln_eps: float):
    super().__init__()
    self.cross_attn = TorchCrossAttention(width, fusion_heads, fusion_ffn_dim, fusion_ln_eps)
    self.projection = nn.Module()
    self.projection.linear1 = nn.Linear(vision_width, width)
    self.projection.linear2 = nn.Linear(width, width)
    self.noise_pred = nn.Conv2d(latent, latent, 3, padding=1)
    self.noise_fc = nn.Sequential(nn.Linear(latent, latent, bias=False), nn.ReLU(),
                                  nn.Linear(latent, latent, bias=False), nn.Sigmoid())
    hidden = [2 * c for c in out_channels[:3]] + [out_channels[3]]
    self.act_postprocess = nn.ModuleList([
        nn.Sequential(nn.Conv2d(c_in, c_mid, 1), nn.Conv2d(c_mid, c_out, 1))
        for c_in, c_mid, c_out in zip(level_channels, hidden, out_channels)])

  def context(self, text: torch.Tensor, image_hidden: torch.Tensor) -> torch.Tensor:
    """Per-frame text states (N, L, D) and CLIP image states (N, M, Dv) -> (N, L, D)."""
    first = self.projection.linear1(image_hidden)
    return self.cross_attn(text, self.projection.linear2(first) + first)

  def noise(self, latents: torch.Tensor) -> torch.Tensor:
    """(B, C, F, h, w) -> the learned noise, standardised over the whole tensor."""
    b, c, f, h, w = latents.shape
    x = self.noise_pred(latents.transpose(1, 2).reshape(b * f, c, h, w))
    x = self.noise_fc(x.permute(0, 2, 3, 1)).reshape(b, f, h, w, c).permute(0, 4, 1, 2, 3)
    return (x - x.mean()) / (x.std() + 1e-5)
