"""VD-IT assembled: the frozen towers, the diffusion feature extractor's adapters and the head.

The original is `VDIT` (VD-IT models/diffvos_cross.py) with its backbone
(`models/itcross_video_swin_transformer.py`, `Text-To-Video-Finetuning/train_itcross_pn.py`)
and RoBERTa. Here:
  towers     the frozen modules (vdit_jax/towers.py), `config.model.towers` run-time settings;
  extractor  the trainable adapters (vdit_jax/models/extractor.py), `config.model.extractor`;
  head       the segmentation head (vdit_jax/models/head.py), `config.model.head`.
Every parameter under `towers` is frozen and every other one trains: `TRAINABLE` and
`FROZEN` are the one split the train step, the optimizer and the checkpoints share.

Batches are what the pipelines yield (data_pipelines/train_clips.py, eval_windows.py):
frames (B, T, H, W, 3) uint8, pad_mask (B, H, W) True on padding, size (B, 2) unpadded
(h, w), annotated (B, T), and the caption's clip_ids / roberta_ids / roberta_mask
(vdit_jax.tokenizers.CaptionTokenizer); training adds masks (B, T, H, W), boxes (B, T, 4)
and valid (B, T).
"""

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vdit_jax import errors, losses, pretrained, towers
from vdit_jax.models import head as head_lib
from vdit_jax.models.extractor import TOWERS_USED, FeatureExtractor

TRAINABLE = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("towers")))
FROZEN = nnx.All(nnx.Param, nnx.PathContains("towers"))
# Which frames the head sees: all of the clip's, or (A2D / JHMDB, whose clips have one
# annotated frame) only the annotated one, as the original selects `valid_indices`
# (diffvos_cross.py:221-230).
HEAD_FRAMES = ("all", "annotated")
QUERIES = ("best", "all")


