"""Every config loads, its tiny variant loads, and ytvos.py carries the paper's recipe."""

import importlib

import pytest

from configs import common

CONFIGS = ("ytvos", "davis", "a2d", "jhmdb", "refcoco")


def _get(name, arg=None):
  return importlib.import_module(f"configs.{name}").get_config(arg)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("arg", [None, "tiny"])
def test_config_loads(name, arg):
  config = _get(name, arg)
  assert config.data.dataset == name
  assert config.model.head.num_feature_levels == 4
  assert config.eval.mask_threshold == 0.5


@pytest.mark.parametrize("name", CONFIGS)
def test_tiny_is_small_and_needs_no_weights(name):
  full, tiny = _get(name), _get(name, "tiny")
  assert tiny.model.backbone.weights_dir == "" and full.model.backbone.weights_dir
  assert tiny.model.head.hidden_dim < full.model.head.hidden_dim
  assert tiny.data.raw_dir.startswith("data/synthetic/")


def test_ytvos_is_the_papers_recipe():
  """vdit-original.md §3.1 (head), §4 (losses), §5.2-5.3 (optimisation, sampling), §7."""
  c = _get("ytvos")
  assert c.seed == 42
  clip_sampling = c.data.sampling
  assert clip_sampling.num_frames == 5
  assert clip_sampling.local_window == 3
  assert clip_sampling.reverse_prob == 0.3
  aug = c.data.augmentation
  assert tuple(aug.scales) == (288, 320, 352, 392, 416, 448, 480, 512)
  assert aug.max_size == 640
  assert tuple(aug.crop_resize_scales) == (400, 500, 600)
  assert (aug.crop_min_size, aug.crop_max_size) == (384, 600)
  assert aug.select_prob == 0.5 and aug.flip_prob == 0.5
  assert c.data.batch_size == 2  # 2 GPUs x 1 clip.
  assert c.data.mean == (0.485, 0.456, 0.406) and c.data.std == (0.229, 0.224, 0.225)
  opt = c.optimizer
  assert (opt.lr, opt.weight_decay, opt.grad_clip_norm) == (5e-5, 5e-4, 0.1)
  assert (opt.b1, opt.b2, opt.eps) == (0.9, 0.999, 1e-8)
  assert c.schedule.epochs == 9
  assert tuple(c.schedule.lr_drops) == (6, 8) and c.schedule.drop_factor == 0.1
  head = c.model.head
  assert (head.hidden_dim, head.num_queries, head.num_classes) == (256, 5, 1)
  assert (head.enc_layers, head.dec_layers, head.nheads) == (4, 4, 8)
  assert (head.dim_feedforward, head.dropout) == (2048, 0.1)
  assert (head.num_feature_levels, head.enc_n_points, head.dec_n_points) == (4, 4, 4)
  assert head.with_box_refine and head.aux_loss and head.rel_coord
  assert (head.mask_dim, head.controller_layers, head.dynamic_mask_channels) == (256, 2, 16)
  assert (head.text_dropout, head.text_ln_eps) == (0.1, 1e-12)
  bb = c.model.backbone
  assert (bb.latent_scale, bb.timestep, bb.sample_latents) == (0.18215, 0, True)
  assert (bb.beta_start, bb.beta_end) == (0.00085, 0.012)
  assert bb.temporal_dropout == 0.1 and bb.skip_temporal_if_single_frame
  assert (bb.fusion_heads, bb.fusion_ffn_dim, bb.fusion_ln_eps) == (16, 512, 1e-6)
  assert bb.clip_max_length == 77
  assert tuple(bb.pyramid_channels) == (128, 256, 512, 1024)
  assert (bb.dtype, bb.param_dtype) == ("float32", "float32")
  loss = c.loss
  assert dict(loss.matcher) == dict(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0,
                                    cost_mask=2.0, cost_dice=5.0)
  assert dict(loss.weights) == dict(ce=2.0, bbox=5.0, giou=2.0, mask=2.0, dice=5.0,
                                    mask_low=2.0, dice_low=5.0)
  assert (loss.focal_alpha, loss.focal_gamma) == (0.25, 2.0)
  pre = c.eval.preprocessing
  assert (pre.short_side, pre.max_size, pre.size_divisor, pre.window) == (360, 640, 16, 0)


def test_a2d_and_davis_recipes():
  a2d = _get("a2d")
  assert a2d.optimizer.lr == 2.5e-5  # 1e-4 x 2 GPUs / 8 with pretrained weights.
  assert a2d.schedule.epochs == 6 and tuple(a2d.schedule.lr_drops) == (3, 5)
  davis = _get("davis")
  assert davis.eval.preprocessing.window == 36
  assert davis.eval.num_annotators == 4 and davis.eval.background_score == 0.1


def test_parse_arg_types_and_typos():
  parsed = common.parse_arg("tiny,window=8", tiny=False, window=4, name="x")
  assert parsed.tiny is True and parsed.window == 8 and parsed.name == "x"
  with pytest.raises(ValueError, match="unknown config argument 'tnyi'"):
    common.parse_arg("tnyi", tiny=False)
  with pytest.raises(ValueError, match="needs a value"):
    common.parse_arg("window", window=4)
