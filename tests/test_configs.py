"""Every config loads, its tiny variant loads, and ytvos.py carries the paper's recipe."""

import importlib

import pytest
from flax import nnx

from configs import common
from vdit_jax import backbone_format, towers

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
def test_tiny_builds_random_towers_with_its_settings(name):
  """The tiny variant names its random towers' architectures; they build (abstractly) with
  the config's run-time settings, and the full config loads converted weights instead."""
  full, tiny = _get(name), _get(name, "tiny")
  assert full.model.weights_dir and not full.model.random_towers
  assert tiny.model.weights_dir == ""
  built = nnx.eval_shape(lambda: towers.random_towers(tiny.model.random_towers,
                                                      tiny.model.towers))
  assert set(built) == set(backbone_format.TOWERS)
  assert built["unet"].skip_temporal_if_single_frame
  widths = {n: m.config.hidden_size for n, m in built.items() if n in ("clip_text", "roberta")}
  assert widths["roberta"] == tiny.model.head.text_dim
  assert built["unet"].config.cross_attention_dim == widths["clip_text"]


def test_ytvos_is_the_papers_recipe():
  """The fields the code reads today, against the original: VD-IT opts.py defaults plus the
  flags of scripts/dist_train_ytvos_vdit.sh (--with_box_refine --binary
  --freeze_text_encoder, 2 GPUs x batch 1), datasets/ytvos.py (sampling, augmentation) and
  models/diffvos_cross.py (loss weights)."""
  c = _get("ytvos")
  assert c.seed == 42  # opts.py --seed
  clip_sampling = c.data.sampling
  assert clip_sampling.num_frames == 5  # opts.py --num_frames
  # datasets/ytvos.py:100-124: anchor +- U{1..3} plus num_frames - 3 global frames, 30%
  # reversal.
  assert clip_sampling.local_window == 3 and clip_sampling.reverse_prob == 0.3
  aug = c.data.augmentation  # datasets/ytvos.py:201-236 (make_coco_transforms).
  assert tuple(aug.scales) == (288, 320, 352, 392, 416, 448, 480, 512)
  assert aug.max_size == 640
  assert tuple(aug.crop_resize_scales) == (400, 500, 600)
  assert (aug.crop_min_size, aug.crop_max_size) == (384, 600)
  assert aug.select_prob == 0.5 and aug.flip_prob == 0.5
  assert c.data.batch_size == 2  # 2 GPUs x --batch_size 1.
  assert c.data.mean == (0.485, 0.456, 0.406) and c.data.std == (0.229, 0.224, 0.225)
  loss = c.loss  # opts.py --set_cost_* and the *_loss_coef defaults.
  assert dict(loss.matcher) == dict(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0,
                                    cost_mask=2.0, cost_dice=5.0)
  assert dict(loss.weights) == dict(ce=2.0, bbox=5.0, giou=2.0, mask=2.0, dice=5.0,
                                    mask_low=2.0, dice_low=5.0)
  assert (loss.focal_alpha, loss.focal_gamma) == (0.25, 2.0)
  unet = c.model.towers.unet  # fp32; train_itcross_pn.py loads the towers in fp32.
  assert (unet.dtype, unet.param_dtype, unet.temporal_dropout) == ("float32", "float32", 0.1)
  assert unet.skip_temporal_if_single_frame
  pre = c.eval.preprocessing  # inference_ytvos.py: Resize(360), padded to /16, whole videos.
  assert (pre.short_side, pre.size_divisor, pre.window) == (360, 16, 0)


def test_davis_windows_are_the_originals():
  # inference_davis.py: clips of at most crop_len=36 frames, padded to /16.
  pre = _get("davis").eval.preprocessing
  assert (pre.window, pre.size_divisor) == (36, 16)


def test_parse_arg_types_and_typos():
  parsed = common.parse_arg("tiny,window=8", tiny=False, window=4, name="x")
  assert parsed.tiny is True and parsed.window == 8 and parsed.name == "x"
  with pytest.raises(ValueError, match="unknown config argument 'tnyi'"):
    common.parse_arg("tnyi", tiny=False)
  with pytest.raises(ValueError, match="needs a value"):
    common.parse_arg("window", window=4)
