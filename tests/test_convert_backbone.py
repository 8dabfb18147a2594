"""The backbone CLI end to end on tiny checkpoints laid out like the real hub repositories."""

import dataclasses
import functools
import json
import os
import re
import shutil

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import tokenizers
import torch
import transformers
from flax import nnx

from vdit_jax import pretrained, towers
from vdit_jax import tokenizers as vdit_tokenizers
from vdit_jax.convert import __main__ as cli
from vdit_jax.convert import backbone, core
from vdit_jax.convert import diffusers as dconv
from vdit_jax.convert import transformers as tconv

import parity

TEXTS = ["hello world!", "Hello, hello hell", "the hello " * 30]


def _write_tokenizers(clip_dir, roberta_dir):
  """Tiny byte-level BPE vocabularies; ModelScope's tokenizer pads with "!"."""
  chars = sorted(tokenizers.pre_tokenizers.ByteLevel.alphabet())
  clip_vocab = chars + [c + "</w>" for c in chars] + [
      "he", "ll", "hell", "hello</w>", "<|startoftext|>", "<|endoftext|>"]
  roberta_vocab = ["<s>", "<pad>", "</s>", "<unk>"] + chars + ["Ġt", "he", "Ġthe", "<mask>"]
  for directory, vocab, merges in ((clip_dir, clip_vocab, ["h e", "l l", "he ll", "hell o</w>"]),
                                   (roberta_dir, roberta_vocab, ["Ġ t", "h e", "Ġt he"])):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
      json.dump({token: i for i, token in enumerate(vocab)}, f)
    with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
      f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
  with open(os.path.join(clip_dir, "special_tokens_map.json"), "w", encoding="utf-8") as f:
    json.dump({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>", "pad_token": "!"}, f)

# Non-trivial values everywhere (norm scales and biases included) so mix-ups show.
_randomise = functools.partial(parity.randomized, std=0.1)


def _write_sources(root):
  """The three source directories (tiny random models) and the torch models behind them."""
  torch.manual_seed(0)
  ms = os.path.join(root, "modelscope")
  unet = _randomise(diffusers.UNet3DConditionModel(
      sample_size=8, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
      up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), block_out_channels=(16, 32),
      layers_per_block=1, norm_num_groups=8, cross_attention_dim=16, attention_head_dim=8))
  vae = _randomise(diffusers.AutoencoderKL(
      down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
      block_out_channels=(8, 8, 16), layers_per_block=2, latent_channels=4, norm_num_groups=4))
  text = dict(vocab_size=600, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
              num_attention_heads=2, max_position_embeddings=77, hidden_act="gelu",
              bos_token_id=598, eos_token_id=599)
  clip_text = _randomise(transformers.CLIPTextModel(transformers.CLIPTextConfig(**text)))
  # laion/CLIP-ViT-H-14 ships a whole CLIPModel; the converter takes its vision half.
  clip = _randomise(transformers.CLIPModel(transformers.CLIPConfig(
      text_config=text, projection_dim=8,
      vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, image_size=28, patch_size=14,
                         hidden_act="gelu", projection_dim=8))))
  # roberta-base is a masked-LM checkpoint: `roberta.` prefix, an lm_head, no pooler.
  roberta = _randomise(transformers.RobertaForMaskedLM(transformers.RobertaConfig(
      vocab_size=300, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
      num_attention_heads=2, max_position_embeddings=100)))
  unet.save_pretrained(os.path.join(ms, "unet"))
  vae.save_pretrained(os.path.join(ms, "vae"))
  clip_text.save_pretrained(os.path.join(ms, "text_encoder"))
  clip.save_pretrained(os.path.join(root, "clip_vision"))
  roberta.save_pretrained(os.path.join(root, "roberta"))
  _write_tokenizers(os.path.join(ms, "tokenizer"), os.path.join(root, "roberta"))
  sources = {"modelscope": ms, "clip_vision": os.path.join(root, "clip_vision"),
             "roberta": os.path.join(root, "roberta")}
  models = {"unet": unet, "vae": vae, "clip_text": clip_text, "clip": clip, "roberta": roberta}
  return sources, models


def _cli_args(sources, out, *extra):
  return ["backbone", "--modelscope", sources["modelscope"], "--clip-vision",
          sources["clip_vision"], "--roberta", sources["roberta"], "--out", str(out), *extra]


