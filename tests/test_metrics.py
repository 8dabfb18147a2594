"""DAVIS J and F, the DAVIS per-object protocol, COCO segm mAP and top-1 IoU metrics.

References: hand-computed values on tiny hand-drawn masks (every expected number is derived
in a comment from the definitions, independently of the code), pycocotools' COCOeval run
directly on a COCO set built here, and MTTR's mask IoU formula (VD-IT datasets/a2d_eval.py:29-34)
written out in torch.
"""

import contextlib
import io

import numpy as np
import pytest
import torch
from pycocotools import coco
from pycocotools import cocoeval
from pycocotools import mask as mask_utils

from vdit_jax import errors
from vdit_jax.evaluation import coco_map
from vdit_jax.evaluation import davis_protocol
from vdit_jax.evaluation import mask_iou
from vdit_jax.evaluation import metrics
from vdit_jax.evaluation.scored_masks import ScoredMasks


def _box(shape, rows, cols):
  mask = np.zeros(shape, bool)
  mask[rows[0]:rows[1] + 1, cols[0]:cols[1] + 1] = True
  return mask


# --- radius and boundary maps ---------------------------------------------------------------

@pytest.mark.parametrize("height, width, radius", [
    (480, 854, 8),    # 0.008 * 979.64 = 7.837 -> 8
    (720, 1280, 12),  # 0.008 * 1468.6 = 11.749 -> 12
    (240, 320, 4),    # 0.008 * 400 = 3.2 -> 4
    (20, 20, 1),      # 0.008 * 28.28 = 0.226 -> 1
])
def test_boundary_radius(height, width, radius):
  assert metrics.boundary_radius(height, width) == radius


def test_boundary_radius_in_pixels_when_at_least_one():
  assert metrics.boundary_radius(480, 854, bound_th=3) == 3
  with pytest.raises(ValueError, match="whole"):
    metrics.boundary_radius(480, 854, bound_th=2.5)


def test_boundary_map_of_a_square():
  # 2x2 square at rows/cols 2-3 of a 6x6 image: the row and column before it (background)
  # and its last row and column are boundary; its interior pixel (2, 2) is not.
  expected = {(1, 1), (1, 2), (1, 3), (2, 1), (2, 3), (3, 1), (3, 2), (3, 3)}
  bmap = metrics.boundary_map(_box((6, 6), (2, 3), (2, 3)))
  assert set(map(tuple, np.argwhere(bmap))) == expected


def test_boundary_map_ignores_the_image_border():
  # Half-plane touching the right border (columns 3-4 of 4x5): only column 2, in all rows.
  bmap = metrics.boundary_map(_box((4, 5), (0, 3), (3, 4)))
  assert set(map(tuple, np.argwhere(bmap))) == {(0, 2), (1, 2), (2, 2), (3, 2)}
  assert not metrics.boundary_map(np.ones((4, 5), bool)).any()
  assert not metrics.boundary_map(np.zeros((4, 5), bool)).any()
  # Only the bottom-right pixel set: it is never a boundary (no east or south neighbour);
  # (2, 3) sees it south-east, (2, 4) south (last column), (3, 3) east (last row).
  bmap = metrics.boundary_map(_box((4, 5), (3, 3), (4, 4)))
  assert set(map(tuple, np.argwhere(bmap))) == {(2, 3), (2, 4), (3, 3)}


# --- J ---------------------------------------------------------------------------------------

def test_region_similarity_cases():
  shape = (8, 8)
  gt = np.stack([np.zeros(shape, bool),                 # both empty
                 _box(shape, (0, 1), (0, 1)),           # disjoint
                 _box(shape, (0, 1), (0, 1)),           # prediction empty
                 np.zeros(shape, bool),                 # ground truth empty
                 _box(shape, (0, 3), (0, 3))])          # 16 px vs 8 px inside: 8 / 16
  pred = np.stack([np.zeros(shape, bool), _box(shape, (5, 6), (5, 6)), np.zeros(shape, bool),
                   _box(shape, (2, 3), (2, 3)), _box(shape, (0, 1), (0, 3))])
  np.testing.assert_array_equal(metrics.region_similarity(pred, gt), [1, 0, 0, 0, 0.5])


