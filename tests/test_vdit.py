"""The assembled model: full-size parameter counts from shapes against the PyTorch models'
(diffusers / transformers built on the meta device) and the original's trainable total;
the tiny config's forward, loss and gradient under one jit, and a fixed batch overfit."""

import functools

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers
from flax import nnx

from configs import a2d as a2d_config
from configs import ytvos as ytvos_config
from vdit_jax import optim, tokenizers, towers, train_state, train_step
from vdit_jax.models import unet3d
from vdit_jax.models import vdit as vdit_lib

import parity


def _count(state) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))


@pytest.fixture(scope="module")
def full_size():
  """The paper's model from shapes alone: released tower architectures, ytvos's config."""
  return vdit_lib.abstract_released(ytvos_config.get_config())


def _torch_counts() -> dict[str, int]:
  """Parameters of the released models as diffusers / transformers build them."""
  with torch.device("meta"):
    unet = diffusers.UNet3DConditionModel(**{k: v for k, v in unet3d.MODELSCOPE_CONFIG.items()
                                             if not k.startswith("_")})
    vae = diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4)
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
        hidden_act="gelu"))
    vision = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
        hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
        patch_size=14, projection_dim=1024, hidden_act="gelu"))
    roberta = transformers.RobertaModel(transformers.RobertaConfig(  # roberta-base's config.json
        vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5),
        add_pooling_layer=False)
  count = lambda *ms: sum(p.numel() for m in ms for p in m.parameters())
  return {"unet": count(unet), "vae_encoder": count(vae.encoder, vae.quant_conv),
          "clip_text": count(text), "clip_vision": count(vision), "roberta": count(roberta)}


def test_full_size_counts(full_size):
  parts = train_state.split(full_size)
  # 13,578,548 adapters + 16,460,438 head (VD-IT's trainable modules, counted in torch).
  assert _count(parts.params) == 30_038_986
  frozen = {name: _count(nnx.state(full_size.towers[name], nnx.Param))
            for name in towers.tower_specs()}
  assert frozen == _torch_counts()
  assert _count(parts.frozen) == sum(frozen.values())
  opt_state = jax.eval_shape(optax.adamw(1e-4).init, parts.params)
  moments = [x for x in jax.tree.leaves(opt_state) if x.ndim]
  assert _count(moments) == 2 * 30_038_986  # First and second moments of trainable only.


def _batch(config, seed=0):
  """A fixed tiny training batch: 2 clips of 2 frames at 64x96, the second padded, an
  object moving in the first."""
  rng = np.random.default_rng(seed)
  b, t, h, w = 2, 2, 64, 96
  frames = rng.integers(0, 256, (b, t, h, w, 3), dtype=np.uint8)
  pad_mask = np.zeros((b, h, w), bool)
  pad_mask[1, 48:] = True
  pad_mask[1, :, 80:] = True
  frames[pad_mask[:, None].repeat(t, 1)] = 0
  masks = np.zeros((b, t, h, w), bool)
  masks[0, 0, 8:30, 10:40] = masks[0, 1, 12:34, 20:50] = masks[1, :, 10:30, 30:60] = True
  frames[masks] = 255
  boxes = np.zeros((b, t, 4), np.float32)
  sizes = np.array([[h, w], [48, 80]], np.int32)
  for i in range(b):
    for j in range(t):
      ys, xs = np.nonzero(masks[i, j])
      (y0, y1), (x0, x1) = (ys.min(), ys.max() + 1), (xs.min(), xs.max() + 1)
      hh, ww = sizes[i]
      boxes[i, j] = [(x0 + x1) / 2 / ww, (y0 + y1) / 2 / hh, (x1 - x0) / ww, (y1 - y0) / hh]
  tokenize = tokenizers.CaptionTokenizer.for_model(config.model.weights_dir, **config.data.text)
  captions = [tokenize(c) for c in ("a white box moving right", "the white square")]
  stack = lambda key: np.stack([c[key] for c in captions])
  return dict(frames=frames, pad_mask=pad_mask, masks=masks, boxes=boxes,
              valid=np.ones((b, t), bool), annotated=np.ones((b, t), bool), size=sizes,
              **{k: stack(k) for k in captions[0]})


@pytest.fixture(scope="module")
def tiny():
  config = ytvos_config.get_config("tiny")
  model = vdit_lib.build(config)
  model.train()
  return config, model


def test_tiny_overfits_a_fixed_batch(tiny):
  """The production update step (vdit_jax.train_step.update: forward, loss, gradient of the
  trainable parameters, AdamW) in one jit; 40 steps on one batch, at a learning rate for
  overfitting, bring the loss down at least 5x."""
  config, model = tiny
  config.optimizer.update(lr=1e-2, grad_clip_norm=1.0)
  batch = {k: jnp.asarray(v) for k, v in _batch(config).items()}
  parts = train_state.split(model)
  adamw, schedule = optim.make(config, steps_per_epoch=1000)
  tx = adamw.direction()
  state = dict(params=parts.params, opt=tx.init(parts.params), rng=jax.random.PRNGKey(0),
               step=jnp.int32(0), nonfinite_total=jnp.int32(0), nonfinite_in_row=jnp.int32(0))
  step = functools.partial(train_step.update, graphdef=parts.graphdef, tx=tx,
                           schedule=schedule,
                           loss_fn=lambda m, b, r: m.loss(b, r, **config.loss))
  compiled = parity.compiled(step, state, parts.frozen, parts.rest, batch)
  losses = []
  for _ in range(40):
    state, metrics = compiled(state, parts.frozen, parts.rest, batch)
    losses.append(float(metrics["loss"]))
  assert int(metrics["nonfinite_total"]) == 0
  assert np.isfinite(losses).all()
  assert losses[-1] * 5 <= losses[0], np.round(losses, 2)
  # Optimizer state for the trainable parameters only.
  assert _count([x for x in jax.tree.leaves(state["opt"]) if x.ndim]) == 2 * _count(parts.params)


def test_annotated_frame_only_runs_the_head_on_that_frame():
  """A2D's config: the head sees the annotated frame only, and predictions land there."""
  config = a2d_config.get_config("tiny")
  model = vdit_lib.build(config)
  batch = _batch(config, seed=1)
  batch["annotated"] = np.array([[False, True], [True, False]])
  batch["frame_valid"] = np.ones((2, 2), bool)
  graphdef, state = nnx.split(model)
  predict = lambda st, b, key: nnx.merge(graphdef, st).predict(b, queries="all", rng=key)
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  out = parity.compiled(predict, state, batch, jax.random.key(0))(state, batch,
                                                                   jax.random.key(0))
  masks = np.asarray(out["masks"])
  assert masks.shape == (2, config.model.head.num_queries, 2, 64, 96)
  assert not masks[0, :, 0].any() and masks[0, :, 1].any()
  assert not masks[1, :, 1].any() and masks[1, :, 0].any()
  assert out["scores"].shape == (2, config.model.head.num_queries)
