"""VD-IT assembled: the frozen towers, the diffusion feature extractor's adapters and the head.

The original is `VDIT` (VD-IT models/diffvos_cross.py) with its backbone
(`models/itcross_video_swin_transformer.py`, `Text-To-Video-Finetuning/train_itcross_pn.py`)
and RoBERTa. Here:
  towers     the frozen modules (vdit_jax/towers.py), `config.model.towers` run-time settings;
  extractor  the trainable adapters (vdit_jax/models/extractor.py), `config.model.extractor`;
  head       the segmentation head (vdit_jax/models/head.py), `config.model.head`.
Every parameter under `towers` is frozen and every other one trains: vdit_jax.train_state's
`TRAINABLE` and `FROZEN` are the one split the train step, the optimizer and the
checkpoints share.

The work on a batch comes in two stages (`__call__` runs both): `encode_video`, everything
that does not depend on the caption (VAE latents and the learned noise, the stride-4 level,
the projected CLIP image tokens), and `decode`, the rest for each caption. `predict`,
`predict_encoded` and `segment` take `video_index` so that the captions of one video share
one encoding (vdit_jax/predict.py runs all expressions of a video window on one); the
numbers equal separate runs.

Batches are what the pipelines yield (data_pipelines/train_clips.py, eval_windows.py):
frames (B, T, H, W, 3) uint8, pad_mask (B, H, W) True on padding, size (B, 2) unpadded
(h, w), annotated (B, T), and the caption's clip_ids / roberta_ids / roberta_mask
(vdit_jax.tokenizers.CaptionTokenizer); training adds masks (B, T, H, W), boxes (B, T, 4)
and valid (B, T).
"""

from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from vdit_jax import abstract_build, errors, losses, pretrained, sharding, towers, train_state
from vdit_jax.models import head as head_lib
from vdit_jax.models.extractor import TOWERS_USED, FeatureExtractor, VideoEncoding

# Which frames the head sees: all of the clip's, or (A2D / JHMDB, whose clips have one
# annotated frame) only the annotated one, as the original selects `valid_indices`
# (diffvos_cross.py:221-230).
HEAD_FRAMES = ("all", "annotated")
QUERIES = ("best", "all")
# The per-video fields of a batch beside frames and pad_mask; the rest (the caption's tokens,
# training targets) are per caption.
VIDEO_FIELDS = ("size", "frame_valid", "annotated")