def test_region_similarity_leaves_out_void():
  # gt rows 0-1 cols 0-3 (8 px), pred rows 0-1 cols 2-5 (8 px): I = 4, U = 12. Void over
  # cols 3-4 of row 0 removes one intersection pixel (0, 3) and one pred-only pixel (0, 4):
  # I = 3, U = 10.
  gt, pred = _box((4, 6), (0, 1), (0, 3)), _box((4, 6), (0, 1), (2, 5))
  void = _box((4, 6), (0, 0), (3, 4))
  assert metrics.region_similarity(pred[None], gt[None])[0] == 4 / 12
  assert metrics.region_similarity(pred[None], gt[None], void[None])[0] == 3 / 10
  # Everything under void: the union is empty, J = 1.
  assert metrics.region_similarity(pred[None], gt[None], np.ones((1, 4, 6), bool))[0] == 1


# --- F ---------------------------------------------------------------------------------------

def test_boundary_f_measure_empty_and_full_cases():
  # 48x85 canvas (radius 1); a 10x20 box. Empty and full masks have no boundary pixels.
  shape = (48, 85)
  empty, full = np.zeros(shape, bool), np.ones(shape, bool)
  box = _box(shape, (10, 19), (30, 49))
  pairs = [(empty, empty, 1.0),  # both boundary maps empty: p = r = 1
           (box, empty, 0.0),    # ground truth empty: p = 0, r = 1
           (empty, box, 0.0),    # prediction empty: p = 1, r = 0
           (full, full, 1.0),
           (box, full, 0.0),     # full ground truth has no boundary
           (full, box, 0.0),
           (full, empty, 1.0)]   # both boundaries empty: F = 1 although J = 0
  pred = np.stack([p for p, _, _ in pairs])
  gt = np.stack([g for _, g, _ in pairs])
  np.testing.assert_array_equal(metrics.boundary_f_measure(pred, gt),
                                [f for _, _, f in pairs])
  assert metrics.region_similarity(full[None], empty[None])[0] == 0


def test_boundary_f_measure_of_shifted_squares():
  # 20x20 canvas, radius ceil(0.008 * 28.3) = 1 (the disk is the pixel and its 4 neighbours).
  # A 5x5 square at rows/cols 5-9 has as boundary the 20-pixel outline of rows 4-9, cols 4-9.
  shape = (20, 20)
  gt = _box(shape, (5, 9), (5, 9))
  # Shifted right by 1: outline rows 4-9, cols 5-10; each of its pixels is on or next to the
  # ground truth's outline, and vice versa: F = 1, while J = 20 / 30.
  shift1 = _box(shape, (5, 9), (6, 10))
  # Shifted right by 2: outline rows 4-9, cols 6-11. Within distance 1 of the ground truth's
  # outline: top row cols 6-10 (5), bottom row cols 6-10 (5), left column rows 5 and 8 (2);
  # not the right column nor the corners at col 11: 12 of 20, p = 0.6, and r = 0.6 by
  # symmetry: F = 0.6, J = 15 / 35.
  shift2 = _box(shape, (5, 9), (7, 11))
  pred = np.stack([shift1, shift2])
  gt2 = np.stack([gt, gt])
  np.testing.assert_allclose(metrics.boundary_f_measure(pred, gt2), [1.0, 0.6], rtol=1e-15)
  np.testing.assert_allclose(metrics.region_similarity(pred, gt2), [20 / 30, 15 / 35],
                             rtol=1e-15)
  # With a 2-pixel tolerance every outline pixel of the 2-shift is within distance 2 (the
  # disk includes distance exactly 2; the corner (4, 11) is 2 from (4, 9)).
  assert metrics.boundary_f_measure(shift2[None], gt[None], bound_th=2)[0] == 1.0


def test_boundary_f_measure_zeroes_void_first():
  # The prediction adds a 2x2 blob far from the object, entirely void: with void both J and F
  # see the ground truth only. Without void, the blob's outline (the 8-pixel ring of rows
  # and cols 14-16) is unmatched: p = 20 / 28, r = 1, F = 2p / (p + 1) = 40 / 48.
  shape = (20, 20)
  gt = _box(shape, (5, 9), (5, 9))
  blob = _box(shape, (15, 16), (15, 16))
  pred = gt | blob
  void = _box(shape, (14, 17), (14, 17))
  assert metrics.boundary_f_measure(pred[None], gt[None], void[None])[0] == 1.0
  assert metrics.region_similarity(pred[None], gt[None], void[None])[0] == 1.0
  np.testing.assert_allclose(metrics.boundary_f_measure(pred[None], gt[None])[0], 40 / 48,
                             rtol=1e-15)