class VDIT(nnx.Module):
  """The whole model.

  Args:
    tower_modules: name -> frozen tower (the five of `vdit_jax.backbone_format.TOWERS`).
    extractor: config.model.extractor.
    head: config.model.head.
    mean, std: the frames' statistics (config.data.mean / std).
    head_frames: one of HEAD_FRAMES (config.model.head_frames).
    rngs: the trainable parts' initialisation and dropout streams.
  """

  def __init__(self, tower_modules: Mapping[str, nnx.Module], *, extractor: Mapping[str, Any],
               head: Mapping[str, Any], mean: Sequence[float], std: Sequence[float],
               head_frames: str, rngs: nnx.Rngs):
    if head_frames not in HEAD_FRAMES:
      raise errors.ConfigError(f"config.model.head_frames must be one of {HEAD_FRAMES}, got "
                               f"{head_frames!r}")
    self.towers = nnx.Dict(dict(tower_modules))
    self.extractor = FeatureExtractor(
        {n: self.towers[n].config for n in TOWERS_USED}, out_channels=head["in_channels"],
        mean=mean, std=std, **extractor, rngs=rngs)
    self.head = head_lib.ReferringHead(**head, rngs=rngs)
    self.head_frames = head_frames

  @classmethod
  def from_config(cls, config, *, seed: int = 0, shardings=None) -> "VDIT":
    """The model of an experiment config: towers from `config.model.weights_dir` (converted
    weights, placed by `shardings` as `pretrained.load_backbone` takes them) or, when it is
    "", random ones of the architectures in `config.model.random_towers`."""
    model = config.model
    if model.weights_dir:
      modules = pretrained.load_backbone(model.weights_dir, model.towers, shardings=shardings)
    elif model.random_towers:
      modules = towers.random_towers(model.random_towers, model.towers, seed=seed)
    else:
      raise errors.ConfigError("config.model: set weights_dir (converted weights) or "
                               "random_towers (random tiny towers)")
    return cls(modules, extractor=model.extractor, head=model.head, mean=config.data.mean,
               std=config.data.std, head_frames=model.head_frames, rngs=nnx.Rngs(seed))

  def extract_features(self, frames: jax.Array, pad_mask: jax.Array, clip_ids: jax.Array, *,
                       rng: jax.Array | None = None, deterministic_latents: bool = False):
    """The 4-level pyramid (`extractor.Pyramid`: features (B*T, h, w, C) and masks)."""
    return self.extractor(self.towers, frames, pad_mask, clip_ids, rng=rng,
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
    pyramid = self.extract_features(batch["frames"], batch["pad_mask"], batch["clip_ids"],
                                    rng=rng, deterministic_latents=deterministic_latents)
    features = list(pyramid.features)
    b, t = batch["frames"].shape[:2]
    pad_mask = jnp.broadcast_to(batch["pad_mask"][:, None], (b, t) + batch["pad_mask"].shape[1:])
    if self.head_frames == "annotated":
      rows = jnp.arange(b) * t + annotated_frame(batch)
      features = [f[rows] for f in features]
      pad_mask = pad_mask[:, :1]
    text, _ = self.towers["roberta"](batch["roberta_ids"], batch["roberta_mask"])
    outputs = self.head(features, pad_mask, jax.lax.stop_gradient(text),
                        batch["roberta_mask"].astype(bool), batch["size"])
    return outputs, features

  def loss(self, batch: Mapping[str, jax.Array], rng: jax.Array, *, matcher: Mapping[str, float],
           weights: Mapping[str, float], focal_alpha: float, focal_gamma: float
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The training loss of a batch (models/criterion.py with matching per decoder layer).

    The normaliser, the number of valid frames, is the batch's: jitted over a device mesh
    on the global batch, it is the global count. Keyword arguments: config.loss.

    Returns:
      (total weighted loss, {term name: unweighted value, "loss": total}).
    """
    latent_rng, dropout_rng = jax.random.split(rng)
    nnx.reseed(self, dropout=dropout_rng)
    outputs, features = self(batch, rng=latent_rng)
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
    total, named = losses.total_loss(per_layer, weights)
    return total, dict(named, loss=total)

  def _targets(self, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    targets = {k: batch[k] for k in ("boxes", "valid", "masks")}
    if self.head_frames == "annotated":
      frame = annotated_frame(batch)[:, None]
      targets = {k: jnp.take_along_axis(v, frame.reshape((-1, 1) + (1,) * (v.ndim - 2)), axis=1)
                 for k, v in targets.items()}
    return dict(targets, sizes=batch["size"])

  def predict(self, batch: Mapping[str, jax.Array], *, queries: str,
              rng: jax.Array | None = None, deterministic_latents: bool = False
              ) -> dict[str, jax.Array]:
    """Mask probabilities at the padded input size, as vdit_jax/evaluation/prediction.py
    defines them: queries="best" (B, N, H, W) for the query of highest mean score over the
    valid frames and its score (B,); "all" (B, Q, N, H, W) and each query's score at the
    annotated frame (B, Q)."""
    if queries not in QUERIES:
      raise errors.ConfigError(f"queries must be one of {QUERIES}, got {queries!r}")
    outputs, features = self(batch, rng=rng, deterministic_latents=deterministic_latents)
    scores = jax.nn.sigmoid(outputs["pred_logits"][..., 0])  # (B, T', Q)
    if queries == "best":
      weight = batch["frame_valid"].astype(jnp.float32)[:, :, None]
      if self.head_frames == "annotated":
        weight = jnp.ones_like(scores)
      mean = (scores * weight).sum(1) / jnp.maximum(weight.sum(1), 1.0)
      best = jnp.argmax(mean, axis=-1)
      masks = self._place(jax.nn.sigmoid(self.head.refine(outputs, features, best)), batch)
      return {"masks": masks, "scores": jnp.take_along_axis(mean, best[:, None], 1)[:, 0]}
    per_query = [self._place(jax.nn.sigmoid(self.head.refine(
        outputs, features, jnp.full(scores.shape[:1], q, jnp.int32))), batch)
                 for q in range(scores.shape[-1])]
    frame = (annotated_frame(batch) if self.head_frames == "all"
             else jnp.zeros(scores.shape[:1], jnp.int32))
    at_frame = jnp.take_along_axis(scores, frame[:, None, None], axis=1)[:, 0]
    return {"masks": jnp.stack(per_query, axis=1), "scores": at_frame}

  def _place(self, masks: jax.Array, batch: Mapping[str, jax.Array]) -> jax.Array:
    """(B, T', H, W) masks as (B, T, H, W): with head_frames="annotated" the one frame goes
    to its place in the window, zeros elsewhere."""
    if self.head_frames == "all":
      return masks
    t = batch["frames"].shape[1]
    at = jax.nn.one_hot(annotated_frame(batch), t, dtype=masks.dtype)
    return at[:, :, None, None] * masks


def annotated_frame(batch: Mapping[str, jax.Array]) -> jax.Array:
  """(B,) the first annotated frame of each clip (A2D / JHMDB have exactly one)."""
  return jnp.argmax(batch["annotated"], axis=1)
