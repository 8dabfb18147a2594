"""`attention` against torch's scaled_dot_product_attention, including the CPU blockwise path
taken by long unmasked sequences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from vdit_jax.models import attention as attention_lib

import parity


def _qkv(b, lq, lk, h, d, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.standard_normal((b, lq, h, d), np.float32),
          rng.standard_normal((b, lk, h, d), np.float32),
          rng.standard_normal((b, lk, h, d), np.float32))


def _torch_attention(q, k, v):
  """(B, L, H, D) numpy -> (B, Lq, H, D) numpy via torch SDPA (which takes (B, H, L, D))."""
  as_torch = lambda x: torch.from_numpy(np.ascontiguousarray(x.transpose(0, 2, 1, 3)))
  with torch.no_grad():
    out = torch.nn.functional.scaled_dot_product_attention(*map(as_torch, (q, k, v)))
  return out.numpy().transpose(0, 2, 1, 3)


@pytest.mark.parametrize("lq, lk, block", [(10, 13, 4), (12, 5, 3), (7, 9, 100)])
def test_blockwise_matches_torch_with_ragged_blocks(lq, lk, block):
  q, k, v = _qkv(2, lq, lk, 3, 8)
  got = jax.jit(attention_lib._blockwise_attention, static_argnames="block")(
      q, k, v, block=block)
  parity.assert_close(got, _torch_attention(q, k, v))


def test_long_sequence_takes_blockwise_path_and_matches_torch():
  # 801 x 800 scores exceed the CPU block: two query blocks of 401, one padded row.
  q, k, v = _qkv(1, 801, 800, 2, 8, seed=1)
  assert q.shape[1] * k.shape[1] > attention_lib._CPU_SCORE_BLOCK
  fn = jax.jit(attention_lib.attention)
  assert "scan" in str(jax.make_jaxpr(attention_lib.attention)(q, k, v))
  parity.assert_close(fn(q, k, v), _torch_attention(q, k, v))
  bf16 = fn(*(jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)))
  assert bf16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(bf16, np.float32), _torch_attention(q, k, v), atol=3e-2)
