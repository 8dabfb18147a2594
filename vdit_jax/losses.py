"""VD-IT's training objective per decoder layer: the matching cost, its choice of query, and
the seven loss terms, in JAX with static shapes and no host callbacks.

A clip has one referred object, so the matcher scores every query against it over all frames
and takes the cheapest: an argmin, not a Hungarian assignment (VD-IT models/matcher.py:166).
Each decoder layer is matched on its own (VD-IT models/diffvos_cross.py:360-369); the caller
refines the matched query's mask to stride 1 between `match` and `layer_losses`
(diffvos_cross.py:372-383) and sums the layers with `total_loss`.

Targets are a mapping of arrays:
  boxes: (B, T, 4) cxcywh normalised to [0, 1]; zeros on frames without the object.
  valid: (B, T) bool, whether the object is in the frame.
  masks: (B, T, H, W) bool at the padded input size, False on padding and on invalid frames.
  sizes: (B, 2) int unpadded (h, w); not read here.
The original pads the ground-truth masks to the batch's largest size rounded up to 32
(matcher.py:101-103, criterion.py:116-117), which is its collate's padding of the frames
(VD-IT util/misc.py:302), so masks at the padded input size are the masks it compares with:
padding counts as background and every frame, valid or not, enters the mask and box terms.

Focal terms use `focal_alpha` and `focal_gamma` throughout. The original hard-codes 0.25 and 2
in the matcher (matcher.py:25, 133-134) and in the mask losses (criterion.py:136, 138) and
reads only alpha from its options for the class loss (criterion.py:75): the same numbers as
config.loss.
"""

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

TERMS = ("ce", "bbox", "giou", "mask", "dice", "mask_low", "dice_low")

# The low-resolution masks are at stride 2; the original samples the ground truth at
# [1::2, 1::2], start = stride // 2 (matcher.py:106-109, criterion.py:121-123).
_LOW_STRIDE = 2
# Keeps the original's degenerate-box behaviour finite (VD-IT util/box_ops.py:56, 85).
_IOU_EPS = 1e-6
# Inside the matcher's class-cost logarithms (matcher.py:135-136).
_LOG_EPS = 1e-8


def sigmoid_focal(logits: jax.Array, targets: jax.Array, alpha: float,
                  gamma: float) -> jax.Array:
  """Elementwise sigmoid focal loss, torchvision.ops.sigmoid_focal_loss without reduction
  (VD-IT models/segmentation.py:149-156); alpha < 0 turns the class balancing off."""
  prob = jax.nn.sigmoid(logits)
  p_t = prob * targets + (1 - prob) * (1 - targets)
  # softplus(x) - x t is binary_cross_entropy_with_logits, stable for large |x|.
  loss = (jax.nn.softplus(logits) - logits * targets) * (1 - p_t) ** gamma
  if alpha >= 0:
    loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
  return loss


def dice_coefficient(logits: jax.Array, targets: jax.Array, axis) -> jax.Array:
  """(2 sum(p t) + 1) / (sum p + sum t + 1) over `axis`, p = sigmoid(logits)
  (segmentation.py:125-129, matcher.py:15-23)."""
  prob = jax.nn.sigmoid(logits)
  return (2 * (prob * targets).sum(axis) + 1) / (prob.sum(axis) + targets.sum(axis) + 1)


def cxcywh_to_xyxy(boxes: jax.Array) -> jax.Array:
  """(..., 4) centre, size -> corners."""
  centre, size = boxes[..., :2], boxes[..., 2:]
  return jnp.concatenate([centre - size / 2, centre + size / 2], -1)


def generalized_box_iou(a: jax.Array, b: jax.Array) -> jax.Array:
  """GIoU of xyxy boxes a and b (..., 4), broadcast, with the original's 1e-6 terms
  (util/box_ops.py:44-85); torchvision.ops.generalized_box_iou without them.

  Against the zero box of an invalid frame the IoU is 1e-6 / (area(a) + 1e-6) and the
  enclosing box spans from the origin to a; the terms keep two boxes of zero area with an
  empty hull at GIoU 0 rather than 0 / 0.
  """
  area = lambda lo, hi: jnp.prod(hi - lo, -1)
  clipped_area = lambda lo, hi: jnp.prod(jnp.maximum(hi - lo, 0), -1)
  a_lo, a_hi, b_lo, b_hi = a[..., :2], a[..., 2:], b[..., :2], b[..., 2:]
  inter = clipped_area(jnp.maximum(a_lo, b_lo), jnp.minimum(a_hi, b_hi))
  union = area(a_lo, a_hi) + area(b_lo, b_hi) - inter
  hull = clipped_area(jnp.minimum(a_lo, b_lo), jnp.maximum(a_hi, b_hi))
  return (inter + _IOU_EPS) / (union + _IOU_EPS) - (hull - union + _IOU_EPS) / (hull + _IOU_EPS)


