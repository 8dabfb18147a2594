"""`attention` against torch's scaled_dot_product_attention, including the CPU path that
unmasked attention takes, in query blocks."""

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


@pytest.mark.parametrize("lq, lk, score_block, max_slices, blocks", [
    (10, 13, 200, 8, "slices"),   # 4 ragged slices: 2, 3, 3, 2 queries
    (10, 13, 200, 2, "scan"),     # 4 chunks of 3 under lax.map, 2 zero-padded rows
    (3, 5, 1, 8, "slices"),       # never more blocks than queries
    (7, 9, 10_000, 8, "one"),
])
def test_cpu_path_matches_torch_in_query_blocks(monkeypatch, lq, lk, score_block, max_slices,
                                                 blocks):
  monkeypatch.setattr(attention_lib, "_CPU_SCORE_BLOCK", score_block)
  monkeypatch.setattr(attention_lib, "_CPU_MAX_SLICES", max_slices)
  q, k, v = _qkv(2, lq, lk, 3, 8)
  # A fresh function per case: JAX caches traces by function and shapes, not by the
  # patched constants.
  fn = lambda *qkv: attention_lib.attention(*qkv)
  jaxpr = str(jax.make_jaxpr(fn)(q, k, v))
  assert ("scan" in jaxpr) == (blocks == "scan")
  assert ("concatenate" in jaxpr) == (blocks == "slices")
  parity.assert_close(jax.jit(fn)(q, k, v), _torch_attention(q, k, v))


def test_cpu_path_at_its_real_block_size_in_fp32_and_bf16():
  # 2 heads x 1100 x 1000 scores exceed one block: two query slices.
  q, k, v = _qkv(1, 1100, 1000, 2, 8, seed=1)
  assert 2 * q.shape[1] * k.shape[1] > attention_lib._CPU_SCORE_BLOCK
  fn = jax.jit(attention_lib.attention)
  ref = _torch_attention(q, k, v)
  parity.assert_close(fn(q, k, v), ref)
  bf16 = fn(*(jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)))
  assert bf16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(bf16, np.float32), ref, atol=3e-2)