def _params(module) -> dict:
  return {path: np.asarray(var[...]) for path, var in nnx.to_flat_state(nnx.state(module,
                                                                                   nnx.Param))}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
  return _write_sources(str(tmp_path_factory.mktemp("hub")))


@pytest.fixture(scope="module")
def converted(sources, tmp_path_factory):
  out = tmp_path_factory.mktemp("converted") / "backbone"
  assert cli.main(_cli_args(sources[0], out)) == 0
  return str(out)


def _settings(dtype="float32", param_dtype="float32", **options):
  """Run-time settings of every tower, as `config.model.towers` holds them."""
  dtypes = dict(dtype=dtype, param_dtype=param_dtype)
  return {"vae_encoder": dtypes, "clip_text": dict(dtypes, **options),
          "clip_vision": dict(dtypes, **options), "roberta": dict(dtypes, **options),
          "unet": dict(dtypes, **options)}


@pytest.fixture(scope="module")
def loaded(converted):
  return pretrained.load_backbone(converted, _settings())


def _torch_count(*modules) -> int:
  return sum(p.numel() for m in modules for p in m.parameters())


def test_layout_and_manifest(sources, converted):
  (source_dirs, models), out = sources, converted
  with open(os.path.join(out, "manifest.json"), encoding="utf-8") as f:
    manifest = json.load(f)
  assert manifest["dtype"] == "float32"
  assert list(manifest["towers"]) == ["vae_encoder", "clip_text", "clip_vision", "roberta",
                                      "unet"]
  expected = {
      "unet": _torch_count(models["unet"]),
      "vae_encoder": _torch_count(models["vae"].encoder, models["vae"].quant_conv),
      "clip_text": _torch_count(models["clip_text"]),
      "clip_vision": _torch_count(models["clip"].vision_model, models["clip"].visual_projection),
      "roberta": _torch_count(models["roberta"].roberta),
  }
  assert {n: t["parameters"] for n, t in manifest["towers"].items()} == expected
  assert manifest["towers"]["unet"]["weights"] == os.path.join(
      source_dirs["modelscope"], "unet", "diffusion_pytorch_model.safetensors")
  assert manifest["versions"]["jax"] == jax.__version__
  for name in manifest["towers"]:
    assert os.path.isfile(os.path.join(out, name, "config.json"))
    assert os.path.isdir(os.path.join(out, name, "params"))
  assert sorted(manifest["tokenizers"]) == ["clip", "roberta"]
  assert not [n for n in os.listdir(os.path.dirname(out)) if n.startswith(".")]


def test_loaded_params_equal_the_in_memory_converters(sources, loaded):
  models = sources[1]
  reference = {
      "unet": dconv.unet3d_from_diffusers(models["unet"]),
      "vae_encoder": dconv.vae_encoder_from_diffusers(models["vae"]),
      "clip_text": tconv.clip_text_from_transformers(models["clip_text"]),
      "clip_vision": tconv.clip_vision_from_transformers(models["clip"]),
      "roberta": tconv.roberta_from_transformers(models["roberta"], add_pooling_layer=False),
  }
  for name, module in loaded.items():
    got, want = _params(module), _params(reference[name])
    assert got.keys() == want.keys(), name
    for path in want:
      assert got[path].dtype == np.float32
      np.testing.assert_array_equal(got[path], want[path], err_msg=f"{name} {path}")
  # Dropout RNG state is real, and the modules come back in eval mode like the converters'.
  rng_state = jax.tree.leaves(nnx.state(loaded["unet"], nnx.RngState))
  assert rng_state and all(isinstance(x, jax.Array) for x in rng_state)