class VDIT(nnx.Module):
  """The whole model; `build` makes it from an experiment config.

  Args:
    tower_modules: name -> frozen tower (the five of `vdit_jax.backbone_format.TOWERS`).
    extractor: the adapters, built for these towers.
    head: the segmentation head.
    head_frames: one of HEAD_FRAMES (config.model.head_frames).
  """

  def __init__(self, tower_modules: Mapping[str, nnx.Module], extractor: FeatureExtractor,
               head: head_lib.ReferringHead, *, head_frames: str):
    if head_frames not in HEAD_FRAMES:
      raise errors.ConfigError(f"config.model.head_frames must be one of {HEAD_FRAMES}, got "
                               f"{head_frames!r}")
    self.towers = nnx.Dict(dict(tower_modules))
    self.extractor, self.head, self.head_frames = extractor, head, head_frames

  def extract_features(self, frames: jax.Array, pad_mask: jax.Array, clip_ids: jax.Array, *,
                       rng: jax.Array | None = None, deterministic_latents: bool = False):
    """The 4-level pyramid (`extractor.Pyramid`: features (B*T, h, w, C) and masks)."""
    return self.extractor(self.towers, frames, pad_mask, clip_ids, rng=rng,
                          deterministic_latents=deterministic_latents)

  def encode_video(self, frames: jax.Array, pad_mask: jax.Array, *,
                   rng: jax.Array | None = None, deterministic_latents: bool = False
                   ) -> VideoEncoding:
    """The text-independent work on V videos (`FeatureExtractor.encode_video`): VAE latents
    and the learned noise, the stride-4 level, the projected CLIP image tokens. Every
    caption of a video shares it (`decode`, `predict(..., video_index=)`).

    Args:
      frames: (V, T, H, W, 3) uint8.
      pad_mask: (V, H, W) bool, True on padding.
      rng: the key of the VAE posterior sample (one sample per video, shared by its
        captions), or (V,) typed keys, one per video; unused with deterministic_latents.
      deterministic_latents: the posterior mean instead of a sample: reproducible, but a
        deviation from the original, which samples (train_itcross_pn.py:330).
    """
    return self.extractor.encode_video(self.towers, frames, pad_mask, rng=rng,
                                       deterministic_latents=deterministic_latents)

  def __call__(self, batch: Mapping[str, jax.Array], *, rng: jax.Array | None = None,
               deterministic_latents: bool = False):
    """The head's outputs (`ReferringHead.__call__`) and the features it ran on.

    Train or eval behaviour (the temporal convs' and the head's dropout) is NNX's module mode
    (`model.train()` / `model.eval()`); `rng` draws the VAE posterior sample.

    Returns:
      (outputs, features): features are the 4 levels (B*T', h, w, C), T' = T, or 1 for
      head_frames="annotated" (then outputs have T' = 1 too).
    """
    video = self.encode_video(batch["frames"], batch["pad_mask"], rng=rng,
                              deterministic_latents=deterministic_latents)
    return self.decode(video, batch)

  def decode(self, video: VideoEncoding, batch: Mapping[str, jax.Array], *,
             video_index: jax.Array | None = None):
    """The text-dependent work for N captions of encoded videos: CLIP text, the cross
    attention, the UNet's tap blocks, the adapters, RoBERTa and the head.

    Args:
      video: `encode_video` of V videos of T frames.
      batch: the captions' clip_ids, roberta_ids, roberta_mask (N, L), and the videos'
        size (V, 2) and (head_frames="annotated") annotated (V, T).
      video_index: (N,) int, the video of each caption; None: N == V, caption n on video n.

    Returns:
      As `__call__`, for the N captions.
    """
    rows = _video_rows(batch, video_index)
    pyramid = self.extractor.pyramid(self.towers, video, batch["clip_ids"], video_index)
    features = list(pyramid.features)
    pad_mask = video.pad_mask if video_index is None else video.pad_mask[video_index]
    n, t = batch["clip_ids"].shape[0], video.noisy_latents.shape[1]
    pad_mask = jnp.broadcast_to(pad_mask[:, None], (n, t) + pad_mask.shape[1:])
    if self.head_frames == "annotated":
      frame = jnp.arange(n) * t + annotated_frame(rows)
      features = [f[frame] for f in features]
      pad_mask = pad_mask[:, :1]
    text, _ = self.towers["roberta"](batch["roberta_ids"], batch["roberta_mask"])
    outputs = self.head(features, pad_mask, jax.lax.stop_gradient(text),
                        batch["roberta_mask"].astype(bool), rows["size"])
    return outputs, features

  def loss(self, batch: Mapping[str, jax.Array], rng: jax.Array, *, matcher: Mapping[str, float],
           weights: Mapping[str, float], focal_alpha: float, focal_gamma: float
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The training loss of a batch (models/criterion.py with matching per decoder layer).

    The normaliser, the number of valid frames, is the batch's: jitted over a device mesh
    on the global batch, it is the global count. `rng` draws the VAE posterior sample;
    dropout draws from the model's `dropout` streams (vdit_jax.train_step reseeds them from
    the step's key). Keyword arguments: config.loss.

    Returns:
      (total weighted loss, {term name: unweighted value}).
    """
    outputs, features = self(batch, rng=rng)
    targets = self._targets(batch)
    num_boxes = losses.num_boxes(targets)
    focal = dict(focal_alpha=focal_alpha, focal_gamma=focal_gamma)
    per_layer = []
    for layer, out in enumerate(list(outputs["aux_outputs"]) + [outputs]):
      cost = losses.matching_cost(out["pred_logits"], out["pred_boxes"], out["pred_masks_low"],
                                  targets, **matcher, **focal)
      query = losses.match(cost)
      refined = self.head.refine(outputs, features, query, layer=layer)
      per_layer.append(losses.layer_losses(out["pred_logits"], out["pred_boxes"], refined,
                                           out["pred_masks_low"], query, targets,
                                           num_boxes=num_boxes, **focal))
    return losses.total_loss(per_layer, weights)

  def _targets(self, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    targets = {k: batch[k] for k in ("boxes", "valid", "masks")}
    if self.head_frames == "annotated":
      frame = annotated_frame(batch)[:, None]
      targets = {k: jnp.take_along_axis(v, frame.reshape((-1, 1) + (1,) * (v.ndim - 2)), axis=1)
                 for k, v in targets.items()}
    return dict(targets, sizes=batch["size"])

  def predict(self, batch: Mapping[str, jax.Array], *, queries: str,
              video_index: jax.Array | None = None, rng: jax.Array | None = None,
              deterministic_latents: bool = False) -> dict[str, jax.Array]:
    """Mask probabilities at the padded input size, as vdit_jax/evaluation/prediction.py
    defines them: queries="best" (B, N, H, W) for the query of highest mean score over the
    valid frames and its score (B,); "all" (B, Q, N, H, W) and each query's score at the
    annotated frame (B, Q).

    With `video_index` (B,), the video fields (frames, pad_mask, size, frame_valid,
    annotated) hold V videos and caption b runs on video video_index[b]: each video is
    encoded once for all its captions (`encode_video`), with the numbers of B separate runs.
    """
    video = self.encode_video(batch["frames"], batch["pad_mask"], rng=rng,
                              deterministic_latents=deterministic_latents)
    return self.predict_encoded(video, batch, queries=queries, video_index=video_index)

  def predict_encoded(self, video: VideoEncoding, batch: Mapping[str, jax.Array], *,
                      queries: str, video_index: jax.Array | None = None
                      ) -> dict[str, jax.Array]:
    """`predict` on videos already encoded (`encode_video`); batch as `decode` takes it,
    plus frame_valid (V, T) ("best") or annotated (V, T) ("all")."""
    if queries not in QUERIES:
      raise errors.ConfigError(f"queries must be one of {QUERIES}, got {queries!r}")
    if queries == "best":
      best = self.segment(video, batch, video_index=video_index)
      return {"masks": best["masks"], "scores": best["scores"]}
    outputs, features = self.decode(video, batch, video_index=video_index)
    rows, t = _video_rows(batch, video_index), video.noisy_latents.shape[1]
    scores = jax.nn.sigmoid(outputs["pred_logits"][..., 0])  # (B, T', Q)
    per_query = [self._place(jax.nn.sigmoid(self.head.refine(
        outputs, features, jnp.full(scores.shape[:1], q, jnp.int32))), rows, t)
                 for q in range(scores.shape[-1])]
    frame = (annotated_frame(rows) if self.head_frames == "all"
             else jnp.zeros(scores.shape[:1], jnp.int32))
    at_frame = jnp.take_along_axis(scores, frame[:, None, None], axis=1)[:, 0]
    return {"masks": jnp.stack(per_query, axis=1), "scores": at_frame}

  def segment(self, video: VideoEncoding, batch: Mapping[str, jax.Array], *,
              video_index: jax.Array | None = None) -> dict[str, jax.Array]:
    """The best query of each caption (the original's choice per video,
    inference_ytvos.py:213-219) with its score on every frame.

    Args as `predict_encoded`, with frame_valid (V, T).

    Returns:
      masks (B, T, H, W) probabilities at the padded input size, scores (B,) the query's
      mean score over the valid frames, frame_scores (B, T') its score per frame.
    """
    outputs, features = self.decode(video, batch, video_index=video_index)
    rows, t = _video_rows(batch, video_index), video.noisy_latents.shape[1]
    scores = jax.nn.sigmoid(outputs["pred_logits"][..., 0])  # (B, T', Q)
    weight = rows["frame_valid"].astype(jnp.float32)[:, :, None]
    if self.head_frames == "annotated":
      weight = jnp.ones_like(scores)
    mean = (scores * weight).sum(1) / jnp.maximum(weight.sum(1), 1.0)
    best = jnp.argmax(mean, axis=-1)
    masks = self._place(jax.nn.sigmoid(self.head.refine(outputs, features, best)), rows, t)
    return {"masks": masks, "scores": jnp.take_along_axis(mean, best[:, None], 1)[:, 0],
            "frame_scores": jnp.take_along_axis(scores, best[:, None, None], 2)[..., 0]}

  def _place(self, masks: jax.Array, rows: Mapping[str, jax.Array], t: int) -> jax.Array:
    """(B, T', H, W) masks as (B, T, H, W): with head_frames="annotated" the one frame goes
    to its place in the window, zeros elsewhere."""
    if self.head_frames == "all":
      return masks
    at = jax.nn.one_hot(annotated_frame(rows), t, dtype=masks.dtype)
    return at[:, :, None, None] * masks


def _video_rows(batch: Mapping[str, jax.Array], video_index: jax.Array | None
                ) -> dict[str, jax.Array]:
  """The per-video fields of `batch` present (size, frame_valid, annotated), one row per
  caption."""
  rows = {k: batch[k] for k in VIDEO_FIELDS if k in batch}
  if video_index is None:
    return rows
  return {k: jnp.take(v, video_index, axis=0) for k, v in rows.items()}


def annotated_frame(batch: Mapping[str, jax.Array]) -> jax.Array:
  """(B,) the first annotated frame of each clip (A2D / JHMDB have exactly one)."""
  return jnp.argmax(batch["annotated"], axis=1)


def build(config, *, rules: sharding.Rules | None = None) -> VDIT:
  """The model of an experiment config, seeded from config.seed.

  The towers come from `config.model.weights_dir` (converted weights) or, when it is "", are
  random ones of the architectures in `config.model.random_towers`; the extractor's adapters
  and the head are initialised as the original initialises them. With `rules` every
  parameter is created (or loaded) straight into its sharding, never whole on one device.
  """
  model, seed = config.model, config.seed
  if model.weights_dir:
    modules = pretrained.load_backbone(model.weights_dir, model.towers, shardings=(
        None if rules is None else rules.within("towers")))
  elif model.random_towers:
    modules = towers.random_towers(model.random_towers, model.towers, seed=seed)
    if rules is not None:
      for name, module in modules.items():
        state = nnx.state(module)
        nnx.update(module, sharding.put(state, rules.tree(state, ("towers", name))))
  else:
    raise errors.ConfigError("config.model: set weights_dir (converted weights) or "
                             "random_towers (random tiny towers)")
  return assemble(config, modules, rules=rules)


def assemble(config, tower_modules: Mapping[str, nnx.Module], *,
             rules: sharding.Rules | None = None) -> VDIT:
  """VDIT around given towers: the adapters and the head initialised for them from
  config.model (seeded from config.seed; created in their shardings with `rules`)."""
  architectures = {n: tower_modules[n].config for n in TOWERS_USED}
  return VDIT(tower_modules, *trainable_modules(config, architectures, rules=rules),
              head_frames=config.model.head_frames)


def abstract_model(config, architectures: Mapping[str, Any]) -> VDIT:
  """VDIT of `config` around towers of these architectures (tower name -> architecture
  dataclass) from shapes alone (nnx.eval_shape: every parameter a ShapeDtypeStruct, nothing
  initialised), for parameter counts, cost analysis and the memory planner."""
  specs = towers.tower_specs()

  def make():
    modules = {name: towers.build(name, specs[name], architecture, config.model.towers[name],
                                  rngs=abstract_build.host_rngs(0))
               for name, architecture in architectures.items()}
    return assemble(config, modules)

  return nnx.eval_shape(make)


def abstract_released(config) -> VDIT:
  """`abstract_model` around the released towers (`towers.released_architectures()`)."""
  return abstract_model(config, towers.released_architectures())


def trainable_modules(config, architectures: Mapping[str, Any], *,
                      rules: sharding.Rules | None = None
                      ) -> tuple[FeatureExtractor, head_lib.ReferringHead]:
  """The adapters for towers of these architectures (tower name -> architecture dataclass,
  the TOWERS_USED ones) and the head, from config.model, seeded from config.seed.

  What `assemble` puts around its towers; without towers (e.g. `VDIT({}, *trainable_modules(
  ...))` under nnx.eval_shape) it gives the trainable parameters' paths and shapes alone.
  """
  model, seed = config.model, config.seed
  init = lambda make, prefix: (make() if rules is None
                               else train_state.init_sharded(make, rules, prefix))
  # RBG parameter keys: with threefry, initialising the adapters and the head compiled 2.5x
  # longer (one random-number program per parameter shape); the dropout keys are threefry,
  # as vdit_jax/train_step.py reseeds them.
  rngs = lambda offset: nnx.Rngs(params=jax.random.key(seed + offset, impl="rbg"),
                                 dropout=seed + offset)
  extractor = init(lambda: FeatureExtractor(
      architectures, out_channels=model.head.in_channels, mean=config.data.mean,
      std=config.data.std, **model.extractor, rngs=rngs(0)), ("extractor",))
  head = init(lambda: head_lib.ReferringHead(**model.head, rngs=rngs(1)), ("head",))
  return extractor, head
