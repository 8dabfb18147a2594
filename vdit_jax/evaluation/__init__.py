"""Benchmark evaluation: the metrics and scoring commands (numpy, scipy, pycocotools and PIL
only), and the evaluation of a model's predict function on every benchmark (JAX for the
processes' lockstep).

  metrics.py            DAVIS region similarity J and boundary F-measure per frame
  davis_protocol.py     DAVIS per-object statistics, id matching and pooled tables
  davis.py              `python -m vdit_jax.evaluation.davis`: scores a DAVIS-layout results folder
  scored_masks.py       one referring sample: ground truth and scored candidate masks as COCO RLE
  coco_map.py           A2D / JHMDB segm mAP through pycocotools
  mask_iou.py           overall IoU, mean IoU and P@K of the top-scoring mask (A2D, JHMDB, RefCOCO)
  text_tables.py        figures as printed tables

  prediction.py         the predict-function contract between a model and the evaluators
  runner.py             `evaluate(config, workdir, predict_fn, ...)`: one benchmark split, any
                        number of processes, results.json and printed tables
  shape_batches.py      windows batched by shape in steps every process takes together
  assembly.py           per-window outputs gathered back into whole videos
  original_size.py      masks back at the original frame size (logits resized, then threshold)
  ytvos_submission.py   Ref-YouTube-VOS: Annotations/ PNGs, submission.zip, offline J&F
  davis_runs.py         Ref-DAVIS17: the 4 annotator runs as palette id maps, scored, their mean
  sample_benchmarks.py  A2D / JHMDB-Sentences (mAP, IoU, P@K) and RefCOCO/+/g (IoU per subset)
  overlay.py            a predicted mask drawn over its frame
  in_training.py        the evaluators of config.evals, called from the train loop
"""