def test_clip_text_output_close_to_torch(sources, loaded):
  """One forward through a loaded tower; the other towers' parity is A's and B's tests."""
  models = sources[1]
  ids = torch.randint(0, 600, (2, 77), generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    want = models["clip_text"](ids).last_hidden_state.numpy()
  got = np.asarray(loaded["clip_text"](jnp.asarray(ids.numpy())))
  parity.assert_close(got, want)


def test_tokenizers_match_transformers(sources, converted):
  source_dirs = sources[0]
  loaded = vdit_tokenizers.load_from_backbone(converted)
  clip = transformers.CLIPTokenizer.from_pretrained(
      os.path.join(source_dirs["modelscope"], "tokenizer"))
  want = clip(TEXTS, padding="max_length", max_length=77, truncation=True, return_tensors="np")
  ids, mask = loaded["clip"](TEXTS)
  assert clip.pad_token == "!"
  np.testing.assert_array_equal(ids, want["input_ids"])
  np.testing.assert_array_equal(mask, want["attention_mask"])
  roberta = transformers.RobertaTokenizerFast.from_pretrained(source_dirs["roberta"])
  want = roberta(TEXTS, padding="longest", return_tensors="np")
  ids, mask = loaded["roberta"](TEXTS)
  np.testing.assert_array_equal(ids, want["input_ids"])
  np.testing.assert_array_equal(mask, want["attention_mask"])


def test_bfloat16_store_load_cast_and_sharding(sources, converted, loaded, tmp_path,
                                               num_devices):
  source_dirs = sources[0]
  towers = {"clip_text": backbone.backbone_towers()["clip_text"]}
  out = tmp_path / "bf16"
  manifest = backbone.convert_backbone(source_dirs, out, dtype="bfloat16",
                                       towers_to_convert=towers, tokenizers={})
  assert manifest["dtype"] == "bfloat16" and list(manifest["towers"]) == ["clip_text"]
  want = {p: v.astype(jnp.bfloat16) for p, v in _params(loaded["clip_text"]).items()}
  mesh = jax.make_mesh((num_devices,), ("data",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  bf16 = {"clip_text": _settings("bfloat16", "bfloat16")["clip_text"]}
  stored = pretrained.load_backbone(out, bf16, shardings=replicated)["clip_text"]
  cast = pretrained.load_backbone(converted, bf16)["clip_text"]
  for module in (stored, cast):
    got = _params(module)
    for path, value in want.items():
      assert got[path].dtype == jnp.bfloat16
      np.testing.assert_array_equal(got[path], value, err_msg=str(path))
  for _, var in nnx.to_flat_state(nnx.state(stored, nnx.Param)):
    assert var[...].sharding == replicated


@dataclasses.dataclass(frozen=True)
class _ProjConfig:
  features: int

  @classmethod
  def from_source(cls, d):
    return cls(d["features"])

  @classmethod
  def from_dict(cls, d):
    return cls(**d)

  def to_dict(self):
    return dataclasses.asdict(self)


class _Proj(nnx.Module):
  """A Linear whose kernel is annotated to shard its output features over 'model'."""

  def __init__(self, config, *, dtype, param_dtype, rngs):
    init = nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, "model"))
    self.proj = nnx.Linear(4, config.features, kernel_init=init, dtype=dtype,
                           param_dtype=param_dtype, rngs=rngs)


def test_mesh_shardings_follow_partition_annotations(tmp_path, num_devices):
  linear = torch.nn.Linear(4, 2 * num_devices)
  src = tmp_path / "proj"
  src.mkdir()
  safetensors.torch.save_file({f"proj.{k}": v for k, v in linear.state_dict().items()},
                              src / "model.safetensors")
  (src / "config.json").write_text(json.dumps({"features": 2 * num_devices}))
  spec = towers.TowerSpec(_ProjConfig, _Proj)
  registry = {"proj": backbone.Tower("roberta", "proj", _ProjConfig.from_source, core.Rules(),
                                     spec)}
  backbone.convert_backbone({"roberta": str(tmp_path)}, tmp_path / "out",
                            towers_to_convert=registry, tokenizers={})
  mesh = jax.make_mesh((num_devices,), ("model",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  proj = pretrained.load_backbone(tmp_path / "out", {"proj": _settings()["vae_encoder"]},
                                  shardings=mesh, specs={"proj": spec})["proj"]
  kernel, bias = proj.proj.kernel[...], proj.proj.bias[...]
  assert kernel.sharding == jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
      None, "model"))
  assert bias.sharding == jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  np.testing.assert_array_equal(np.asarray(kernel), linear.weight.detach().numpy().T)
  np.testing.assert_array_equal(np.asarray(bias), linear.bias.detach().numpy())


def _broken_copy(source_dirs, root, edit):
  """Source dirs whose ModelScope VAE weights went through `edit(state_dict) -> bytes|dict`."""
  ms = os.path.join(root, "modelscope")
  os.makedirs(ms)
  for name in os.listdir(source_dirs["modelscope"]):
    if name != "vae":
      os.symlink(os.path.join(source_dirs["modelscope"], name), os.path.join(ms, name))
  vae_src, vae_dst = os.path.join(source_dirs["modelscope"], "vae"), os.path.join(ms, "vae")
  shutil.copytree(vae_src, vae_dst)
  weights = os.path.join(vae_dst, "diffusion_pytorch_model.safetensors")
  edited = edit(safetensors.torch.load_file(weights), weights)
  if isinstance(edited, dict):
    safetensors.torch.save_file(edited, weights)
  return dict(source_dirs, modelscope=ms)


def _drop_key(sd, _):
  del sd["encoder.conv_in.bias"]
  return sd


def _add_key(sd, _):
  return dict(sd, **{"encoder.extra.weight": torch.ones(3)})


def _reshape_key(sd, _):
  sd["encoder.conv_out.bias"] = torch.ones(5)
  return sd


def _truncate(_, path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) - 100)


