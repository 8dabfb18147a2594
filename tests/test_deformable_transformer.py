"""The deformable transformer's layers and the whole transformer (box refinement included)
against torch references assembled from nn.Linear, nn.LayerNorm, nn.MultiheadAttention and
F.grid_sample (tests/deformable_reference.py), weights moved by the project's converter."""

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from vdit_jax import abstract_build
from vdit_jax.convert import core
from vdit_jax.models import deformable_transformer as dt

import deformable_reference as ref
import parity

D, HEADS, FFN, POINTS = 32, 2, 48, 2
SHAPES = ((8, 10), (4, 5), (2, 3), (1, 2))
# The original's key layout for its `transformer.*` modules (see deformable_transformer.py).
RULES = core.Rules(renames=[(r"^transformer\.", "")],
                   ignore=[r"transformer\.decoder\.bbox_embed\..*"])


def _load(module, torch_module, prefix="", extra=()):
  items = [(prefix + k, v.detach().numpy()) for k, v in torch_module.state_dict().items()]
  params = core.convert_tensors(items + list(extra), abstract_build.param_shapes(module),
                                RULES if prefix else core.Rules())
  return core.load_params(module, params)


def _run(module, fn, *arrays):
  """fn(module, *arrays) compiled as a pure function of the module state."""
  graphdef, state = nnx.split(module)
  pure = lambda state, *a: fn(nnx.merge(graphdef, state), *a)
  return parity.compiled(pure, state, *arrays)(state, *arrays)


def _levels(n, seed):
  rng = np.random.default_rng(seed)
  s = sum(h * w for h, w in SHAPES)
  masks = ref.level_masks(SHAPES, [(1.0, 1.0), (0.7, 0.55), (0.5, 1.0), (1.0, 0.8)][:n])
  return (rng.standard_normal((n, s, D)).astype(np.float32),
          rng.standard_normal((n, s, D)).astype(np.float32),
          np.concatenate([m.reshape(n, -1) for m in masks], 1), masks)


def _layer_pair(torch_cls, jax_cls):
  """(JAX layer, torch layer) with the same random weights."""
  t = parity.randomized(torch_cls(D, FFN, len(SHAPES), HEADS, POINTS), 0.2,
                        norm_scales_near_one=True)
  return _load(jax_cls(D, FFN, 0.1, len(SHAPES), HEADS, POINTS, rngs=nnx.Rngs(0)), t), t


def test_encoder_layer_matches_torch():
  layer, t = _layer_pair(ref.TorchEncoderLayer, dt.DeformableTransformerEncoderLayer)
  src, pos, mask, masks = _levels(3, 0)
  ratios = np.stack([np.asarray(dt.valid_ratios(m)) for m in masks], 1)
  t_ratios = torch.stack([ref.TorchDeformableTransformer.valid_ratio(torch.from_numpy(m))
                          for m in masks], 1)
  np.testing.assert_array_equal(ratios, t_ratios.numpy())
  points = ref.TorchDeformableTransformer.encoder_reference_points(SHAPES, t_ratios)
  np.testing.assert_allclose(dt.encoder_reference_points(SHAPES, jnp.asarray(ratios)),
                             points.numpy(), rtol=1e-6)
  got = _run(layer, lambda m, *a: m(a[0], a[1], a[2], SHAPES, a[3]), src, pos,
             points.numpy(), mask)
  with torch.no_grad():
    want = t(*map(torch.from_numpy, (src, pos)), points, SHAPES, torch.from_numpy(mask))
  parity.assert_close(got, want.numpy())


def test_decoder_layer_matches_torch_with_box_references():
  layer, t = _layer_pair(ref.TorchDecoderLayer, dt.DeformableTransformerDecoderLayer)
  src, _, mask, _ = _levels(2, 1)
  rng = np.random.default_rng(2)
  tgt, query_pos = (rng.standard_normal((2, 5, D)).astype(np.float32) for _ in range(2))
  boxes = rng.uniform(0.1, 0.9, (2, 5, len(SHAPES), 4)).astype(np.float32)
  got = _run(layer, lambda m, *a: m(a[0], a[1], a[2], a[3], SHAPES, a[4]), tgt, query_pos,
             boxes, src, mask)
  with torch.no_grad():
    want = t(*map(torch.from_numpy, (tgt, query_pos, boxes, src)), SHAPES,
             torch.from_numpy(mask))
  parity.assert_close(got, want.numpy())