def test_pairwise_scores_every_pair():
  # Two objects in id maps; pred id 1 = gt object 2's square, pred id 2 = gt object 1's.
  shape = (1, 20, 20)
  gt_ids = np.zeros(shape, np.uint8)
  gt_ids[0][_box(shape[1:], (2, 6), (2, 6))] = 1
  gt_ids[0][_box(shape[1:], (10, 14), (10, 14))] = 2
  pred_ids = np.zeros(shape, np.uint8)
  pred_ids[0][_box(shape[1:], (10, 14), (10, 14))] = 1
  pred_ids[0][_box(shape[1:], (2, 6), (2, 6))] = 2
  j = metrics.pairwise_region_similarity(pred_ids, gt_ids, 3, 2)
  f = metrics.pairwise_boundary_f_measure(pred_ids, gt_ids, 3, 2)
  # Pred object 3 (id 3) is absent: empty against non-empty, J = F = 0.
  expected = np.array([[0, 1], [1, 0], [0, 0]], float)[..., None]
  np.testing.assert_array_equal(j, expected)
  np.testing.assert_array_equal(f, expected)


# --- DAVIS per-object statistics and matching -------------------------------------------------

@pytest.mark.parametrize("values, expected", [
    # T = 10: bin edges round(linspace(1, 10, 5)) - 1 = [0, 2, 5, 7, 9]; first bin v[0:3]
    # (mean 1), last bin v[7:10] (mean 0).
    ([1, 1, 1, 0, 0, 0, 0, 0, 0, 0], (0.3, 0.3, 1.0)),
    # T = 5: edges [0, 1, 2, 3, 4]; recall counts only > 0.5 (1 of 5);
    # decay = mean(1, .5) - mean(.4, 0) = .55.
    ([1, 0.5, 0.2, 0.4, 0], (0.42, 0.2, 0.55)),
    # T = 7: linspace(1, 7, 5) = [1, 2.5, 4, 5.5, 7] rounds half up to [1, 3, 4, 6, 7], edges
    # [0, 2, 3, 5, 6]; first bin v[0:3] (mean 2/3), last bin v[5:7] (mean 0).
    ([1, 1, 0, 0, 0, 0, 0], (2 / 7, 2 / 7, 2 / 3)),
    ([0.7], (0.7, 1.0, 0.0)),
])
def test_statistics(values, expected):
  stats = davis_protocol.statistics(np.array(values))
  np.testing.assert_allclose((stats.mean, stats.recall, stats.decay), expected, rtol=1e-14)


def test_match_objects_maximises_the_total():
  # Greedy would take (0, 0) = .9 then (1, 1) = .1 (total 1.0); the optimum is (0, 1) + (1, 0)
  # = .8 + .85 = 1.65. Prediction 2 is spare.
  score = np.array([[0.9, 0.8], [0.85, 0.1], [0.0, 0.0]])
  j = np.repeat(score[..., None], 3, axis=2)
  f = np.repeat(score[..., None] * 0.5, 3, axis=2)
  np.testing.assert_array_equal(davis_protocol.match_objects(j, f), [1, 0])


def _two_object_sequence(num_frames=6, shape=(24, 32)):
  gt = np.zeros((num_frames, *shape), np.uint8)
  gt[:, 2:8, 2:8] = 1
  gt[:, 12:20, 14:26] = 2
  gt[:, 1, 2:8] = davis_protocol.VOID_ID  # A void row above object 1.
  return gt


def test_unsupervised_permuted_ids_and_a_spurious_one_score_one():
  gt = _two_object_sequence()
  pred = np.zeros_like(gt)
  pred[gt == 1], pred[gt == 2] = 3, 1
  pred[:, 20:23, 0:4] = 2  # spurious object
  pred[:, 1, 2:8] = 3  # over void: ignored
  objects = davis_protocol.score_sequence("seq", gt, pred)
  assert [o.name for o in objects] == ["seq_1", "seq_2"]
  for o in objects:
    assert (o.j.mean, o.f.mean, o.j.recall, o.f.recall, o.j.decay) == (1, 1, 1, 1, 0)