@pytest.mark.parametrize("edit, message", [
    (_drop_key, r"1 missing .*\n\s+encoder.conv_in.bias"),
    (_add_key, r"1 unexpected .*\n\s+encoder.extra.weight"),
    (_reshape_key, r"shape mismatch .*\n\s+encoder.conv_out.bias: \(5,\) -> \(8,\)"),
    (_truncate, r"diffusion_pytorch_model.safetensors: truncated safetensors file"),
])
def test_bad_weights_fail_cleanly(sources, tmp_path, capsys, edit, message):
  broken = _broken_copy(sources[0], str(tmp_path / "hub"), edit)
  out = tmp_path / "converted" / "backbone"
  assert cli.main(_cli_args(broken, out)) == 1
  err = capsys.readouterr().err
  assert "vae" in err
  assert re.search(message, err), err
  assert not os.path.exists(out)
  assert os.listdir(tmp_path / "converted") == []


def test_existing_out_needs_overwrite(sources, tmp_path, capsys):
  source_dirs = sources[0]
  out = tmp_path / "backbone"
  out.mkdir()
  (out / "keep.txt").write_text("x")
  assert cli.main(_cli_args(source_dirs, out)) == 1
  assert "already exists; pass --overwrite" in capsys.readouterr().err
  assert (out / "keep.txt").exists()
  towers = {"vae_encoder": backbone.backbone_towers()["vae_encoder"]}
  backbone.convert_backbone(source_dirs, out, towers_to_convert=towers, tokenizers={},
                            overwrite=True)
  assert sorted(os.listdir(out)) == ["manifest.json", "vae_encoder"]
  assert sorted(os.listdir(tmp_path)) == ["backbone"]


def test_missing_source_directory(sources, tmp_path, capsys):
  broken = dict(sources[0], roberta=str(tmp_path / "nope"))
  assert cli.main(_cli_args(broken, tmp_path / "out")) == 1
  assert f"{tmp_path / 'nope'}: no such directory (the roberta source)" in capsys.readouterr().err
  assert os.listdir(tmp_path) == []


def test_load_errors_name_the_directory_and_command(converted, tmp_path):
  with pytest.raises(pretrained.ConvertedBackboneError,
                     match=f"(?s){tmp_path / 'nope'}: no such directory.*"
                           "python -m vdit_jax.convert backbone"):
    pretrained.load_backbone(tmp_path / "nope", _settings())
  with pytest.raises(pretrained.ConvertedBackboneError, match="no converted tower nope"):
    pretrained.load_backbone(converted, {"nope": {}})
  with pytest.raises(towers.TowerSettingsError,
                     match="tower 'unet' has no setting 'rmat' .*skip_temporal_if_single_frame"):
    pretrained.load_backbone(converted, {"unet": dict(_settings()["unet"], rmat=True)})
  with pytest.raises(towers.TowerSettingsError, match="tower 'vae_encoder' has no setting 'remat'"):
    pretrained.load_backbone(converted, {"vae_encoder": dict(_settings()["vae_encoder"],
                                                             remat=False)})
  copy = tmp_path / "copy"
  shutil.copytree(converted, copy)
  config_path = copy / "clip_text" / "config.json"
  config = json.loads(config_path.read_text())
  config["num_hidden_layers"] -= 1
  config_path.write_text(json.dumps(config))
  with pytest.raises(pretrained.ConvertedBackboneError,
                     match=r"(?s)clip_text parameters do not match.*encoder/layers/1/.*: "
                           r"unexpected.*Create it with"):
    pretrained.load_backbone(copy, {"clip_text": _settings()["clip_text"]})
