"""`python -m vdit_jax.evaluation.davis` on a synthetic DAVIS tree.

The tree is data_pipelines.synthetic's DAVIS twin (ImageSets/2017, Annotations_unsupervised
with a void ring around every object; its last object is absent from the last frame).
Result folders are written here as palette PNGs with PIL; expected scores come from the
ground-truth PNGs read here with PIL (perfect predictions score 1; an empty prediction scores
J = F = 1 exactly in the frames where the object is absent and 0 elsewhere).
"""

import csv
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from data_pipelines import synthetic
from vdit_jax.evaluation import davis

NUM_FRAMES = 6
# Distinct colours for the first ids; PIL merges palette entries of equal colour on save.
_PALETTE = [(i * step) % 256 for i in range(256) for step in (67, 151, 97)]


@pytest.fixture(scope="module")
def davis_root(tmp_path_factory):
  root = tmp_path_factory.mktemp("davis")
  synthetic.write("davis", str(root), num_videos=2, num_frames=NUM_FRAMES, size=(48, 64))
  return str(root / "DAVIS")


def _ground_truth(davis_root, folder="Annotations_unsupervised"):
  """{sequence: (T, H, W) uint8 id maps} of the val set."""
  with open(os.path.join(davis_root, "ImageSets", "2017", "val.txt")) as f:
    sequences = f.read().split()
  gt = {}
  for seq in sequences:
    seq_dir = os.path.join(davis_root, folder, "480p", seq)
    gt[seq] = np.stack([np.asarray(Image.open(os.path.join(seq_dir, name)))
                        for name in sorted(os.listdir(seq_dir))])
  return gt


def _write_results(out, gt, transform):
  """Writes transform(ground-truth ids of one sequence) as <out>/<seq>/<%05d>.png."""
  for seq, ids in gt.items():
    os.makedirs(os.path.join(out, seq), exist_ok=True)
    for t, frame in enumerate(transform(ids)):
      image = Image.fromarray(frame.astype(np.uint8), mode="P")
      image.putpalette(_PALETTE)
      image.save(os.path.join(out, seq, f"{t:05d}.png"))
  return str(out)


def _permuted_with_spurious(ids):
  """Ground truth with its ids reversed, void painted over, and a spurious id K + 1."""
  num = int(np.where(ids[0] == 255, 0, ids[0]).max())
  lookup = np.zeros(256, np.uint8)
  lookup[1:num + 1] = np.arange(num, 0, -1)
  lookup[255] = 1  # void pixels count for nothing, whatever they hold
  pred = lookup[ids]
  pred[:, :3, :4] = num + 1
  return pred


def _read_csv(path):
  with open(path, newline="") as f:
    return list(csv.reader(f))


def test_permuted_ids_and_a_spurious_id_score_exactly_one(davis_root, tmp_path, capsys):
  gt = _ground_truth(davis_root)
  results = _write_results(tmp_path / "res", gt, _permuted_with_spurious)
  assert davis.main(["--davis_root", davis_root, "--results", results]) == 0
  rows = _read_csv(os.path.join(results, "global_results-val.csv"))
  assert rows == [["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall",
                   "F-Decay"], ["1.00000"] * 3 + ["0.00000"] + ["1.00000"] * 2 + ["0.00000"]]
  rows = _read_csv(os.path.join(results, "per-sequence_results-val.csv"))
  names = [f"{seq}_{k}" for seq, ids in gt.items()
           for k in range(1, ids[0][ids[0] < 255].max() + 1)]
  assert rows == [["Sequence", "J-Mean", "F-Mean"]] + [[n, "1.00000", "1.00000"] for n in names]
  assert "J&F-Mean" in capsys.readouterr().out


def test_stale_csvs_are_recomputed(davis_root, tmp_path):
  results = _write_results(tmp_path / "res", _ground_truth(davis_root), _permuted_with_spurious)
  for name in ("global_results-val.csv", "per-sequence_results-val.csv"):
    with open(os.path.join(results, name), "w") as f:
      f.write("J&F-Mean,J-Mean\n0.12345,0.12345\n")
  assert davis.main(["--davis_root", davis_root, "--results", results]) == 0
  assert _read_csv(os.path.join(results, "global_results-val.csv"))[1][0] == "1.00000"
  assert len(_read_csv(os.path.join(results, "per-sequence_results-val.csv"))) == 5


