"""JSON round trips for the frozen config dataclasses of the towers.

The converter writes each tower's config with `to_dict()` next to its weights and
`vdit_jax.pretrained` reads it back with `from_dict()`, which rejects unknown fields so that
a config written by another version fails loudly instead of building a different model.
"""

import dataclasses
from typing import Any, ClassVar, Mapping


class ConfigMixin:
  """to_dict / from_dict for a frozen dataclass; tuples become JSON lists and back."""

  def to_dict(self) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(self).items()}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]):
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
      raise ValueError(f"{cls.__name__}.from_dict: unknown fields {unknown}")
    return cls(**d)


class TransformersConfig(ConfigMixin):
  """A config dataclass read from a transformers `config.json` (CLIP, RoBERTa)."""

  @classmethod
  def from_transformers(cls, config: Mapping[str, Any]):
    """Reads the fields this port uses from a transformers `config.json` dict.

    Keys the port does not use (dropout rates, initialiser settings, ...) are skipped;
    missing keys take the transformers defaults.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in config.items() if k in names})


class DiffusersConfig(ConfigMixin):
  """A config dataclass read from a diffusers `config.json` (UNet3D, VAE encoder).

  Unlike transformers configs, every key must be accounted for: a field, a key the port
  deliberately ignores, or a key that must keep the one value the port implements.
  """
  diffusers_ignored: ClassVar[frozenset[str]] = frozenset()
  diffusers_required: ClassVar[Mapping[str, Any]] = {}

  @classmethod
  def from_diffusers(cls, config: Mapping[str, Any], **overrides):
    """From a diffusers config.json dict; overrides set the port's own switches."""
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in config.items():
      if key in cls.diffusers_ignored:
        continue
      if key in cls.diffusers_required:
        if value != cls.diffusers_required[key]:
          raise ValueError(f"{cls.__name__}.from_diffusers: {key}={value!r} is not supported "
                           f"(only {cls.diffusers_required[key]!r})")
        continue
      if key not in fields:
        raise ValueError(f"{cls.__name__}.from_diffusers: unknown config key {key!r}")
      kwargs[key] = value
    return cls(**{**kwargs, **overrides})