def _low_res_masks(masks: jax.Array, low_shape: tuple[int, ...], name: str) -> jax.Array:
  """The ground truth at the stride-2 masks' pixels; checks that the sizes pair up."""
  h, w = masks.shape[-2:]
  if (low_shape[-2] * _LOW_STRIDE, low_shape[-1] * _LOW_STRIDE) != (h, w):
    raise ValueError(f"{name} {low_shape}: its last two axes must be half the target masks' "
                     f"{masks.shape[-2:]}")
  start = _LOW_STRIDE // 2
  return masks[:, :, start::_LOW_STRIDE, start::_LOW_STRIDE].astype(jnp.float32)


def matching_cost(pred_logits: jax.Array, pred_boxes: jax.Array, pred_masks_low: jax.Array,
                  targets: Mapping[str, jax.Array], *, cost_class: float, cost_bbox: float,
                  cost_giou: float, cost_mask: float, cost_dice: float, focal_alpha: float,
                  focal_gamma: float) -> jax.Array:
  """Each query's cost of standing for the clip's object (VD-IT models/matcher.py:94-164).

  Called as `matching_cost(..., **config.loss.matcher, focal_alpha=config.loss.focal_alpha,
  focal_gamma=config.loss.focal_gamma)`. No gradient flows through it.

  Args:
    pred_logits: (B, T, Q, 1) class logits.
    pred_boxes: (B, T, Q, 4) cxcywh in [0, 1].
    pred_masks_low: (B, T, Q, H/2, W/2) stride-2 mask logits.
    targets: see the module docstring.
    cost_class, cost_bbox, cost_giou, cost_mask, cost_dice: the terms' weights.
    focal_alpha, focal_gamma: the focal terms' parameters.

  Returns:
    (B, Q) float32: cost_class x focal class cost averaged over the valid frames (0 on a clip
    without any; the original has no such clips and would fail on one, matcher.py:143)
    + cost_bbox x L1 + cost_giou x (-GIoU), both averaged over all frames, + cost_mask x mask
    focal (mean over pixels) + cost_dice x (-dice) over the clip's stride-2 masks.
  """
  logits, boxes, masks = (jax.lax.stop_gradient(x).astype(jnp.float32)
                          for x in (pred_logits[..., 0], pred_boxes, pred_masks_low))
  gt_masks = _low_res_masks(targets["masks"], masks.shape, "pred_masks_low")[:, :, None]
  gt_boxes = targets["boxes"].astype(jnp.float32)[:, :, None]
  valid = targets["valid"].astype(jnp.float32)[:, :, None]

  # The matcher's own focal form of the class cost, with its 1e-8 in the logs
  # (matcher.py:135-138), averaged over the valid frames only (matcher.py:125-128, 143).
  # 1 - p is taken as sigmoid(-x): jitted XLA on CPU folds (1 - p) + 1e-8 into
  # (1 + 1e-8) - p, which is 1 - p in float32, and gave -log(0) on saturated logits.
  prob, miss = jax.nn.sigmoid(logits), jax.nn.sigmoid(-logits)
  pos = focal_alpha * miss ** focal_gamma * -jnp.log(prob + _LOG_EPS)
  neg = (1 - focal_alpha) * prob ** focal_gamma * -jnp.log(miss + _LOG_EPS)
  class_cost = ((pos - neg) * valid).sum(1) / jnp.maximum(valid.sum(1), 1)

  # torch.cdist(p=1) and -GIoU per frame, averaged over all frames (matcher.py:146-157).
  bbox_cost = jnp.abs(boxes - gt_boxes).sum(-1).mean(1)
  giou_cost = -generalized_box_iou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(gt_boxes)).mean(1)

  # Over each query's T x H/2 x W/2 pixels at once (matcher.py:159-160).
  mask_cost = sigmoid_focal(masks, gt_masks, focal_alpha, focal_gamma).mean((1, 3, 4))
  dice_cost = -dice_coefficient(masks, gt_masks, (1, 3, 4))
  return (cost_class * class_cost + cost_bbox * bbox_cost + cost_giou * giou_cost +
          cost_mask * mask_cost + cost_dice * dice_cost)


def match(cost: jax.Array) -> jax.Array:
  """(B, Q) cost -> (B,) int32 index of each clip's cheapest query (matcher.py:166)."""
  return jnp.argmin(cost, axis=-1).astype(jnp.int32)


def num_boxes(targets: Mapping[str, jax.Array]) -> jax.Array:
  """The losses' normaliser: the number of valid frames, at least 1, as float32.

  The original averages the per-device counts and clamps at 1 (criterion.py:175-181), then
  DDP averages the per-device gradients; under `jit` over a batch sharded across devices the
  sum here is the global count, which gives the same gradient for the whole batch.
  """
  return jnp.maximum(targets["valid"].sum(), 1).astype(jnp.float32)


