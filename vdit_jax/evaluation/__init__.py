"""Benchmark metrics and scoring commands; numpy, scipy, pycocotools and PIL only (no JAX).

  metrics.py         DAVIS region similarity J and boundary F-measure per frame
  davis_protocol.py  DAVIS per-object statistics, id matching and pooled tables
  davis.py           `python -m vdit_jax.evaluation.davis`: scores a DAVIS-layout results folder
  scored_masks.py    one referring sample: ground truth and scored candidate masks as COCO RLE
  coco_map.py        A2D / JHMDB segm mAP through pycocotools
  mask_iou.py        overall IoU, mean IoU and P@K of the top-scoring mask (A2D, JHMDB, RefCOCO)
"""