def test_object_absent_from_the_first_frame_is_not_scored():
  gt = _two_object_sequence()
  gt[0][gt[0] == 2] = 0
  objects = davis_protocol.score_sequence("seq", gt, np.where(gt == 255, 0, gt))
  assert [o.name for o in objects] == ["seq_1"]


def test_semi_supervised_ignores_first_and_last_frames():
  # One object, prediction empty in frames 0 and 5, exact elsewhere. Semi-supervised scores
  # frames 1-4 only: 1. Unsupervised scores all six: J = F = 4/6 (empty vs object: 0).
  gt = np.zeros((6, 16, 16), np.uint8)
  gt[:, 4:10, 4:10] = 1
  pred = gt.copy()
  pred[[0, 5]] = 0
  [semi] = davis_protocol.score_sequence("s", gt, pred, "semi-supervised")
  [unsup] = davis_protocol.score_sequence("s", gt, pred, "unsupervised")
  assert (semi.j.mean, semi.f.mean) == (1, 1)
  np.testing.assert_allclose((unsup.j.mean, unsup.f.mean), (4 / 6, 4 / 6), rtol=1e-15)


def test_sequence_refuses_too_many_ids():
  gt = _two_object_sequence()
  pred = np.where(gt == 255, 0, gt)
  pred[0, 0, 0] = 21
  with pytest.raises(errors.UserError, match="seq: predicted ids go up to 21.*at most 20"):
    davis_protocol.score_sequence("seq", gt, pred)
  pred[0, 0, 0] = 3
  with pytest.raises(errors.UserError, match="up to 3 but the first ground-truth frame has 2"):
    davis_protocol.score_sequence("seq", gt, pred, "semi-supervised")


def test_pooled_and_averaged_tables():
  def obj(name, jm, fm, jr=1.0, jd=0.0):
    return davis_protocol.ObjectScores(name, davis_protocol.Statistics(jm, jr, jd),
                                       davis_protocol.Statistics(fm, 1.0, 0.0))
  # Objects pool over sequences: J-Mean = (0.2 + 0.4 + 0.9) / 3 = 0.5, F-Mean = 0.7,
  # J&F = 0.6, J-Recall = (0 + 1 + 1) / 3, J-Decay = (0.3 + 0 + 0) / 3.
  run1 = davis_protocol.pooled_tables([obj("a_1", 0.2, 0.5, jr=0.0, jd=0.3),
                                       obj("a_2", 0.4, 0.7), obj("b_1", 0.9, 0.9)])
  expected = {"J&F-Mean": 0.6, "J-Mean": 0.5, "J-Recall": 2 / 3, "J-Decay": 0.1,
              "F-Mean": 0.7, "F-Recall": 1.0, "F-Decay": 0.0}
  assert list(run1.global_row) == list(davis_protocol.GLOBAL_COLUMNS)
  np.testing.assert_allclose([run1.global_row[c] for c in expected], list(expected.values()),
                             rtol=1e-14)
  run2 = davis_protocol.pooled_tables([obj("a_1", 0.4, 0.5), obj("a_2", 0.4, 0.5),
                                       obj("b_1", 0.4, 0.5)])
  mean = davis_protocol.average_tables([run1, run2])
  # Mean of the runs: J-Mean (0.5 + 0.4) / 2, J&F (0.6 + 0.45) / 2; rows by name.
  np.testing.assert_allclose((mean.global_row["J-Mean"], mean.global_row["J&F-Mean"]),
                             (0.45, 0.525), rtol=1e-14)
  assert mean.per_object[0][0] == "a_1"
  np.testing.assert_allclose(mean.per_object[0][1:], (0.3, 0.5), rtol=1e-14)
  with pytest.raises(ValueError, match="different objects"):
    davis_protocol.average_tables([run1, davis_protocol.pooled_tables([obj("c_1", 1, 1)])])


# --- COCO segm mAP ----------------------------------------------------------------------------

