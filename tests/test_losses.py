"""Matching and losses vs torch re-statements of VD-IT's matcher and criterion, in float64.

The torch code below follows the original's functions step by step (VD-IT models/matcher.py,
models/criterion.py, models/segmentation.py, util/box_ops.py, util/misc.py's padding), written
for this test; torchvision's focal loss and GIoU are written out where the original calls or
copies them. The ground truth reaches the torch side as the original's targets carry it: one
unpadded mask tensor per clip, padded there as the original pads it, while the JAX side gets
masks already at the padded input size.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from configs import common
from tests import parity
from vdit_jax import losses

B, T, Q = 3, 3, 4
SIZES = ((50, 30), (40, 20), (33, 17))  # each clip's unpadded (h, w); padded to 64 x 32
PADDED = (64, 32)
VALID = {
    # Clip 0 misses the object in frame 1; clip 2 never shows it.
    "mixed": np.array([[1, 0, 1], [1, 1, 1], [0, 0, 0]], bool),
    "none": np.zeros((B, T), bool),
}
CONFIG = common.loss()
ALPHA, GAMMA = CONFIG.focal_alpha, CONFIG.focal_gamma


def _batch(valid: np.ndarray, seed: int = 0):
  """Predictions, the JAX targets and the original's per-clip targets for one batch. Query
  (b + 1) % Q's stride-2 masks lean towards the ground truth so the choice is not query 0."""
  rng = np.random.default_rng(seed)
  gt_clips, boxes = [], np.zeros((B, T, 4), np.float32)
  masks = np.zeros((B, T, *PADDED), bool)
  for b, (h, w) in enumerate(SIZES):
    clip = rng.random((T, h, w)) < 0.3
    clip[~valid[b]] = False
    gt_clips.append(clip)
    masks[b, :, :h, :w] = clip
    n = valid[b].sum()
    boxes[b, valid[b]] = np.concatenate([rng.uniform(0.3, 0.7, (n, 2)),
                                         rng.uniform(0.1, 0.5, (n, 2))], -1)
  masks_low = rng.normal(0, 3, (B, T, Q, PADDED[0] // 2, PADDED[1] // 2)).astype(np.float32)
  for b in range(B):
    masks_low[b, :, (b + 1) % Q] += 4 * (2 * masks[b, :, 1::2, 1::2] - 1)
  preds = dict(
      logits=rng.normal(0, 2, (B, T, Q, 1)).astype(np.float32),
      boxes=rng.uniform(0.05, 0.95, (B, T, Q, 4)).astype(np.float32),
      masks=rng.normal(0, 3, (B, T, *PADDED)).astype(np.float32),
      masks_low=masks_low)
  targets = dict(boxes=boxes, valid=valid, masks=masks, sizes=np.array(SIZES, np.int32))
  return preds, targets, gt_clips


# ---- torch: torchvision's formulas and the original's steps ----


def torch_focal(inputs, targets, alpha=ALPHA, gamma=GAMMA):
  """torchvision.ops.sigmoid_focal_loss with reduction="none" (torchvision/ops/focal_loss.py),
  as VD-IT models/segmentation.py:149-156 and models/matcher.py:30-37 write it."""
  prob = inputs.sigmoid()
  ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
  p_t = prob * targets + (1 - prob) * (1 - targets)
  return (alpha * targets + (1 - alpha) * (1 - targets)) * ce * (1 - p_t) ** gamma


def torch_dice(inputs, targets):
  """Row-wise (2 sum(p t) + 1) / (sum p + sum t + 1), VD-IT models/segmentation.py:125-129."""
  p, t = inputs.sigmoid().flatten(1), targets.flatten(1)
  return (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)


def torch_xyxy(b):
  cx, cy, w, h = b.unbind(-1)
  return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1)


def torch_giou(b1, b2, eps):
  """Pairwise (N, M) GIoU of xyxy boxes: torchvision.ops.generalized_box_iou
  (torchvision/ops/boxes.py) with eps = 0; VD-IT util/box_ops.py:44-85 with eps = 1e-6."""
  area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
  area2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
  wh = (torch.min(b1[:, None, 2:], b2[:, 2:]) - torch.max(b1[:, None, :2], b2[:, :2])).clamp(min=0)
  inter = wh[..., 0] * wh[..., 1]
  union = area1[:, None] + area2 - inter
  iou = (inter + eps) / (union + eps)
  wh = (torch.max(b1[:, None, 2:], b2[:, 2:]) - torch.min(b1[:, None, :2], b2[:, :2])).clamp(min=0)
  hull = wh[..., 0] * wh[..., 1]
  return iou - (hull - union + eps) / (hull + eps)


def torch_padded(gt_clips):
  """VD-IT util/misc.py:318-352 (nested_tensor_from_tensor_list, size_divisibility=32,
  split=False): zeros at the largest size rounded up to 32, each clip at the top left."""
  h = -(-max(c.shape[1] for c in gt_clips) // 32) * 32
  w = -(-max(c.shape[2] for c in gt_clips) // 32) * 32
  out = torch.zeros((len(gt_clips), T, h, w), dtype=torch.float64)
  for o, c in zip(out, gt_clips):
    o[:, :c.shape[1], :c.shape[2]] = torch.from_numpy(c)
  return out


def _torch(preds, targets, grad=False):
  out = {k: torch.tensor(v, dtype=torch.float64, requires_grad=grad) for k, v in preds.items()}
  boxes = torch.tensor(targets["boxes"], dtype=torch.float64)
  return out, boxes, torch.from_numpy(targets["valid"])


def torch_matcher(preds, targets, gt_clips, weights):
  """VD-IT models/matcher.py:94-168 per clip: (B, Q) cost and the argmin. On a clip without
  valid frames the original's torch.stack of no class costs fails; its class cost is 0 here."""
  out, gt_boxes, valid = _torch(preds, targets)
  gt = torch_padded(gt_clips)[:, :, 1::2, 1::2]
  costs = []
  for b in range(B):
    prob = out["logits"][b].sigmoid()
    cost_class = []
    for t in range(T):
      if not valid[b, t]:
        continue
      neg = (1 - ALPHA) * prob[t] ** GAMMA * -(1 - prob[t] + 1e-8).log()
      pos = ALPHA * (1 - prob[t]) ** GAMMA * -(prob[t] + 1e-8).log()
      cost_class.append(pos[:, [0]] - neg[:, [0]])
    cost_class = (torch.stack(cost_class).mean(0) if cost_class
                  else torch.zeros((Q, 1), dtype=torch.float64))
    cost_bbox = torch.stack([torch.cdist(out["boxes"][b, t], gt_boxes[b, t][None], p=1)
                             for t in range(T)]).mean(0)
    cost_giou = torch.stack([-torch_giou(torch_xyxy(out["boxes"][b, t]),
                                         torch_xyxy(gt_boxes[b, t][None]), 1e-6)
                             for t in range(T)]).mean(0)
    src = out["masks_low"][b].transpose(0, 1).flatten(1)  # (Q, T h w)
    tgt = gt[b].flatten()[None].expand(Q, -1)
    cost_mask = torch_focal(src, tgt).mean(1, keepdim=True)
    cost_dice = -torch_dice(src, tgt)[:, None]
    costs.append(weights["cost_class"] * cost_class + weights["cost_bbox"] * cost_bbox +
                 weights["cost_giou"] * cost_giou + weights["cost_mask"] * cost_mask +
                 weights["cost_dice"] * cost_dice)
  cost = torch.cat(costs, 1).T
  return cost.numpy(), cost.argmin(1).numpy()


def brute_force_choice(preds, targets, gt_clips, weights):
  """Each clip's query chosen by scoring the queries one at a time, term by term."""
  out, gt_boxes, valid = _torch(preds, targets)
  gt = torch_padded(gt_clips)[:, :, 1::2, 1::2]
  choice = []
  for b in range(B):
    scores = []
    for q in range(Q):
      p = out["logits"][b, :, q, 0].sigmoid()[valid[b]]
      per_frame = (ALPHA * (1 - p) ** GAMMA * -(p + 1e-8).log() -
                   (1 - ALPHA) * p ** GAMMA * -(1 - p + 1e-8).log())
      terms = dict(
          cost_class=per_frame.mean() if len(p) else 0.0,
          cost_bbox=(out["boxes"][b, :, q] - gt_boxes[b]).abs().sum(1).mean(),
          cost_giou=-torch.stack([torch_giou(torch_xyxy(out["boxes"][b, t, q][None]),
                                             torch_xyxy(gt_boxes[b, t][None]), 1e-6)[0, 0]
                                  for t in range(T)]).mean(),
          cost_mask=torch_focal(out["masks_low"][b, :, q], gt[b]).mean(),
          cost_dice=-torch_dice(out["masks_low"][b, :, q][None], gt[b][None])[0])
      scores.append(sum(weights[k] * float(v) for k, v in terms.items()))
    choice.append(int(np.argmin(scores)))
  return np.array(choice)


def torch_criterion(preds, targets, gt_clips, query, num_boxes, grad=False):
  """VD-IT models/criterion.py:44-141 for one layer, the matched stride-2 masks taken as
  models/diffvos_cross.py:381 takes them. Returns the terms and the torch predictions."""
  out, gt_boxes, valid = _torch(preds, targets, grad)
  indices = [(torch.tensor([q]), torch.tensor([0])) for q in query]
  batch_idx = torch.cat([torch.full_like(s, i) for i, (s, _) in enumerate(indices)])
  src_idx = torch.cat([s for s, _ in indices])

  # loss_labels: target 1 at (valid frame, matched query) of the (t q)-flattened logits.
  logits = out["logits"].flatten(1, 2)  # b (t q) 1
  onehot = torch.zeros_like(logits)
  for b, (q, _) in enumerate(indices):
    onehot[b, valid[b].nonzero().flatten() * Q + q, 0] = 1
  ce = torch_focal(logits, onehot).mean(1).sum() / num_boxes * logits.shape[1]

  # loss_boxes
  src_boxes = out["boxes"].transpose(1, 2)[batch_idx, src_idx].flatten(0, 1)
  tgt_boxes = gt_boxes.flatten(0, 1)
  bbox = F.l1_loss(src_boxes, tgt_boxes, reduction="none").sum() / num_boxes
  giou = (1 - torch.diag(torch_giou(torch_xyxy(src_boxes), torch_xyxy(tgt_boxes), 1e-6)))
  giou = giou.sum() / num_boxes

  # loss_masks
  gt = torch_padded(gt_clips)
  low = out["masks_low"].transpose(1, 2)[batch_idx, src_idx].flatten(1)
  gt_low, gt = gt[:, :, 1::2, 1::2].flatten(1), gt.flatten(1)
  masks = out["masks"].flatten(1)
  terms = dict(ce=ce, bbox=bbox, giou=giou,
               mask=torch_focal(masks, gt).mean(1).sum() / num_boxes,
               dice=(1 - torch_dice(masks, gt)).sum() / num_boxes,
               mask_low=torch_focal(low, gt_low).mean(1).sum() / num_boxes,
               dice_low=(1 - torch_dice(low, gt_low)).sum() / num_boxes)
  return terms, out


# ---- compiled JAX functions, shared ----


def _cost(weights, preds, targets):
  return losses.matching_cost(preds["logits"], preds["boxes"], preds["masks_low"], targets,
                              **weights, focal_alpha=ALPHA, focal_gamma=GAMMA)


def _layer(preds, query, targets, num_boxes):
  return losses.layer_losses(preds["logits"], preds["boxes"], preds["masks"],
                             preds["masks_low"], query, targets, num_boxes=num_boxes,
                             focal_alpha=ALPHA, focal_gamma=GAMMA)


def _weighted(preds, query, targets, num_boxes):
  return losses.total_loss([_layer(preds, query, targets, num_boxes)], CONFIG.weights)[0]


@pytest.fixture(scope="module")
def fns():
  preds, targets, _ = _batch(VALID["mixed"])
  weights = {k: np.float32(v) for k, v in CONFIG.matcher.items()}
  query, n = np.zeros(B, np.int32), np.float32(1)
  return dict(cost=parity.compiled(_cost, weights, preds, targets),
              layer=parity.compiled(_layer, preds, query, targets, n),
              grad=parity.compiled(jax.grad(_weighted), preds, query, targets, n))


# ---- tests ----


@pytest.mark.parametrize("valid", VALID)
@pytest.mark.parametrize("term", [None, *CONFIG.matcher])
def test_matching_cost_terms(fns, valid, term):
  """Each weighted cost term alone (term), and the config's sum (None), vs the torch matcher."""
  preds, targets, gt_clips = _batch(VALID[valid])
  weights = {k: (1.0 if k == term else 0.0) for k in CONFIG.matcher} if term else CONFIG.matcher
  cost = fns["cost"]({k: np.float32(v) for k, v in weights.items()}, preds, targets)
  ref, _ = torch_matcher(preds, targets, gt_clips, weights)
  assert cost.shape == (B, Q)
  np.testing.assert_allclose(cost, ref, rtol=1e-5, atol=1e-6, err_msg=f"cost {term or 'total'}")


@pytest.mark.parametrize("valid", VALID)
def test_match_is_the_cheapest_query(fns, valid):
  preds, targets, gt_clips = _batch(VALID[valid])
  weights = dict(CONFIG.matcher)
  cost = np.asarray(fns["cost"]({k: np.float32(v) for k, v in weights.items()}, preds, targets))
  _, ref_cost = np.sort(cost, 1)[:, :2].T
  assert np.all(ref_cost - cost.min(1) > 1e-2), "near-tie: the choice would be fragile"
  choice = np.asarray(losses.match(cost))
  assert choice.dtype == np.int32
  np.testing.assert_array_equal(choice, torch_matcher(preds, targets, gt_clips, weights)[1])
  np.testing.assert_array_equal(choice, brute_force_choice(preds, targets, gt_clips, weights))
  if valid == "mixed":
    np.testing.assert_array_equal(choice, [(b + 1) % Q for b in range(B)])


def test_matching_cost_takes_the_config_and_no_gradient():
  preds, targets, _ = _batch(VALID["mixed"])
  cost = lambda p: losses.matching_cost(p["logits"], p["boxes"], p["masks_low"], targets,
                                        **CONFIG.matcher, focal_alpha=ALPHA,
                                        focal_gamma=GAMMA).sum()
  grads = jax.grad(cost)(preds)
  assert all(not np.asarray(g).any() for g in grads.values())


@pytest.mark.parametrize("valid", VALID)
def test_num_boxes(valid):
  count = VALID[valid].sum()
  assert float(losses.num_boxes({"valid": VALID[valid]})) == max(count, 1)


@pytest.mark.parametrize("valid", VALID)
def test_layer_losses(fns, valid):
  """Every term vs the original's criterion, at the original's normaliser (5, or 1 when no
  frame is valid)."""
  preds, targets, gt_clips = _batch(VALID[valid])
  query = np.array([2, 0, 3], np.int32)
  n = losses.num_boxes(targets)
  got = fns["layer"](preds, query, targets, n)
  ref, _ = torch_criterion(preds, targets, gt_clips, query, max(VALID[valid].sum(), 1))
  assert set(got) == set(losses.TERMS)
  for k in losses.TERMS:
    np.testing.assert_allclose(float(got[k]), ref[k].item(), rtol=1e-5, err_msg=k)


@pytest.mark.parametrize("valid", VALID)
def test_gradients_match_torch(fns, valid):
  """The gradient of the config-weighted sum w.r.t. every prediction vs torch autograd."""
  preds, targets, gt_clips = _batch(VALID[valid])
  query = np.array([1, 3, 0], np.int32)
  n = max(VALID[valid].sum(), 1)
  grads = fns["grad"](preds, query, targets, np.float32(n))
  terms, out = torch_criterion(preds, targets, gt_clips, query, n, grad=True)
  sum(CONFIG.weights[k] * v for k, v in terms.items()).backward()
  for k, g in grads.items():
    assert np.isfinite(g).all(), k
    parity.assert_close(g, out[k].grad.numpy(), f"d/d {k}")


def test_degenerate_boxes_and_saturated_logits(fns):
  """Zero-size predicted boxes, one exactly on an invalid frame's zero box (0 / 0 without the
  original's 1e-6 terms), and logits of +-60: values as the original's, gradients finite."""
  preds, targets, gt_clips = _batch(VALID["mixed"])
  query = np.array([2, 0, 3], np.int32)
  preds["boxes"][0, 1, 2] = 0  # clip 0, frame 1 is invalid: ground truth is the zero box
  preds["boxes"][1, 0, 0, 2:] = 0
  preds["logits"][0, :, 2] = 60
  preds["logits"][1, :, 1] = -60
  preds["masks"][2] = np.where(targets["masks"][2], -60, 60)
  preds["masks_low"][0, :, 2] = 60
  got = fns["layer"](preds, query, targets, np.float32(5))
  ref, _ = torch_criterion(preds, targets, gt_clips, query, 5)
  for k in losses.TERMS:
    np.testing.assert_allclose(float(got[k]), ref[k].item(), rtol=1e-5, err_msg=k)
  grads = fns["grad"](preds, query, targets, np.float32(5))
  assert all(np.isfinite(g).all() for g in grads.values())
  cost = fns["cost"]({k: np.float32(v) for k, v in CONFIG.matcher.items()}, preds, targets)
  parity.assert_close(cost, torch_matcher(preds, targets, gt_clips, CONFIG.matcher)[0])


def test_giou_matches_torchvision_on_proper_boxes():
  """Away from degenerate boxes the original's 1e-6 terms stay within fp32 noise of
  torchvision's GIoU."""
  rng = np.random.default_rng(1)
  a, b = (np.concatenate([rng.uniform(0.2, 0.8, (16, 2)), rng.uniform(0.05, 0.6, (16, 2))],
                         -1).astype(np.float32) for _ in range(2))
  got = losses.generalized_box_iou(losses.cxcywh_to_xyxy(a), losses.cxcywh_to_xyxy(b))
  ta, tb = (torch_xyxy(torch.tensor(x, dtype=torch.float64)) for x in (a, b))
  parity.assert_close(got, torch.diag(torch_giou(ta, tb, 0.0)).numpy(), "giou")


def test_total_loss_is_the_original_weighted_sum():
  """Names and sum as the original's loss dict and weight_dict over 4 decoder layers
  (VD-IT models/criterion.py:183-199, models/diffvos_cross.py:660-675, engine.py:70-71)."""
  rng = np.random.default_rng(2)
  layers = [{k: jnp.float32(rng.uniform(0.1, 2)) for k in losses.TERMS} for _ in range(4)]
  total, named = losses.total_loss(layers, CONFIG.weights)
  loss_dict = {f"loss_{k}": float(v) for k, v in layers[-1].items()}
  for i, terms in enumerate(layers[:-1]):
    loss_dict.update({f"loss_{k}_{i}": float(v) for k, v in terms.items()})
  weight_dict = {"loss_ce": 2, "loss_bbox": 5, "loss_giou": 2, "loss_mask": 2, "loss_dice": 5,
                 "loss_mask_low": 2, "loss_dice_low": 5}
  weight_dict.update({f"{k}_{i}": v for i in range(3) for k, v in list(weight_dict.items())})
  assert {f"loss_{k}" for k in named} == set(loss_dict)
  np.testing.assert_allclose(float(total), sum(loss_dict[k] * weight_dict[k] for k in loss_dict),
                             rtol=1e-6)
  with pytest.raises(ValueError, match="loss weights"):
    losses.total_loss(layers, {"ce": 1.0})


def test_mismatched_mask_sizes_are_named():
  preds, targets, _ = _batch(VALID["mixed"])
  with pytest.raises(ValueError, match="pred_masks_low"):
    losses.matching_cost(preds["logits"], preds["boxes"], preds["masks_low"][..., :-1],
                         targets, **CONFIG.matcher, focal_alpha=ALPHA, focal_gamma=GAMMA)
  with pytest.raises(ValueError, match="pred_masks "):
    _layer({**preds, "masks": preds["masks"][:, :, :-2]}, np.zeros(B, np.int32), targets, 1.0)
