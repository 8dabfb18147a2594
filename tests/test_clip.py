"""CLIP text / vision towers vs transformers (PyTorch), with weights moved by the converter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from vdit_jax import abstract_build
from vdit_jax.convert import core
from vdit_jax.convert import transformers as convert
from vdit_jax.models import clip

import parity

# The real configs (ModelScope text_encoder/config.json; laion ViT-H/14 vision_config).
MODELSCOPE_TEXT = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096,
                       num_hidden_layers=23, num_attention_heads=16, max_position_embeddings=77,
                       hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=512,
                       bos_token_id=0, eos_token_id=2, pad_token_id=1)
VIT_H14 = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
               num_attention_heads=16, patch_size=14, image_size=224, projection_dim=1024,
               hidden_act="gelu", layer_norm_eps=1e-5)

TINY_TEXT = dict(vocab_size=99, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                 num_attention_heads=4, max_position_embeddings=12, hidden_act="gelu",
                 bos_token_id=0, eos_token_id=2, pad_token_id=1)
TINY_VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                   num_attention_heads=4, image_size=28, patch_size=7, projection_dim=16,
                   hidden_act="quick_gelu")


@pytest.fixture(scope="module")
def text_pair():
  src = parity.randomized(
      transformers.CLIPTextModel(transformers.CLIPTextConfig(**TINY_TEXT)), 0.5)
  return src, convert.clip_text_from_transformers(src)


@pytest.fixture(scope="module")
def text_batch():
  """Two captions padded to 12: bos ... eot then pad ids, and the matching mask."""
  rng = np.random.default_rng(1)
  ids = rng.integers(3, 90, size=(2, 12))
  ids[:, 0] = 0
  ids[0, 11], ids[1, 6], ids[1, 7:] = 98, 98, 1  # eot is the largest id in the legacy rule
  mask = np.ones_like(ids)
  mask[1, 7:] = 0
  return ids, mask


@pytest.fixture(scope="module")
def text_fn():
  return nnx.jit(lambda m, ids, mask: m(ids, mask, with_pooled=True))


@pytest.mark.parametrize("masked", [False, True], ids=["no_mask_like_vdit", "padding_mask"])
def test_text_matches_torch(text_pair, text_batch, text_fn, masked):
  src, dst = text_pair
  ids, mask = text_batch
  mask = mask if masked else None
  with torch.no_grad():
    ref = src(torch.from_numpy(ids), None if mask is None else torch.from_numpy(mask))
  hidden, pooled = text_fn(dst, ids, mask)
  parity.assert_close(hidden, ref.last_hidden_state.numpy())
  parity.assert_close(pooled, ref.pooler_output.numpy())


def test_text_padding_mask_changes_only_padded_rows(text_pair, text_batch, text_fn):
  """Causal attention: the mask can only affect queries at or after the first pad."""
  _, dst = text_pair
  ids, mask = text_batch
  free, masked = (np.asarray(text_fn(dst, ids, m)[0]) for m in (None, mask))
  np.testing.assert_allclose(free[:, :7], masked[:, :7], rtol=0, atol=1e-5)
  assert np.abs(free[1, 7:] - masked[1, 7:]).max(axis=-1).min() > 1e-2


def test_text_new_style_eos_pooling():
  """eos_token_id != 2 pools at the first eos, not at the largest id."""
  cfg = dict(TINY_TEXT, eos_token_id=5, hidden_act="quick_gelu", num_hidden_layers=1)
  src = parity.randomized(transformers.CLIPTextModel(transformers.CLIPTextConfig(**cfg)),
                         0.5)
  dst = convert.clip_text_from_transformers(src)
  ids = np.array([[0, 9, 5, 5, 5, 5], [0, 5, 7, 8, 5, 5]])
  with torch.no_grad():
    ref = src(torch.from_numpy(ids))
  hidden, pooled = dst(ids, with_pooled=True)
  parity.assert_close(hidden, ref.last_hidden_state.numpy())
  parity.assert_close(pooled, ref.pooler_output.numpy())


@pytest.fixture(scope="module")
def vision_pair():
  cfg = transformers.CLIPVisionConfig(**TINY_VISION)
  src = parity.randomized(transformers.CLIPVisionModelWithProjection(cfg), 0.5)
  return src, convert.clip_vision_from_transformers(src)


def test_vision_matches_torch(vision_pair):
  src, dst = vision_pair
  pixels = np.random.default_rng(2).normal(size=(3, 3, 28, 28)).astype(np.float32)
  with torch.no_grad():
    ref = src(torch.from_numpy(pixels))
  hidden, embeds = nnx.jit(lambda m, x: m(x))(dst, pixels.transpose(0, 2, 3, 1))
  assert hidden.shape == (3, 1 + 4 * 4, 32)
  # Before post_layernorm, as VD-IT uses it.
  parity.assert_close(hidden, ref.last_hidden_state.numpy())
  parity.assert_close(embeds, ref.image_embeds.numpy())


def test_vision_rejects_wrong_image_size(vision_pair):
  with pytest.raises(ValueError, match="expected 28x28"):
    vision_pair[1](np.zeros((1, 32, 28, 3), np.float32))


def test_directory_source_with_legacy_prefix_and_full_clip_model(tmp_path, text_pair):
  """A saved directory converts like the live model; hub layouts (text_model.*, a full
  CLIPModel for the vision tower) are mapped by the same rules."""
  src, dst = text_pair
  src.save_pretrained(tmp_path / "text")
  from_dir = convert.clip_text_from_transformers(tmp_path / "text")
  for a, b in zip(nnx.to_flat_state(nnx.state(from_dir)), nnx.to_flat_state(nnx.state(dst))):
    assert a[0] == b[0]
    np.testing.assert_array_equal(np.asarray(a[1][...]), np.asarray(b[1][...]))

  legacy = {f"text_model.{k}": v.numpy() for k, v in src.state_dict().items()}
  params = core.convert_tensors(legacy.items(), abstract_build.param_shapes(dst),
                               convert.CLIP_TEXT_RULES)
  assert len(params) == len(abstract_build.param_shapes(dst))

  full = transformers.CLIPModel(transformers.CLIPConfig(text_config=TINY_TEXT,
                                                        vision_config=TINY_VISION,
                                                        projection_dim=16))
  vision = convert.clip_vision_from_transformers(full)
  pixels = np.random.default_rng(3).normal(size=(1, 3, 28, 28)).astype(np.float32)
  with torch.no_grad():
    ref = full.vision_model(torch.from_numpy(pixels))
    ref_embeds = full.visual_projection(ref.pooler_output)
  hidden, embeds = vision(pixels.transpose(0, 2, 3, 1))
  parity.assert_close(hidden, ref.last_hidden_state.numpy())
  parity.assert_close(embeds, ref_embeds.numpy())


def test_bf16_compute_close_to_fp32(text_pair, text_batch, text_fn):
  """bf16 weights and compute (LayerNorm statistics and softmax in fp32) over 2 layers stay
  within 3e-2 * max|fp32| of the fp32 output: bf16 has 8 mantissa bits (2^-8 = 3.9e-3
  relative per rounding), and the randomised weights (std 0.5) amplify it layer by layer."""
  src, dst = text_pair
  ids, mask = text_batch
  bf16 = convert.clip_text_from_transformers(src, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  assert bf16.encoder.layers[0].mlp.fc1.kernel[...].dtype == jnp.bfloat16
  ref = np.asarray(text_fn(dst, ids, mask)[0])
  out = text_fn(bf16, ids, mask)[0]
  assert out.dtype == jnp.bfloat16
  err = np.abs(np.asarray(out, np.float32) - ref).max()
  assert err <= 3e-2 * np.abs(ref).max(), err


def test_remat_keeps_values_and_gradients(text_pair):
  """remat=True must really checkpoint each layer and leave the gradients unchanged."""
  encoder = text_pair[1].encoder
  remat = nnx.clone(encoder)
  remat.remat = True
  x = np.random.default_rng(4).normal(size=(2, 12, 32)).astype(np.float32)

  def input_grad(module):
    graphdef, state = nnx.split(module)
    loss = lambda st, h: jnp.sum(nnx.merge(graphdef, st)(h, None, True) ** 2)
    return state, jax.grad(loss, argnums=1)

  (state_r, grad_r), (state, grad) = input_grad(remat), input_grad(encoder)
  assert "remat" in str(jax.make_jaxpr(grad_r)(state_r, x))
  assert "remat" not in str(jax.make_jaxpr(grad)(state, x))
  parity.assert_close(jax.jit(grad_r)(state_r, x), jax.jit(grad)(state, x))  # same maths, re-fused


def _meta_items(model: torch.nn.Module, prefix: str = ""):
  """(key, zero-cost numpy stand-in of the same shape) for a meta-device model."""
  for key, tensor in model.state_dict().items():
    yield prefix + key, np.broadcast_to(np.zeros((), np.float32), tuple(tensor.shape))


def check_full_size(make, expected_params, rules, *torch_layouts):
  """Counts the abstract module's parameters and maps each (model, key prefix) onto it."""
  abstract = nnx.eval_shape(lambda: make(abstract_build.host_rngs(0)))
  assert clip.count_params(abstract) == expected_params
  targets = abstract_build.param_shapes(abstract)
  for torch_model, prefix in torch_layouts:
    seen = []
    core.convert_tensors(_meta_items(torch_model, prefix), targets, rules,
                         on_tensor=lambda path, value: seen.append(path))
    assert len(seen) == len(targets)