def _matched(x: jax.Array, query: jax.Array) -> jax.Array:
  """(B, T, Q, ...) -> (B, T, ...): each clip's query `query[b]`."""
  index = query.reshape((-1, 1, 1) + (1,) * (x.ndim - 3))
  return jnp.take_along_axis(x, index, axis=2)[:, :, 0]


def _mask_terms(logits: jax.Array, gt: jax.Array, num_boxes: jax.Array, alpha: float,
                gamma: float) -> tuple[jax.Array, jax.Array]:
  """Focal (mean over a clip's T x H x W pixels) and dice loss of (B, T, H, W) mask logits,
  summed over clips and normalised (criterion.py:129-140, segmentation.py:125-158)."""
  logits, gt = logits.reshape(logits.shape[0], -1), gt.reshape(gt.shape[0], -1)
  focal = sigmoid_focal(logits, gt, alpha, gamma).mean(1).sum() / num_boxes
  dice = (1 - dice_coefficient(logits, gt, 1)).sum() / num_boxes
  return focal, dice


def layer_losses(pred_logits: jax.Array, pred_boxes: jax.Array, pred_masks: jax.Array,
                 pred_masks_low: jax.Array, query: jax.Array, targets: Mapping[str, jax.Array],
                 *, num_boxes: jax.Array, focal_alpha: float,
                 focal_gamma: float) -> dict[str, jax.Array]:
  """One decoder layer's unweighted loss terms for the matched queries (criterion.py:44-141).

  Args:
    pred_logits: (B, T, Q, 1) class logits.
    pred_boxes: (B, T, Q, 4) cxcywh in [0, 1].
    pred_masks: (B, T, H, W) stride-1 refined mask logits of query `query[b]`.
    pred_masks_low: (B, T, Q, H/2, W/2) stride-2 mask logits of every query.
    query: (B,) int, the matched query (`match`).
    targets: see the module docstring.
    num_boxes: the normaliser (`num_boxes`, all-reduced by the caller if need be).
    focal_alpha, focal_gamma: the focal terms' parameters.

  Returns:
    float32 scalars named as TERMS: focal class loss over every frame and query with target 1
    at the matched query on valid frames; L1 and 1 - GIoU of the matched boxes over all
    frames; focal and dice of `pred_masks` against the masks and of the matched query's
    `pred_masks_low` against their stride-2 samples. All divided by num_boxes.
  """
  if pred_masks.shape != targets["masks"].shape:
    raise ValueError(f"pred_masks {pred_masks.shape} must have the target masks' shape "
                     f"{targets['masks'].shape}")
  f32 = lambda x: x.astype(jnp.float32)
  logits, q = f32(pred_logits[..., 0]), pred_logits.shape[2]
  valid = targets["valid"]
  # The original's mean over the T*Q logits times T*Q (criterion.py:75, segmentation.py:158)
  # is their sum.
  hit = f32((jnp.arange(q) == query[:, None, None]) & valid[:, :, None])
  ce = sigmoid_focal(logits, hit, focal_alpha, focal_gamma).sum() / num_boxes

  boxes, gt_boxes = _matched(f32(pred_boxes), query), f32(targets["boxes"])
  bbox = jnp.abs(boxes - gt_boxes).sum() / num_boxes
  giou = (1 - generalized_box_iou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(gt_boxes))).sum()
  giou = giou / num_boxes

  low = _matched(f32(pred_masks_low), query)
  gt_low = _low_res_masks(targets["masks"], low.shape, "pred_masks_low")
  mask, dice = _mask_terms(f32(pred_masks), f32(targets["masks"]), num_boxes, focal_alpha,
                           focal_gamma)
  mask_low, dice_low = _mask_terms(low, gt_low, num_boxes, focal_alpha, focal_gamma)
  return dict(ce=ce, bbox=bbox, giou=giou, mask=mask, dice=dice, mask_low=mask_low,
              dice_low=dice_low)


def total_loss(layers: Sequence[Mapping[str, jax.Array]],
               weights: Mapping[str, float]) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The weighted sum of every layer's terms, the same weights for every layer
  (diffvos_cross.py:660-675, engine.py:70-71).

  Args:
    layers: `layer_losses` of each decoder layer, first to last.
    weights: a weight per name in TERMS (config.loss.weights).

  Returns:
    The total and the unweighted terms for logging, named as the original's loss dict
    without its `loss_` prefix: the last layer's as TERMS, layer i's before it with `_{i}`
    (criterion.py:190-199).
  """
  if set(weights) != set(TERMS):
    raise ValueError(f"loss weights {sorted(weights)} must name exactly the terms {TERMS}")
  named = {}
  for i, terms in enumerate(layers):
    suffix = "" if i == len(layers) - 1 else f"_{i}"
    named.update({name + suffix: terms[name] for name in TERMS})
  total = sum(weights[name] * terms[name] for terms in layers for name in TERMS)
  return total, named
