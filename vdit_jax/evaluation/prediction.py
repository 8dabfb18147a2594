"""The predict function evaluation calls: the one contract between a model and the evaluators.

  predict_fn(batch: dict[str, np.ndarray]) -> {"masks": array, "scores": array}

`batch` holds B windows of one shape (N, H, W), this process's rows of one evaluation step:
every field of a `data_pipelines.eval_windows` element but the ground truth (gt_mask,
gt_masks), stacked along a leading axis of B = config.eval.batch_per_device x
jax.local_device_count() (strings too: video_id, caption, ...), plus
  window_valid (B,) bool: False on filler rows, which stand for no window (a black video
    with caption ""); their outputs are ignored.
A model reads frames (B, N, H, W, 3) uint8, pad_mask (B, H, W) bool (True on padding),
frame_valid (B, N) bool (False on frames that pad a window), annotated (B, N) bool and the
caption's tokens (the fields `tokenize` adds). Every process calls predict_fn equally often,
with the same shapes in the same order, so the processes' rows can form one global batch
(`global_batch`) and collectives inside the model cannot hang; `local_rows` brings a global
result back to this process's rows.

A model that draws random numbers (VD-IT samples the VAE posterior) draws each window's from
`window_seeds(batch)`, a number per window from its identity alone: then results do not
depend on the batch a window lands in, and so not on the process count either.

It returns, for this process's rows in batch order (numpy or JAX arrays), with
config.eval.queries
  "best" (Ref-YouTube-VOS, Ref-DAVIS17; VD-IT inference_ytvos.py:213-219):
    masks (B, N, H, W) float: the mask probabilities (sigmoid applied) of the query whose
      mean class score (sigmoid) over the window's valid frames is highest, at the padded
      input resolution;
    scores (B,) float: that mean score.
  "all" (A2D-Sentences, JHMDB-Sentences, RefCOCO/+/g; VD-IT engine.py:231-237):
    masks (B, Q, N, H, W) float: every query's mask probabilities at the padded input
      resolution;
    scores (B, Q) float: every query's class score (sigmoid) at the annotated frame.
The evaluators crop the padding, resize to the original frame size and threshold
(vdit_jax.evaluation.original_size).
"""

from typing import Callable
import zlib

import jax
from jax.experimental import multihost_utils
import numpy as np

Batch = dict[str, np.ndarray]
PredictFn = Callable[[Batch], dict]
QUERIES = ("best", "all")


def _fail(message: str) -> None:
  raise ValueError(f"predict_fn broke its contract (vdit_jax/evaluation/prediction.py): "
                   f"{message}")


def check_outputs(outputs: dict, batch: Batch, queries: str) -> dict[str, np.ndarray]:
  """predict_fn's outputs for `batch` as float32 numpy, after checking keys, shapes, ranges.

  Raises:
    ValueError: naming what breaks the contract.
  """
  if queries not in QUERIES:
    raise ValueError(f"config.eval.queries must be one of {QUERIES}, got {queries!r}")
  if not isinstance(outputs, dict) or set(outputs) != {"masks", "scores"}:
    _fail(f"it must return a dict with keys 'masks' and 'scores', got "
          f"{sorted(outputs) if isinstance(outputs, dict) else type(outputs).__name__}")
  masks = np.asarray(outputs["masks"], np.float32)
  scores = np.asarray(outputs["scores"], np.float32)
  b, n, h, w = batch["frames"].shape[:4]
  q = masks.shape[1] if queries == "all" and masks.ndim == 5 else None
  want_masks = (b, n, h, w) if queries == "best" else (b, q, n, h, w)
  want_scores = (b,) if queries == "best" else (b, q)
  if masks.shape != want_masks or scores.shape != want_scores:
    shown = lambda shape: str(tuple("Q" if s is None else s for s in shape)).replace("'", "")
    _fail(f"with queries={queries!r} and frames {batch['frames'].shape}, masks must be "
          f"{shown(want_masks)} and scores {shown(want_scores)}, got {masks.shape} and "
          f"{scores.shape}")
  real = np.asarray(batch["window_valid"], bool)
  for name, value in (("masks", masks), ("scores", scores)):
    rows = value[real]
    if not np.all(np.isfinite(rows)):
      _fail(f"{name} of real windows (window_valid) hold NaN or infinite values")
    if rows.size and (rows.min() < 0 or rows.max() > 1):
      _fail(f"{name} must be probabilities in [0, 1], got values in [{rows.min()}, "
            f"{rows.max()}]")
  return {"masks": masks, "scores": scores}


def window_seeds(batch: Batch) -> np.ndarray:
  """(B,) uint32: a hash of each window's split, video_id, exp_id and window index."""
  fields = zip(*(np.asarray(batch[k]).tolist() for k in ("split", "video_id", "exp_id",
                                                          "window")))
  return np.array([zlib.crc32("\0".join(map(str, f)).encode()) for f in fields], np.uint32)


def global_batch(arrays: dict[str, np.ndarray], mesh: jax.sharding.Mesh,
                 axis: str) -> dict[str, jax.Array]:
  """This process's rows of each array as one global jax.Array sharded over `axis` of `mesh`
  (every process passes its rows; row order is process order)."""
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis))
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in arrays.items()}


def local_rows(arrays: dict[str, jax.Array], mesh: jax.sharding.Mesh,
               axis: str) -> dict[str, np.ndarray]:
  """This process's rows of global arrays sharded over `axis`, as numpy (global_batch's
  inverse)."""
  spec = jax.sharding.PartitionSpec(axis)
  return {k: np.asarray(multihost_utils.global_array_to_host_local_array(v, mesh, spec))
          for k, v in arrays.items()}