def test_full_size_modelscope_text_encoder_shapes_and_rules():
  cfg = transformers.CLIPTextConfig(**MODELSCOPE_TEXT)
  with torch.device("meta"):
    ref = transformers.CLIPTextModel(cfg)
  assert sum(p.numel() for p in ref.parameters()) == 340_387_840
  config = clip.CLIPTextConfig.from_transformers(cfg.to_dict())
  assert config.hidden_act == "gelu" and config.eos_token_id == 2
  assert clip.CLIPTextConfig.from_dict(config.to_dict()) == config
  with pytest.raises(ValueError, match="unknown fields \\['hidden_dropout'\\]"):
    clip.CLIPTextConfig.from_dict(dict(config.to_dict(), hidden_dropout=0.1))
  make = lambda rngs: clip.CLIPTextTransformer(config, rngs=rngs)
  # ModelScope's safetensors carry the pre-5.x `text_model.` prefix.
  check_full_size(make, 340_387_840, convert.CLIP_TEXT_RULES, (ref, ""), (ref, "text_model."))


def test_full_size_vit_h14_shapes_and_rules():
  # The laion checkpoint is a full CLIPModel; a 1-layer text half stands in for its text
  # tower, which the vision rules skip whatever its size.
  cfg = transformers.CLIPConfig(text_config=dict(TINY_TEXT, num_hidden_layers=1),
                                vision_config=VIT_H14, projection_dim=1024)
  with torch.device("meta"):
    ref = transformers.CLIPModel(cfg)
  assert sum(p.numel() for name, p in ref.named_parameters()
             if name.startswith(("vision_model.", "visual_projection."))) == 632_076_800
  config = clip.CLIPVisionConfig.from_transformers(cfg.to_dict())
  assert (config.projection_dim, config.patch_size, config.hidden_act) == (1024, 14, "gelu")
  make = lambda rngs: clip.CLIPVisionModelWithProjection(config, rngs=rngs)
  check_full_size(make, 632_076_800, convert.CLIP_VISION_RULES, (ref, ""))