def _ap_samples():
  """Two samples with hand-known IoUs (see test_segm_ap_hand_computed)."""
  shape = (10, 10)
  gt_a, gt_b = _box(shape, (0, 4), (0, 9)), _box(shape, (5, 9), (0, 9))  # 50 px each
  b_partial = np.zeros(shape, bool)
  b_partial[5:8] = True  # rows 5-7 of gt_b (30 px) and (8, 0): 31 px, IoU 31 / 50
  b_partial[8, 0] = True
  a = ScoredMasks.from_arrays("a", gt_a, np.stack([gt_a, gt_b]), [0.9, 0.1])
  b = ScoredMasks.from_arrays("b", gt_b, np.stack([b_partial, gt_b]), [0.8, 0.05])
  return [a, b]


def test_segm_ap_hand_computed():
  # Detections by score: a0 (IoU 1), b0 (IoU 31/50 = .62), a1 (IoU 0), b1 (IoU 1, but only
  # once b0 failed). Thresholds .50, .55, .60 (<= .62): TP TP FP FP -> AP 1. The other 7:
  # TP FP FP TP -> recall .5 .5 .5 1, precision 1 .5 .33 .5 -> interpolated 1 .5 .5 .5 ->
  # 51 recall points at 1 and 50 at .5: AP 76/101. Top-1 (a0, b0): TP FP -> AP 51/101.
  samples = _ap_samples()
  assert coco_map.segm_ap(samples)["mAP 0.5:0.95"] == pytest.approx(
      (3 + 7 * 76 / 101) / 10, abs=1e-12)
  top1 = coco_map.segm_ap(samples, top1=True)
  assert top1["top-1 mAP 0.5:0.95"] == pytest.approx((3 + 7 * 51 / 101) / 10, abs=1e-12)
  assert top1["top-1 AP 0.5"] == 1 and top1["top-1 AP 0.75"] == pytest.approx(51 / 101)


def _pycocotools_stats(gt_masks, candidates):
  """COCOeval run directly: gt_masks {id: (H, W)}, candidates {id: [(mask, score), ...]}."""
  def rle(mask):
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
  with contextlib.redirect_stdout(io.StringIO()):
    gt = coco.COCO()
    gt.dataset = {
        "images": [{"id": i, "height": m.shape[0], "width": m.shape[1]}
                   for i, m in gt_masks.items()],
        "annotations": [{"id": n + 1, "image_id": i, "category_id": 1, "segmentation": rle(m),
                         "area": float(m.sum()), "iscrowd": 0}
                        for n, (i, m) in enumerate(gt_masks.items())],
        "categories": [{"id": 1, "name": "x"}]}
    gt.createIndex()
    dets = gt.loadRes([{"image_id": i, "category_id": 1, "segmentation": rle(m), "score": s}
                       for i, cands in candidates.items() for m, s in cands])
    evaluation = cocoeval.COCOeval(gt, dets, "segm")
    evaluation.params.useCats = 0
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
  return evaluation.stats[:6]


def test_segm_ap_equals_pycocotools():
  rng = np.random.default_rng(0)
  gt_masks, candidates, samples = {}, {}, []
  for n in range(12):
    shape = (int(rng.integers(20, 40)), int(rng.integers(20, 40)))
    gt = _box(shape, sorted(rng.integers(0, shape[0], 2)), sorted(rng.integers(0, shape[1], 2)))
    masks = np.stack([gt ^ (rng.random(shape) < p) for p in (0.02, 0.1, 0.3, 0.5, 0.7)])
    scores = np.round(rng.random(5), 1)  # rounding makes ties
    image_id = f"v_{n}_f_1_i_0"
    gt_masks[image_id] = gt
    candidates[image_id] = list(zip(masks, scores))
    samples.append(ScoredMasks.from_arrays(image_id, gt, masks, scores))
  ours = coco_map.segm_ap(samples)
  np.testing.assert_array_equal([ours[k] for k in coco_map.AP_LABELS],
                                _pycocotools_stats(gt_masks, candidates))
  # Top-1: the highest score, the last one among ties.
  top = {i: [max(reversed(c), key=lambda ms: ms[1])] for i, c in candidates.items()}
  ours = coco_map.segm_ap(samples, top1=True)
  np.testing.assert_array_equal([ours["top-1 " + k] for k in coco_map.AP_LABELS],
                                _pycocotools_stats(gt_masks, top))