def test_binary_0_255_masks_are_refused(davis_root, tmp_path, capsys):
  gt = _ground_truth(davis_root)
  results = _write_results(tmp_path / "res", gt, _permuted_with_spurious)
  seq = next(iter(gt))
  path = os.path.join(results, seq, "00002.png")
  Image.fromarray(np.where(gt[seq][2] == 1, 255, 0).astype(np.uint8), mode="L").save(path)
  assert davis.main(["--davis_root", davis_root, "--results", results]) == 1
  err = capsys.readouterr().err
  assert f"error: {path}: a binary mask saved as 0/255" in err
  assert not os.path.exists(os.path.join(results, "global_results-val.csv"))


@pytest.mark.parametrize("image, message", [
    (Image.new("RGB", (64, 48)), "3-channel image; DAVIS masks are single-channel id maps"),
    (Image.new("L", (32, 48)), "size 32x48 differs from the ground truth's 64x48"),
])
def test_malformed_result_images_are_refused(davis_root, tmp_path, capsys, image, message):
  gt = _ground_truth(davis_root)
  results = _write_results(tmp_path / "res", gt, _permuted_with_spurious)
  path = os.path.join(results, next(iter(gt)), "00004.png")
  image.save(path)
  assert davis.main(["--davis_root", davis_root, "--results", results]) == 1
  assert f"error: {path}: {message}" in capsys.readouterr().err


def test_missing_results_are_named(davis_root, tmp_path, capsys):
  gt = _ground_truth(davis_root)
  first, second = list(gt)
  results = _write_results(tmp_path / "res", gt, _permuted_with_spurious)
  os.remove(os.path.join(results, first, "00003.png"))
  assert davis.main(["--davis_root", davis_root, "--results", results]) == 1
  assert f"lacks 1 result frames (one PNG per ground-truth frame): {first}/00003.png" in (
      capsys.readouterr().err)
  shutil.rmtree(os.path.join(results, second))
  assert davis.main(["--davis_root", davis_root, "--results", results]) == 1
  assert f"lacks 1 of the 2 sequences: {second}" in capsys.readouterr().err


def _absent_share(gt):
  """Per ground-truth object (id order, sequences in order): share of frames it is absent in,
  which is an empty prediction's J-Mean and F-Mean."""
  shares = []
  for ids in gt.values():
    for k in range(1, ids[0][ids[0] < 255].max() + 1):
      shares.append(np.mean([not (frame == k).any() for frame in ids]))
  return np.array(shares)


def test_annotator_runs_and_their_mean(davis_root, tmp_path, capsys):
  gt = _ground_truth(davis_root)
  runs = [_write_results(tmp_path / "anno_0", gt, _permuted_with_spurious),
          _write_results(tmp_path / "anno_1", gt, np.zeros_like)]
  out = str(tmp_path / "scores")
  args = ["--davis_root", davis_root, "--results", runs[0], "--results", runs[1]]
  assert davis.main(args) == 1
  assert "several --results need --out" in capsys.readouterr().err
  assert davis.main(args + ["--out", out]) == 0
  assert "mean of 2 runs" in capsys.readouterr().out
  empty = _absent_share(gt)
  assert 0 < empty.mean() < 1  # the synthetic twin's last object leaves in the last frame
  run1 = _read_csv(os.path.join(out, "anno_1", "per-sequence_results-val.csv"))[1:]
  np.testing.assert_allclose([[float(j), float(f)] for _, j, f in run1],
                             np.stack([empty, empty], 1), atol=5e-6)
  mean = _read_csv(os.path.join(out, "global_results-val.csv"))
  # J&F and J-Mean of the mean: (1 + mean share) / 2.
  np.testing.assert_allclose([float(v) for v in mean[1][:2]], [(1 + empty.mean()) / 2] * 2,
                             atol=5e-6)
  assert _read_csv(os.path.join(out, "anno_0", "global_results-val.csv"))[1][0] == "1.00000"


def test_semi_supervised_drops_first_and_last_frames(davis_root, tmp_path):
  root = str(tmp_path / "DAVIS")
  shutil.copytree(davis_root, root)
  results = str(tmp_path / "res")

  def wrong_ends(ids):
    pred = np.where(ids == 255, 0, ids)
    pred[[0, -1]] = 0
    return pred

  _write_results(results, _ground_truth(root), wrong_ends)
  args = ["--davis_root", root, "--results", results, "--task", "semi-supervised"]
  assert davis.main(args) == 1  # no Annotations/480p yet
  shutil.copytree(os.path.join(root, "Annotations_unsupervised"), os.path.join(root, "Annotations"))
  assert davis.main(args) == 0
  assert _read_csv(os.path.join(results, "global_results-val.csv"))[1][0] == "1.00000"
  assert davis.main(args[:4]) == 0
  assert float(_read_csv(os.path.join(results, "global_results-val.csv"))[1][0]) < 1
