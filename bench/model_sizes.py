"""What the whole-model benches share: the mid-size towers they time on a CPU, and tracing
the model as accelerators run it for XLA's cost analysis."""

import contextlib
from unittest import mock

import jax

# The towers' structure (four UNet levels, the VAE's stride-4 tap, 257 CLIP image tokens) at
# about a quarter of the released widths; RoBERTa keeps roberta-base's width, which the head
# takes.
MID_TOWERS = dict(
    unet=dict(block_out_channels=(64, 128, 256, 256), layers_per_block=2,
              attention_head_dim=64, norm_num_groups=32, cross_attention_dim=256),
    vae_encoder=dict(block_out_channels=(32, 64, 128, 128), layers_per_block=2,
                     norm_num_groups=32),
    clip_text=dict(vocab_size=49408, hidden_size=256, intermediate_size=1024,
                   num_hidden_layers=6, num_attention_heads=4, hidden_act="gelu"),
    clip_vision=dict(hidden_size=320, intermediate_size=1280, projection_dim=256,
                     num_hidden_layers=8, num_attention_heads=5, image_size=224,
                     patch_size=14, hidden_act="gelu"),
    roberta=dict(vocab_size=50265, hidden_size=768, intermediate_size=3072,
                 num_hidden_layers=4, num_attention_heads=12),
)


@contextlib.contextmanager
def traced_as_on_accelerators():
  """The model traced as on GPUs and TPUs: on CPUs it runs long attention and the temporal
  transformer's pixels in chunks under lax.map (vdit_jax/models/attention.py,
  transformer_blocks.py), whose body XLA's cost analysis counts once, not per chunk."""
  with mock.patch.object(jax, "default_backend", lambda: "gpu"):
    yield
