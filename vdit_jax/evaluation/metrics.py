"""DAVIS region similarity J and boundary F-measure, per frame.

The definitions are the DAVIS 2017 toolkit's (davisvideochallenge/davis2017-evaluation
`davis2017/metrics.py`, copied as VD-IT `davis2017/metrics.py`), reproduced exactly:

  J = |P & G| / |P | G| over the non-void pixels; 1 when the union is empty.
  F = 2 p r / (p + r) of the boundary maps of P and G (void pixels zeroed first), where
      p = share of P's boundary within `radius` of G's boundary, r the same the other way round,
      radius = ceil(bound_th * sqrt(H^2 + W^2)) pixels (a disk); an empty boundary map counts
      as p = 1 (P's) or r = 1 (G's), so two empty maps give F = 1 and one empty map F = 0.

Masks come as (T, H, W) stacks. The pairwise forms score every (predicted object, ground-truth
object) pair of two id maps at once, as the DAVIS unsupervised protocol's matching needs;
boundary maps and their search trees are then built once per object, not once per pair.
"""

import itertools
import math

import numpy as np
from scipy import spatial

DEFAULT_BOUND_TH = 0.008


def boundary_radius(height: int, width: int, bound_th: float = DEFAULT_BOUND_TH) -> int:
  """The boundary tolerance in pixels (VD-IT davis2017/metrics.py:77-78).

  bound_th < 1 is a fraction of the image diagonal, rounded up; bound_th >= 1 is pixels.
  """
  if bound_th >= 1:
    if bound_th != int(bound_th):
      raise ValueError(f"bound_th >= 1 is a radius in pixels and must be whole, got {bound_th}")
    return int(bound_th)
  return math.ceil(bound_th * math.sqrt(height * height + width * width))


def boundary_map(masks: np.ndarray) -> np.ndarray:
  """One-pixel boundaries of (..., H, W) bool masks, the BSDS `seg2bmap` construction.

  A pixel is a boundary pixel iff it differs from one of its east, south or south-east
  neighbours that exist (VD-IT davis2017/metrics.py:122-178): neighbours outside the image are
  absent, so a mask touching the border has no boundary along it, the last row only compares
  east, the last column only south, and the bottom-right pixel is never a boundary.
  """
  masks = np.asarray(masks, bool)
  bmap = np.zeros_like(masks)
  bmap[..., :, :-1] |= masks[..., :, :-1] ^ masks[..., :, 1:]
  bmap[..., :-1, :] |= masks[..., :-1, :] ^ masks[..., 1:, :]
  bmap[..., :-1, :-1] |= masks[..., :-1, :-1] ^ masks[..., 1:, 1:]
  return bmap


def _one_hot(ids: np.ndarray, num: int) -> np.ndarray:
  """(H, W) ids -> (num, H, W) bool; object k is id k + 1, other ids are background."""
  return ids[None] == np.arange(1, num + 1)[:, None, None]


def _check_ids(pred_ids: np.ndarray, gt_ids: np.ndarray, void: np.ndarray | None) -> np.ndarray:
  """Shape checks; returns the void stack (all False when None)."""
  if pred_ids.ndim != 3 or pred_ids.shape != gt_ids.shape:
    raise ValueError(f"prediction {pred_ids.shape} and ground truth {gt_ids.shape} must be "
                     "(T, H, W) stacks of one shape")
  if void is None:
    return np.zeros(gt_ids.shape, bool)
  if void.shape != gt_ids.shape:
    raise ValueError(f"void {void.shape} must have the ground truth's shape {gt_ids.shape}")
  return np.asarray(void, bool)


