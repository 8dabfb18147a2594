"""RoBERTa vs transformers (PyTorch), with weights moved by the converter."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from vdit_jax import abstract_build
from vdit_jax.convert import core
from vdit_jax.convert import transformers as convert
from vdit_jax.models import clip, roberta

import parity

TINY = dict(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=48, max_position_embeddings=20, type_vocab_size=2,
            pad_token_id=1, bos_token_id=0, eos_token_id=2)


@pytest.fixture(scope="module")
def pair():
  src = parity.randomized(transformers.RobertaModel(transformers.RobertaConfig(**TINY)),
                         0.5)
  return src, convert.roberta_from_transformers(src)


@pytest.fixture(scope="module")
def batch():
  """A batch padded to the longest row (padding='longest'): <s> ... </s> <pad>..."""
  rng = np.random.default_rng(0)
  ids = rng.integers(3, 60, size=(3, 9))
  lengths = (9, 5, 3)
  mask = (np.arange(9)[None] < np.array(lengths)[:, None]).astype(np.int64)
  ids[:, 0] = 0
  ids[np.arange(3), np.array(lengths) - 1] = 2
  ids[mask == 0] = 1
  return ids, mask


@pytest.fixture(scope="module")
def run():
  return nnx.jit(lambda m, ids, mask, types: m(ids, mask, types))


@pytest.mark.parametrize("token_types", [False, True])
def test_matches_torch_on_padded_batch(pair, batch, run, token_types):
  src, dst = pair
  ids, mask = batch
  types = (np.arange(9)[None] >= 4).astype(np.int64).repeat(3, 0) if token_types else None
  with torch.no_grad():
    ref = src(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
              token_type_ids=None if types is None else torch.from_numpy(types))
  hidden, pooled = run(dst, ids, mask, types)
  parity.assert_close(hidden, ref.last_hidden_state.numpy())
  parity.assert_close(pooled, ref.pooler_output.numpy())


def test_padding_does_not_change_real_tokens(pair, batch, run):
  """Row 2 alone, unpadded, gives the same states as inside the padded batch."""
  _, dst = pair
  ids, mask = batch
  alone, _ = run(dst, ids[2:, :3], mask[2:, :3], None)
  padded, _ = run(dst, ids, mask, None)
  np.testing.assert_allclose(np.asarray(alone)[0], np.asarray(padded)[2, :3], rtol=0, atol=1e-5)


def test_masked_lm_checkpoint_without_pooler(tmp_path, batch):
  """The hub layout of roberta-base: `roberta.*` + `lm_head.*`, no pooler weights."""
  src = parity.randomized(
      transformers.RobertaForMaskedLM(transformers.RobertaConfig(**TINY)), 0.5)
  src.save_pretrained(tmp_path)
  with pytest.raises(core.ConversionError, match="pooler.dense.kernel"):
    convert.roberta_from_transformers(tmp_path)
  dst = convert.roberta_from_transformers(tmp_path, add_pooling_layer=False)
  ids, mask = batch
  with torch.no_grad():
    ref = src.roberta(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
  hidden, pooled = nnx.jit(lambda m, i, a: m(i, a))(dst, ids, mask)
  assert pooled is None
  parity.assert_close(hidden, ref.last_hidden_state.numpy())


def test_bf16_compute_close_to_fp32(pair, batch, run):
  """bf16 weights and compute (fp32 LayerNorm statistics and softmax), 2 post-norm layers:
  within 3e-2 * max|fp32| (bf16 rounds at 2^-8 relative; the LayerNorms keep the scale)."""
  src, dst = pair
  ids, mask = batch
  bf16 = convert.roberta_from_transformers(src, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  ref = np.asarray(run(dst, ids, mask, None)[0])
  out = run(bf16, ids, mask, None)[0]
  assert out.dtype == jnp.bfloat16
  err = np.abs(np.asarray(out, np.float32) - ref).max()
  assert err <= 3e-2 * np.abs(ref).max(), err


def test_sequence_longer_than_positions_is_rejected(pair):
  with pytest.raises(ValueError, match="exceeds the 18 positions"):
    pair[1](np.full((1, 19), 5))


def test_full_size_roberta_base_shapes_and_rules():
  # roberta-base's config.json (transformers' RobertaConfig defaults are BERT's).
  cfg = transformers.RobertaConfig(vocab_size=50265, max_position_embeddings=514,
                                   type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1,
                                   bos_token_id=0, eos_token_id=2)
  with torch.device("meta"):
    model, masked_lm = transformers.RobertaModel(cfg), transformers.RobertaForMaskedLM(cfg)
  assert sum(p.numel() for p in model.parameters()) == 124_645_632
  config = roberta.RobertaConfig.from_transformers(cfg.to_dict())
  assert config == roberta.RobertaConfig()
  for pooler, source, expected in ((True, model, 124_645_632),
                                   (False, masked_lm, 124_645_632 - 768 * 768 - 768)):
    abstract = nnx.eval_shape(lambda p=pooler: roberta.RobertaModel(
        config, add_pooling_layer=p, rngs=abstract_build.host_rngs(0)))
    assert clip.count_params(abstract) == expected
    items = ((k, np.broadcast_to(np.zeros((), np.float32), tuple(v.shape)))
             for k, v in source.state_dict().items())
    seen = []
    targets = abstract_build.param_shapes(abstract)
    core.convert_tensors(items, targets, convert.ROBERTA_RULES,
                         on_tensor=lambda path, value: seen.append(path))
    assert len(seen) == len(targets)
