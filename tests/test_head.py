"""The assembled head vs the original's head rebuilt in torch (tests/head_reference.py), its
weights moved by the production converter (`vdit_jax.convert.vdit.vdit_head`); parameter
counts and the converter's key coverage at full size. (The tiny config's head with the
losses and gradients under jit: tests/test_vdit.py.)"""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from configs import common
from vdit_jax import abstract_build
from vdit_jax.convert import core
from vdit_jax.convert import vdit as vdit_convert
from vdit_jax.models import head as head_lib
from vdit_jax.models import position_encoding

import parity
from deformable_reference import offset_bias
from head_reference import TorchReferringHead, full_size_torch_keys, torch_sine_2d

# A small head: 2 decoder layers (one auxiliary), 3 queries; channels of the 4 levels.
CONFIG = dict(common.head(), in_channels=(8, 16, 16, 24), text_dim=12, hidden_dim=32, nheads=2,
              enc_layers=1, dec_layers=2, dim_feedforward=48, enc_n_points=2, dec_n_points=2,
              num_queries=3, mask_dim=32)
B, T, H, W = 2, 2, 64, 96
SIZES = np.array([[64, 80], [48, 96]], np.int32)  # unpadded (h, w) of each clip
TEXT_LENGTHS = (6, 3)


def _torch_head(pos_2d, seed=0):
  torch.manual_seed(seed)
  c = CONFIG
  model = TorchReferringHead(
      c["in_channels"], c["text_dim"], c["hidden_dim"], c["nheads"], c["enc_layers"],
      c["dec_layers"], c["dim_feedforward"], c["enc_n_points"], c["dec_n_points"],
      c["num_queries"], c["num_classes"], c["dynamic_mask_channels"], c["controller_layers"],
      c["rel_coord"], pos_2d)
  model = parity.randomized(model, 0.1, seed=seed, norm_scales_near_one=True)
  with torch.no_grad():  # Sampling offsets as the original initialises them, widened a little.
    for layer in list(model.transformer.encoder.layers) + list(model.transformer.decoder.layers):
      attn = layer.self_attn if hasattr(layer.self_attn, "sampling_offsets") else layer.cross_attn
      attn.sampling_offsets.bias.copy_(offset_bias(c["nheads"], 4, attn.n_points))
  return model


def _state_dict(model: torch.nn.Module) -> dict:
  """The original's layout: the decoder's bbox_embed registered a second time."""
  sd = dict(model.state_dict())
  sd.update({f"transformer.decoder.{k}": v for k, v in sd.items() if k.startswith("bbox_embed.")})
  return sd