def pairwise_region_similarity(pred_ids: np.ndarray, gt_ids: np.ndarray, num_pred: int,
                               num_gt: int, void: np.ndarray | None = None) -> np.ndarray:
  """J of every (predicted, ground-truth) object pair in every frame.

  Args:
    pred_ids: (T, H, W) int id maps; predicted object k is id k + 1 (k < num_pred).
    gt_ids: (T, H, W) int id maps; ground-truth object k is id k + 1 (k < num_gt).
    num_pred, num_gt: object counts; ids above them count as background.
    void: (T, H, W) bool pixels left out of every count, or None.

  Returns:
    (num_pred, num_gt, T) float64.
  """
  void = _check_ids(pred_ids, gt_ids, void)
  cells = (num_pred + 1) * (num_gt + 1)
  j = np.zeros((num_pred, num_gt, gt_ids.shape[0]))
  for t in range(gt_ids.shape[0]):
    # A joint histogram of (pred id, gt id), void pixels in an extra bin, gives every
    # intersection; its marginals give the areas.
    pred = np.where(pred_ids[t] <= num_pred, pred_ids[t], 0).astype(np.int32)
    joint = pred * (num_gt + 1) + np.where(gt_ids[t] <= num_gt, gt_ids[t], 0)
    joint[void[t]] = cells
    counts = np.bincount(joint.ravel(), minlength=cells + 1)[:cells]
    counts = counts.reshape(num_pred + 1, num_gt + 1)
    inter = counts[1:, 1:]
    union = counts[1:].sum(1, keepdims=True) + counts[:, 1:].sum(0, keepdims=True) - inter
    j[:, :, t] = np.divide(inter, union, out=np.ones(inter.shape), where=union != 0)
  return j


def pairwise_boundary_f_measure(pred_ids: np.ndarray, gt_ids: np.ndarray, num_pred: int,
                                num_gt: int, void: np.ndarray | None = None,
                                bound_th: float = DEFAULT_BOUND_TH) -> np.ndarray:
  """F of every (predicted, ground-truth) object pair in every frame.

  Arguments as `pairwise_region_similarity`; void pixels are zeroed in both masks before their
  boundaries are taken. Returns (num_pred, num_gt, T) float64.
  """
  keep = ~_check_ids(pred_ids, gt_ids, void)
  num_frames, height, width = gt_ids.shape
  radius = boundary_radius(height, width, bound_th)
  f = np.zeros((num_pred, num_gt, num_frames))
  for t in range(num_frames):
    pred = [np.argwhere(b) for b in boundary_map(_one_hot(pred_ids[t], num_pred) & keep[t])]
    gt = [np.argwhere(b) for b in boundary_map(_one_hot(gt_ids[t], num_gt) & keep[t])]
    pred_trees, gt_trees = [spatial.cKDTree(p) for p in pred], [spatial.cKDTree(g) for g in gt]
    for i, j in itertools.product(range(num_pred), range(num_gt)):
      # An empty boundary map gives precision (prediction's) or recall (ground truth's) 1; the
      # other one is then 0 unless both are empty (VD-IT davis2017/metrics.py:100-111).
      precision = _share_within(pred[i], gt_trees[j], radius)
      recall = _share_within(gt[j], pred_trees[i], radius)
      total = precision + recall
      f[i, j, t] = 2 * precision * recall / total if total else 0.0
  return f


def _share_within(points: np.ndarray, tree: spatial.cKDTree, radius: int) -> float:
  """Share of `points` (N, 2) within `radius` of a point of `tree`; 1 when N is 0.

  Being within `radius` of a boundary pixel is being in that boundary map dilated by the disk
  {dy^2 + dx^2 <= radius^2}, the toolkit's cv2.dilate with skimage.morphology.disk(radius). The
  squared distances are integers, so a bound of radius + 1e-6 includes exactly radius^2 and
  excludes radius^2 + 1 (whose root exceeds radius by more than 1 / (2 radius + 1)).
  """
  if not len(points):
    return 1.0
  if not tree.n:
    return 0.0
  distances, _ = tree.query(points, distance_upper_bound=radius + 1e-6)
  return np.count_nonzero(np.isfinite(distances)) / len(points)


def _as_ids(mask: np.ndarray) -> np.ndarray:
  return np.asarray(mask, bool).astype(np.uint8)


def region_similarity(pred: np.ndarray, gt: np.ndarray,
                      void: np.ndarray | None = None) -> np.ndarray:
  """J per frame of (T, H, W) masks (non-zero = foreground); void: (T, H, W) or None -> (T,)."""
  return pairwise_region_similarity(_as_ids(pred), _as_ids(gt), 1, 1, void)[0, 0]


def boundary_f_measure(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None,
                       bound_th: float = DEFAULT_BOUND_TH) -> np.ndarray:
  """F per frame of (T, H, W) masks (non-zero = foreground); void: (T, H, W) or None -> (T,)."""
  return pairwise_boundary_f_measure(_as_ids(pred), _as_ids(gt), 1, 1, void, bound_th)[0, 0]
