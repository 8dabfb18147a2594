"""Pieces shared by every experiment config, and the `get_config(arg)` argument parser.

Numbers follow the original VD-IT code (github.com/buxiangzhiren/VD-IT): `opts.py` defaults
plus the flags its scripts pass (--with_box_refine --binary --freeze_text_encoder).
"""

import copy

import ml_collections
from ml_collections import config_dict

# ImageNet statistics the data pipeline normalises with; the backbone undoes them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Where `python -m vdit_jax.convert backbone` writes the converted frozen towers.
BACKBONE_DIR = "weights/backbone"


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses "tiny" / "tiny,eval_window=8" style config arguments (big_vision's habit).

  A bare word sets a bool default to True; "key=value" casts value to the default's type.
  Unknown keys are an error, so a typo in `--config=configs/x.py:tnyi` fails loudly.
  """
  parsed = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
    default = defaults[key]
    if not value:
      if not isinstance(default, bool):
        raise ValueError(f"config argument {key!r} needs a value ({key}=...)")
      parsed[key] = True
    elif isinstance(default, bool):
      parsed[key] = value.lower() in ("1", "true", "yes")
    else:
      parsed[key] = type(default)(value)
  return parsed


def model(weights_dir: str = BACKBONE_DIR) -> ml_collections.ConfigDict:
  """`config.model`: where the frozen towers come from, how they run, and the trainable parts.

  The towers come from `weights_dir` (made by `python -m vdit_jax.convert backbone`) or, when
  it is "", are built at random from the architectures in `random_towers` (the tiny variant).
  """
  return ml_collections.ConfigDict(dict(
      weights_dir=weights_dir,
      random_towers=ml_collections.ConfigDict(),
      towers=towers(),
      extractor=extractor(),
      head=head(),
      # The frames the head runs on: "all", or "annotated" (A2D / JHMDB clips have one
      # annotated frame, and the original runs its head on that one, diffvos_cross.py:221).
      head_frames="all",
  ))


def towers() -> ml_collections.ConfigDict:
  """Run-time settings of each frozen tower, the keyword arguments of its module
  (vdit_jax/towers.py); the architecture comes with the weights. The original runs fp32."""
  dtypes = dict(dtype="float32", param_dtype="float32")
  return ml_collections.ConfigDict(dict(
      # VD-IT skips the temporal layers for single-frame inputs (its
      # mymodels/unet_3d_blocks.py); the temporal convs' Dropout(0.1) stays active in
      # training because engine.py:31 puts the frozen UNet back in train mode.
      unet=dict(dtypes, remat=False, skip_temporal_if_single_frame=True, temporal_dropout=0.1),
      vae_encoder=dict(dtypes),
      clip_text=dict(dtypes, remat=False),
      clip_vision=dict(dtypes, remat=False),
      roberta=dict(dtypes, remat=False),
  ))


def extractor() -> ml_collections.ConfigDict:
  """The diffusion feature extractor's own settings, the keyword arguments of
  vdit_jax.models.extractor.FeatureExtractor (VD-IT Text-To-Video-Finetuning/
  train_itcross_pn.py FeatureExtractor); the pyramid's channels are `head.in_channels`, the
  frames' statistics `data.mean` / `data.std`."""
  return ml_collections.ConfigDict(dict(
      # The original samples the VAE posterior (not its mean), in training and inference.
      sample_latents=True,
      # The UNet runs once, at t=0 (train_itcross_pn.py:337-342): DDPMScheduler.add_noise
      # with ModelScope's scaled-linear betas.
      timestep=0,
      beta_start=0.00085,
      beta_end=0.012,
      num_train_timesteps=1000,
      # The learned noise is standardised per video ("video") or, as the original with its
      # one video per GPU, over the whole batch ("batch").
      noise_statistics="video",
      # Text-guided image projection (train_itcross_pn.py:49-152): 16-head bias-free cross
      # attention, FFN width 512, post-LayerNorms.
      fusion_heads=16,
      fusion_ffn_dim=512,
      fusion_ln_eps=1e-6,
  ))


def tiny_random_towers() -> ml_collections.ConfigDict:
  """Architectures of the random towers of the tiny variant: the real towers' structure (four
  UNet levels, the VAE's stride-4 tap after two resnets) at small widths, and the real
  vocabularies so the real tokenizers fit."""
  return ml_collections.ConfigDict(dict(
      unet=dict(block_out_channels=(32, 32, 64, 64), layers_per_block=1, attention_head_dim=8,
                norm_num_groups=8, cross_attention_dim=32),
      vae_encoder=dict(block_out_channels=(16, 16, 32, 32), layers_per_block=2,
                       norm_num_groups=8),
      clip_text=dict(vocab_size=49408, hidden_size=32, intermediate_size=64,
                     num_hidden_layers=2, num_attention_heads=2, hidden_act="gelu"),
      clip_vision=dict(hidden_size=48, intermediate_size=96, projection_dim=32,
                       num_hidden_layers=2, num_attention_heads=2, image_size=28,
                       patch_size=14, hidden_act="gelu"),
      roberta=dict(vocab_size=50265, hidden_size=32, intermediate_size=64,
                   num_hidden_layers=2, num_attention_heads=2),
  ))


def head() -> ml_collections.ConfigDict:
  """The SgMg / ReferFormer-style segmentation head: VD-IT's opts.py option names, plus the
  pyramid's channels (strides 4, 8, 16, 32; the extractor's act_postprocess outputs them)
  and RoBERTa's width."""
  return ml_collections.ConfigDict(dict(
      in_channels=(128, 256, 512, 1024),
      text_dim=768,
      hidden_dim=256,
      num_queries=5,
      num_classes=1,
      enc_layers=4,
      dec_layers=4,
      nheads=8,
      dim_feedforward=2048,
      dropout=0.1,
      num_feature_levels=4,
      enc_n_points=4,
      dec_n_points=4,
      with_box_refine=True,
      aux_loss=True,
      mask_dim=256,
      controller_layers=2,
      dynamic_mask_channels=16,
      rel_coord=True,
      text_dropout=0.1,
      text_ln_eps=1e-12,
  ))


def loss() -> ml_collections.ConfigDict:
  """Matching costs and loss weights (VD-IT opts.py --set_cost_*, *_loss_coef; weight_dict in
  models/diffvos_cross.py); the same weights for all 4 decoder layers."""
  return ml_collections.ConfigDict(dict(
      matcher=dict(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, cost_mask=2.0, cost_dice=5.0),
      weights=dict(ce=2.0, bbox=5.0, giou=2.0, mask=2.0, dice=5.0, mask_low=2.0, dice_low=5.0),
      focal_alpha=0.25,
      focal_gamma=2.0,
  ))


def add_training(config: ml_collections.ConfigDict, *, lr: float, epochs: int,
                 lr_drops: tuple[int, ...], shuffle_window: int = 1024) -> None:
  """The training fields shared by every trained config: data sampling, AdamW, schedule."""
  config.data.split = "train"
  config.data.batch_size = 2  # The original: 2 GPUs x 1 clip.
  config.data.shuffle_window = shuffle_window  # Samples per shuffle window.
  config.data.num_epochs = config_dict.placeholder(int)  # None: repeat forever.
  # Retries, at another anchor of the same expression, of a clip without a valid frame.
  config.data.max_resample = 10
  config.data.sampling = clip_sampling()
  config.data.augmentation = train_augmentation()
  config.data.pseudo_video = pseudo_video()
  # The static (H, W) shapes a batch is padded to (the smallest that holds all its clips):
  # landscape and portrait (max(scales), max_size) and the square one a batch of both needs,
  # multiples of 32 as the original's collate pads (VD-IT util/misc.py:302).
  config.data.buckets = ((512, 640), (640, 512), (640, 640))
  config.optimizer = optimizer(lr)
  config.schedule = schedule(epochs, lr_drops)
  config.loss = loss()
  # Trainable parameters to start from, with a fresh optimizer (RefCOCO pretraining ->
  # fine-tuning): another run's checkpoints/ directory (the latest step), checkpoints/<step>
  # or checkpoints/LATEST, or an export directory (WORKDIR/export, or VD-IT's release
  # converted by `python -m vdit_jax.convert vdit`).
  config.init_from = ""
  # Regexes on parameter paths (e.g. "class_embed") that keep their fresh initialisation
  # instead of init_from's values.
  config.init_skip = ()
  # This many non-finite steps in a row (loss or gradient NaN / inf, update skipped) stop
  # the run.
  config.max_nonfinite_in_row = 10
  # The dtype `--mode=export` writes the trainable parameters in: "float32" or "bfloat16".
  config.export_dtype = "float32"


def evaluation(split: str, *, queries: str, window: int, size_divisor: int,
               size_buckets: tuple[tuple[int, int], ...], frame_buckets: tuple[int, ...] = (),
               ground_truth: bool = False, **extra) -> ml_collections.ConfigDict:
  """The evaluation fields every config has (vdit_jax.evaluation.runner); `extra` adds the
  dataset's own."""
  return ml_collections.ConfigDict(dict(
      split=split,
      preprocessing=eval_preprocessing(window, size_divisor, frame_buckets, size_buckets,
                                       ground_truth),
      # The checkpoint --mode=eval restores: "" the workdir's latest, else a checkpoint path.
      checkpoint="",
      # Windows per device in each predict step.
      batch_per_device=1,
      # What the model returns per window (vdit_jax.evaluation.prediction): "best", the
      # masks of the query with the highest mean score over the window's valid frames (VD-IT
      # inference_ytvos.py:213-219), or "all" queries' masks and scores (engine.py:231-237).
      queries=queries,
      # Mask probabilities above it are foreground (VD-IT inference_ytvos.py:232).
      mask_threshold=0.5,
      # The VAE posterior's mean instead of a sample, which the original draws at inference
      # too (train_itcross_pn.py:265-281): reproducible, a deviation from the original.
      deterministic_latents=False,
      **extra,
  ))


def sentence_eval() -> ml_collections.ConfigDict:
  """A2D / JHMDB-Sentences evaluation: 5-frame clips around the annotated frame; mAP
  scores all queries, overall / mean IoU and P@K the top-scoring one. Their 320-pixel-high
  clips come out 360 high, up to 640 wide (A2D), or 360 x 480 (JHMDB's 320 x 240)."""
  return evaluation("test", queries="all", window=5, size_divisor=32,
                    size_buckets=((384, 480), (384, 640), (640, 384)))


def evaluator(dataset_config: ml_collections.ConfigDict, *, every_steps: int, num_videos: int,
              num_images: int = 4) -> ml_collections.ConfigDict:
  """One in-training evaluator of `config.evals` (vdit_jax.evaluation.in_training): the
  evaluated dataset's own data and eval fields (copies), how often, and on how much."""
  return ml_collections.ConfigDict(dict(
      data=copy.deepcopy(dataset_config.data),
      eval=copy.deepcopy(dataset_config.eval),
      # Train steps between evaluations (0: never).
      every_steps=every_steps,
      # The first videos (images) of the split evaluated (0: all), spread over the processes.
      num_videos=num_videos,
      # Mask overlays returned as images (for TensorBoard).
      num_images=num_images,
  ))


def optimizer(lr: float) -> ml_collections.ConfigDict:
  """AdamW over every trainable parameter, norms and biases included (VD-IT main.py:76-105)."""
  return ml_collections.ConfigDict(dict(
      lr=lr,
      weight_decay=5e-4,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      grad_clip_norm=0.1,
  ))


def schedule(epochs: int, lr_drops: tuple[int, ...]) -> ml_collections.ConfigDict:
  """MultiStepLR stepped per epoch: lr x `drop_factor` at each epoch in `lr_drops`; an epoch
  is the dataset's samples over the global batch size (vdit_jax.optim). max_steps > 0 stops
  after that many steps instead of after `epochs`, the drops staying where the epochs put
  them."""
  return ml_collections.ConfigDict(dict(epochs=epochs, lr_drops=lr_drops, drop_factor=0.1,
                                        max_steps=0))


def sharding() -> ml_collections.ConfigDict:
  """How parameters and batches are laid out on `config.mesh` (vdit_jax.sharding.Rules).

  rules: (regex on the parameter path, spec), the first full match wins; every parameter
    must match one. Paths join attribute names with "/" (`towers/unet/down_blocks/0/
    resnets/1/conv1/kernel`); the frozen towers live under `towers`. A spec is a tuple, the
    PartitionSpec itself (`()` replicates, `(None, "fsdp")` shards the second axis), or
    "largest:AXIS": the largest dimension that the mesh axis AXIS divides is sharded over
    it (the last of equal ones), for parameters of at least `min_shard_bytes`; smaller or
    indivisible ones are replicated (big_vision's fsdp rule). Optimizer state follows its
    parameter.
  batch_axes: the mesh axes the batch dimension is split over.
  """
  return ml_collections.ConfigDict(dict(
      rules=(("towers/.*", "largest:fsdp"), (".*", ())),
      min_shard_bytes=4 * 2**20,
      batch_axes=("data", "fsdp"),
  ))


def clip_sampling() -> ml_collections.ConfigDict:
  """The original's clip of T frames around an anchor (data_pipelines.sampling.ClipSampling):
  the anchor, one frame U{1..local_window} before and one after it, T - 3 global frames
  (VD-IT datasets/ytvos.py:111-140)."""
  return ml_collections.ConfigDict(dict(
      num_frames=5,
      local_window=3,
      reverse_prob=0.3,
  ))


def train_augmentation() -> ml_collections.ConfigDict:
  """The original's training resize / crop / flip ranges (data_pipelines.transforms.
  Augmentation; VD-IT datasets/ytvos.py:201 make_coco_transforms)."""
  return ml_collections.ConfigDict(dict(
      scales=(288, 320, 352, 392, 416, 448, 480, 512),
      max_size=640,
      crop_resize_scales=(400, 500, 600),
      crop_min_size=384,
      crop_max_size=600,
      select_prob=0.5,
      flip_prob=0.5,
  ))


def pseudo_video() -> ml_collections.ConfigDict:
  """How a single image (RefCOCO) becomes a clip (data_pipelines.transforms.PseudoVideo):
  the original's ImageToSeqAugmenter arguments (VD-IT datasets/refexp2seq.py)."""
  return ml_collections.ConfigDict(dict(
      perspective=0.08,
      rotate_degrees=20.0,
      translate=0.1,
      brightness=40,
      hue_saturation=5,
      motion_blur_prob=0.25,
      motion_blur_kernels=(9, 11),
      shuffle_frames=True,
  ))


def eval_preprocessing(window: int, size_divisor: int, frame_buckets: tuple[int, ...],
                       size_buckets: tuple[tuple[int, int], ...],
                       ground_truth: bool) -> ml_collections.ConfigDict:
  """Inference resize and shapes (data_pipelines.eval_windows.Preprocessing): shorter side
  360 (VD-IT inference_ytvos.py:44), longer at most 640, padding to a multiple of
  `size_divisor` and then to the smallest size bucket that holds the frames; frames in
  windows of `window` (0: the whole video in one window, its frame count padded to the
  smallest frame bucket that holds it)."""
  return ml_collections.ConfigDict(dict(
      short_side=360,
      max_size=640,
      size_divisor=size_divisor,
      window=window,
      frame_buckets=frame_buckets,
      size_buckets=size_buckets,
      # True: every window at the original's shape (its own length, padded to size_divisor
      # only): exact, but one compiled shape per distinct video length and size.
      exact_shapes=False,
      # Windows of videos with masks carry them (gt_masks), to score a split offline.
      ground_truth=ground_truth,
  ))


def text_inputs() -> ml_collections.ConfigDict:
  """Token lengths of the captions (vdit_jax.tokenizers.CaptionTokenizer), fixed so that the
  text towers compile once.

  CLIP: ModelScope's tokenizer length, 77, as the original pads (VD-IT
  Text-To-Video-Finetuning/train_itcross_pn.py:254). RoBERTa: the original pads to the
  longest caption of the batch (VD-IT models/text_encoder/tokenizer.py:146); referring
  expressions run to about 20 words (~25 tokens), so 48 leaves room for the long tail, and
  the tokenizer counts and logs the captions it truncates.
  """
  return ml_collections.ConfigDict(dict(
      clip_max_length=77,
      roberta_max_length=48,
  ))


def prediction() -> ml_collections.ConfigDict:
  """`python -m vdit_jax.predict` and `vdit_jax.predict.Predictor` on users' videos; the
  frames are resized and padded as `eval.preprocessing` says."""
  return ml_collections.ConfigDict(dict(
      # Frames per window: a longer video runs in windows of this many frames (its last
      # window is its last `window` frames), so memory does not grow with its length; 36 is
      # the original's Ref-DAVIS17 clip (VD-IT inference_davis.py) and the longest
      # Ref-YouTube-VOS valid video.
      window=36,
      # Expressions whose text-dependent work runs in one batch (the UNet sees window x
      # this many frames); more expressions run in further batches on the same encoding.
      expressions_per_step=4,
  ))


def base(dataset: str, raw_dir: str, *, seed: int = 42) -> ml_collections.ConfigDict:
  """Fields every config has; callers fill in training and evaluation."""
  config = ml_collections.ConfigDict()
  config.seed = seed
  # (axis name, size) of the device mesh, major to minor; one size may be -1 (the rest of
  # the devices). `data` and `fsdp` split the batch; `fsdp` also splits the frozen towers
  # (config.sharding); a `tensor` axis may be added for rules that name it.
  config.mesh = (("data", 1), ("fsdp", -1))
  config.sharding = sharding()
  config.data = ml_collections.ConfigDict(dict(
      dataset=dataset,
      raw_dir=raw_dir,
      shards_dir=f"data/shards/{dataset}",
      # The TFDS data dir of format "tfds" (python -m data_pipelines.build --format tfds).
      tfds_dir="data/tfds",
      # RefCOCO: the sub-datasets, each read from <shards_dir>/<subset>/<split> (TFDS: the
      # builder config <subset>).
      subsets=(),
      # "tfrecord", "array_record" (random access) or "tfds" (the TFDS dataset in tfds_dir:
      # the same records, read through tfds.data_source).
      format="tfrecord",
      # True: skip, count and log corrupt records, frames and masks instead of failing.
      skip_bad_records=False,
      # grain worker processes (0: decode in the calling process), and the batches each
      # prefetches.
      worker_count=4,
      worker_buffer_size=2,
      # TFRecord: shards read at once, interleaved; ArrayRecord: records read ahead, by as
      # many threads.
      cycle_length=4,
      mean=IMAGENET_MEAN,
      std=IMAGENET_STD,
      text=text_inputs(),
  ))
  config.model = model()
  config.predict = prediction()
  # Metrics (WORKDIR/metrics.jsonl, TensorBoard, the console line) every this many steps.
  config.log_every_steps = 50
  # Orbax checkpoints in WORKDIR/checkpoints/ (written asynchronously), the last
  # `keep_checkpoints` kept; the first, the last and a preempted step are always saved.
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  return config


def shrink_to_tiny(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The variant tests and the demo use: random tiny towers, synthetic data, a few steps.

  Keeps every field of the full config (so tests exercise the same code paths), shrinking
  sizes only.
  """
  config.data.shards_dir = f"data/synthetic_shards/{config.data.dataset}"
  config.data.tfds_dir = "data/synthetic_tfds"
  config.data.raw_dir = f"data/synthetic/{config.data.dataset}"
  config.data.worker_count = 0
  config.model.weights_dir = ""
  config.model.random_towers = tiny_random_towers()
  config.model.head.update(hidden_dim=32, num_queries=2, enc_layers=1, dec_layers=1, nheads=2,
                           dim_feedforward=64, mask_dim=32,
                           in_channels=(16, 32, 32, 64), text_dim=32)
  if "augmentation" in config.data:
    config.data.augmentation.update(scales=(64, 72), max_size=96, crop_resize_scales=(80,),
                                    crop_min_size=64, crop_max_size=80)
    config.data.buckets = ((96, 96),)
  if "schedule" in config:
    config.schedule.update(epochs=2, lr_drops=(1,))
  window = config.eval.preprocessing.window
  config.eval.preprocessing.update(short_side=64, max_size=96,
                                   window=min(window, 5) if window else 4,
                                   frame_buckets=(4, 8), size_buckets=((64, 96), (96, 64)))
  config.predict.update(window=4, expressions_per_step=2)
  config.log_every_steps = 1
  config.checkpoint_every_steps = 2
  config.sharding.min_shard_bytes = 1024
  return config