def test_decoder_layer_dropout_only_in_training_mode():
  """model.train() turns on the layer's dropouts and the self-attention's probability dropout
  (fresh draws per call); model.eval() gives torch's eval output again."""
  layer, t = _layer_pair(ref.TorchDecoderLayer, dt.DeformableTransformerDecoderLayer)
  src, _, mask, _ = _levels(1, 3)
  rng = np.random.default_rng(5)
  tgt, query_pos = (rng.standard_normal((1, 4, D)).astype(np.float32) for _ in range(2))
  points = rng.uniform(0.1, 0.9, (1, 4, len(SHAPES), 2)).astype(np.float32)
  call = lambda: np.asarray(layer(tgt, query_pos, points, src, SHAPES, mask))
  with torch.no_grad():
    want = t(*map(torch.from_numpy, (tgt, query_pos, points, src)), SHAPES,
             torch.from_numpy(mask)).numpy()
  layer.train()
  first, second = call(), call()
  assert np.abs(first - second).max() > 1e-3 and np.abs(first - want).max() > 1e-3
  layer.eval()
  parity.assert_close(call(), want)


def test_transformer_with_box_refinement_matches_torch():
  b, t_frames, q, n = 2, 2, 3, 4
  t = parity.randomized(ref.TorchDeformableTransformer(D, HEADS, 2, 2, FFN, len(SHAPES),
                                                       POINTS, POINTS), 0.2,
                        norm_scales_near_one=True)
  bbox_mlps = [parity.randomized(torch.nn.Sequential(
      torch.nn.Linear(D, D), torch.nn.ReLU(), torch.nn.Linear(D, 4)), 0.2, seed=i)
               for i in range(2)]
  # The original's state dict also holds the head's box MLPs under the decoder (an alias).
  aliases = [(f"transformer.decoder.bbox_embed.{i}.{k}", v.numpy())
             for i, mlp in enumerate(bbox_mlps) for k, v in mlp.state_dict().items()]
  model = _load(dt.DeformableTransformer(D, HEADS, 2, 2, FFN, 0.1, len(SHAPES), POINTS, POINTS,
                                         rngs=nnx.Rngs(0)), t, "transformer.", aliases)

  def jax_mlp(mlp):
    w1, b1, w2, b2 = (jnp.asarray(p.detach().numpy()) for p in mlp.parameters())
    return lambda x: jax.nn.relu(x @ w1.T + b1) @ w2.T + b2

  rng = np.random.default_rng(4)
  srcs = [rng.standard_normal((n, h, w, D)).astype(np.float32) for h, w in SHAPES]
  pos = [rng.standard_normal((n, h, w, D)).astype(np.float32) for h, w in SHAPES]
  masks = ref.level_masks(SHAPES, [(1.0, 1.0), (0.7, 0.55), (0.5, 1.0), (1.0, 0.8)])
  tgt = np.broadcast_to(rng.standard_normal((b, 1, q, D)), (b, t_frames, q, D)).astype(np.float32)
  query_embed = rng.standard_normal((q, D)).astype(np.float32)

  bbox_embed = [jax_mlp(mlp) for mlp in bbox_mlps]
  got = _run(model, lambda m, s, tg, ms, p, qe: m(s, tg, ms, p, qe, bbox_embed),
             srcs, tgt, masks, pos, query_embed)
  with torch.no_grad():
    want = t([torch.from_numpy(x) for x in srcs], torch.from_numpy(tgt),
             [torch.from_numpy(m) for m in masks], [torch.from_numpy(p) for p in pos],
             torch.from_numpy(query_embed), bbox_mlps)
  hs, memory, init_reference, inter_references = want
  assert len(got.memory) == len(memory) == len(SHAPES) - 1
  parity.assert_close(got.hs, hs.numpy(), "hs")
  for level, (g, w) in enumerate(zip(got.memory, memory)):
    parity.assert_close(g, w.numpy(), f"memory level {level}")
  parity.assert_close(got.init_reference, init_reference.numpy(), "init_reference")
  assert got.inter_references.shape == (2, n, q, 4)
  parity.assert_close(got.inter_references, inter_references.numpy(), "inter_references")


def test_inverse_sigmoid_clamps_like_the_original():
  x = np.array([-0.5, 0.0, 1e-7, 0.25, 0.5, 1 - 1e-7, 1.0, 2.0], np.float32)
  np.testing.assert_allclose(dt.inverse_sigmoid(jnp.asarray(x)),
                             ref.inverse_sigmoid(torch.from_numpy(x)).numpy(), rtol=1e-6)


def test_full_size_parameter_counts():
  count = lambda m: sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
  model = nnx.eval_shape(lambda: dt.DeformableTransformer(256, 8, 4, 4, 2048, 0.1, 4, 4, 4,
                                                          rngs=nnx.Rngs(0)))
  assert [count(layer) for layer in model.encoder.layers] == [1_282_176] * 4
  assert [count(layer) for layer in model.decoder.layers] == [1_545_856] * 4
  assert count(model) == 11_313_666
  # The same modules in torch (its MultiheadAttention and Linear/LayerNorm) count the same.
  t = ref.TorchDeformableTransformer(256, 8, 4, 4, 2048, 4, 4, 4)
  assert count(model) == sum(p.numel() for p in t.parameters())