# --- top-1 IoU metrics -----------------------------------------------------------------------

def _mttr_iou(pred, gt):
  """MTTR metrics.py compute_mask_iou (= VD-IT datasets/a2d_eval.py:29-34) in torch."""
  outputs, labels = torch.tensor(pred[None]).int(), torch.tensor(gt[None]).int()
  intersection = (outputs & labels).float().sum((1, 2))
  union = (outputs | labels).float().sum((1, 2))
  return ((intersection + 1e-6) / (union + 1e-6)).item(), intersection.item(), union.item()


def _masks_with_counts(inter, union, size=(10, 12)):
  """(top mask, ground truth) with the given intersection and union."""
  flat_gt, flat_pred = np.zeros(size[0] * size[1], bool), np.zeros(size[0] * size[1], bool)
  flat_gt[:union] = True
  flat_pred[union - inter:union] = True
  return flat_pred.reshape(size), flat_gt.reshape(size)


def test_iou_metrics_hand_computed():
  # (I, U): (50, 100) -> IoU exactly 0.5 in float32 (not > 0.5); (3, 5) -> float32 0.6000000238
  # (> 0.6); (0, 0) -> (0 + 1e-6) / (0 + 1e-6) = 1; (30, 40) -> 0.75.
  masks = [_masks_with_counts(i, u) for i, u in [(50, 100), (3, 5), (0, 0), (30, 40)]]
  # A lower-scoring exact candidate that must not be chosen.
  samples = [ScoredMasks.from_arrays(f"s{n}", gt, np.stack([gt, pred]), [0.1, 0.9])
             for n, (pred, gt) in enumerate(masks)]
  got = mask_iou.iou_metrics(samples)
  # P@0.5: 3 of 4 (0.6, 1, 0.75); P@0.6: 3 (0.6000000238 counts); P@0.7: 2; P@0.8, P@0.9: 1.
  assert [got[f"P@{k}"] for k in mask_iou.PRECISION_THRESHOLDS] == [0.75, 0.75, 0.5, 0.25, 0.25]
  assert got["overall_iou"] == 83 / 145
  ious = [_mttr_iou(pred, gt)[0] for pred, gt in masks]
  assert ious[0] == 0.5 and ious[1] > 0.6 and ious[2] == 1.0
  assert got["mean_iou"] == np.mean(ious)


def test_iou_metrics_match_mttr_in_torch():
  rng = np.random.default_rng(1)
  samples, ious, inters, unions = [], [], [], []
  for n in range(30):
    gt = rng.random((9, 11)) < rng.random()
    masks = np.stack([gt ^ (rng.random(gt.shape) < p) for p in (0.05, 0.2, 0.6)])
    scores = np.round(rng.random(3), 1)
    samples.append(ScoredMasks.from_arrays(f"s{n}", gt, masks, scores))
    # MTTR: sorted(..., key=score)[-1], the last of tied top scores.
    top = sorted(range(3), key=lambda k: scores[k])[-1]
    iou, inter, union = _mttr_iou(masks[top], gt)
    ious.append(iou)
    inters.append(inter)
    unions.append(union)
  got = mask_iou.iou_metrics(samples)
  for k in mask_iou.PRECISION_THRESHOLDS:
    assert got[f"P@{k}"] == np.mean([iou > k for iou in ious])
  assert got["overall_iou"] == sum(inters) / sum(unions)
  assert got["mean_iou"] == np.mean(ious)


def test_empty_against_empty_is_iou_one_but_coco_iou_zero():
  empty = np.zeros((6, 6), bool)
  sample = ScoredMasks.from_arrays("e", empty, empty[None], [0.5])
  assert mask_iou.iou_metrics([sample])["P@0.9"] == 1.0
  assert coco_map.segm_ap([sample])["mAP 0.5:0.95"] == 0.0


def test_scored_masks_checks():
  with pytest.raises(ValueError, match="sizes"):
    ScoredMasks.from_arrays("x", np.zeros((4, 4)), np.zeros((1, 4, 5)), [1.0])
  with pytest.raises(ValueError, match="1 masks and 2 scores"):
    ScoredMasks.from_arrays("x", np.zeros((4, 4)), np.zeros((1, 4, 4)), [1.0, 2.0])