def _inputs(seed=1):
  rng = np.random.default_rng(seed)
  features = [rng.standard_normal((B * T, H // s, W // s, c)).astype(np.float32)
              for s, c in zip(head_lib.STRIDES, CONFIG["in_channels"])]
  pad_mask = np.ones((B, T, H, W), bool)
  for i, (h, w) in enumerate(SIZES):
    pad_mask[i, :, :h, :w] = False
  text = rng.standard_normal((B, max(TEXT_LENGTHS), CONFIG["text_dim"])).astype(np.float32)
  text_mask = np.arange(max(TEXT_LENGTHS))[None] < np.array(TEXT_LENGTHS)[:, None]
  return features, pad_mask, text, text_mask


def _torch_outputs(model, features, pad_mask, text, text_mask, query):
  with torch.no_grad():
    torch_features = [torch.from_numpy(f) for f in features]
    layers = model(torch_features, torch.from_numpy(pad_mask), torch.from_numpy(text),
                   torch.from_numpy(~text_mask), torch.from_numpy(SIZES))
    refined = [model.refine(l["dynamic_masks"], torch_features, torch.from_numpy(query))
               for l in layers]
  return [{k: v.numpy() for k, v in l.items()} for l in layers], [r.numpy() for r in refined]


def _port_pos_2d(mask, feats):
  return np.asarray(position_encoding.sine_2d(jnp.asarray(mask), feats))


@pytest.fixture(scope="module")
def forward():
  """(graphdef, state, *inputs, sizes, query) -> the head's outputs and the refined masks of
  `query` (B,) of every layer; compiled once for the test inputs' shapes."""
  graphdef, state = nnx.split(vdit_convert.vdit_head(_state_dict(_torch_head(_port_pos_2d)),
                                                     CONFIG))

  def run(state, features, pad_mask, text, text_mask, sizes, query):
    head = nnx.merge(graphdef, state)
    out = head(features, pad_mask, text, text_mask, sizes)
    refined = [head.refine(out, features, query, layer=l) for l in range(CONFIG["dec_layers"])]
    return out, refined

  compiled = parity.compiled(run, state, *_inputs(), SIZES, QUERY)
  return lambda graphdef_, state_, *args: compiled(state_, *args)


QUERY = np.array([1, 2], np.int32)


def _compare(model_pos, forward, tolerance_rule):
  torch_model = _torch_head(model_pos)
  head = vdit_convert.vdit_head(_state_dict(torch_model), CONFIG)
  inputs = _inputs()
  graphdef, state = nnx.split(head)
  out, refined = forward(graphdef, state, *inputs, SIZES, QUERY)
  ref_layers, ref_refined = _torch_outputs(torch_model, *inputs, QUERY)
  got_layers = list(out["aux_outputs"]) + [out]
  valid = ~inputs[1][:, 0]  # (B, H, W)
  for l, (got, ref) in enumerate(zip(got_layers, ref_layers)):
    for key in ("pred_logits", "pred_boxes"):
      tolerance_rule(got[key], ref[key], f"layer {l} {key}")
    low = ref["dynamic_masks"].transpose(0, 1, 2, 4, 5, 3)
    tolerance_rule(got["dynamic_masks"], low, f"layer {l} dynamic masks",
                   valid[:, None, None, ::8, ::8])
    tolerance_rule(got["pred_masks_low"], ref["pred_masks_low"], f"layer {l} stride-2 masks",
                   valid[:, None, None, ::2, ::2])
    tolerance_rule(refined[l], ref_refined[l], f"layer {l} refined masks", valid[:, None])
  return out


def _exact(got, ref, name, valid=None):
  del valid  # Both sides encode positions alike, so padded pixels must match too.
  parity.assert_close(got, ref, name)


def _within_5e3(got, ref, name, valid=None):
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  if valid is not None:
    keep = np.broadcast_to(valid[..., None] if got.ndim > valid.ndim else valid, got.shape)
    got, ref = got[keep], ref[keep]
  err, scale = np.abs(got - ref).max(), np.abs(ref).max()
  assert err <= 5e-3 * max(1.0, scale), f"{name}: max abs error {err:.3g}, max |ref| {scale:.3g}"


def test_matches_the_original_with_the_ports_position_encoding(forward):
  """Everything equal to the original's computation when both use the same 2-D position
  encoding (the port's defines fully padded rows and columns)."""
  _compare(_port_pos_2d, forward, _exact)


def test_valid_pixels_close_to_the_original_formula(forward):
  """With the original's own 2-D encoding (about -3e6 arguments on fully padded rows and
  columns), outputs on valid pixels stay within 5e-3 of the largest value."""
  _compare(torch_sine_2d, forward, _within_5e3)


def test_padded_caption_tokens_change_nothing(forward):
  """Tokens past the caption (text_mask False) are ignored whatever their features."""
  head = vdit_convert.vdit_head(_state_dict(_torch_head(_port_pos_2d)), CONFIG)
  graphdef, state = nnx.split(head)
  features, pad_mask, text, text_mask = _inputs()
  noisy = np.where(text_mask[..., None], text, 50.0 * np.random.default_rng(3).standard_normal(
      text.shape)).astype(np.float32)
  a, _ = forward(graphdef, state, features, pad_mask, text, text_mask, SIZES, QUERY)
  b, _ = forward(graphdef, state, features, pad_mask, noisy, text_mask, SIZES, QUERY)
  for key in ("pred_logits", "pred_boxes", "pred_masks_low"):
    np.testing.assert_allclose(np.asarray(a[key]), np.asarray(b[key]), atol=1e-5, err_msg=key)
    assert np.isfinite(np.asarray(a[key])).all()


def test_select_query_is_the_best_mean_score():
  logits = np.random.default_rng(4).standard_normal((3, 5, 4, 1)).astype(np.float32)
  want = [max(range(4), key=lambda q: np.mean(1 / (1 + np.exp(-logits[b, :, q, 0]))))
          for b in range(3)]
  np.testing.assert_array_equal(np.asarray(head_lib.select_query(jnp.asarray(logits))), want)


def _full_size():
  return nnx.eval_shape(lambda: head_lib.ReferringHead(**common.head(),
                                                       rngs=abstract_build.host_rngs(0)))


def test_full_size_parameter_count():
  shapes = abstract_build.param_shapes(_full_size())
  assert sum(int(np.prod(s.shape)) for s in shapes.values()) == 16_460_438


def test_converter_covers_the_full_size_head():
  keys = full_size_torch_keys()
  items = vdit_convert.without_aliases({k: np.zeros(1) for k in keys}, "full-size head")
  shapes = dict(keys)
  streamed = ((k, np.broadcast_to(np.float32(0), shapes[k])) for k, _ in items)
  converted = core.convert_tensors(streamed, abstract_build.param_shapes(_full_size()),
                                   vdit_convert.HEAD_RULES, what="full-size head")
  assert len(converted) == len(keys) - 4 * 6  # the decoder's 4 x 6 bbox_embed aliases


@pytest.fixture(scope="module")
def tiny_state_dict():
  return _state_dict(_torch_head(_port_pos_2d))


@pytest.mark.parametrize("edit, message", [
    (lambda sd: sd.pop("controller.layers.0.bias"), r"1 missing .*\n\s+controller.layers.0.bias"),
    (lambda sd: sd.update({"mask_refine.extra": torch.zeros(2)}),
     r"1 unexpected .*\n\s+mask_refine.extra"),
    (lambda sd: sd.update({"query_embed.weight": torch.zeros(4, 32)}),
     r"shape mismatch .*\n\s+query_embed.weight: \(4, 32\) -> \(3, 32\)"),
    (lambda sd: sd.update({"transformer.decoder.bbox_embed.1.layers.0.bias": torch.ones(32)}),
     r"transformer.decoder.bbox_embed.1.layers.0.bias: differs from bbox_embed.1.layers.0.bias"),
])
def test_converter_names_bad_keys(tiny_state_dict, edit, message):
  sd = dict(tiny_state_dict)
  edit(sd)
  with pytest.raises(core.ConversionError, match=message):
    vdit_convert.vdit_head(sd, CONFIG)
