"""The one way a frozen model config dataclass is built from, written to and compared with a dict."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from sk_jax.errors import InputError


class ConfigFields:
  """Mixin of ModelConfig and DiscriminatorConfig; GROUP is the config group ("model", "disc")."""

  GROUP = ""

  @classmethod
  def from_dict(cls, d: Mapping[str, Any], source: str | None = None):
    """Builds from a ConfigDict or a dict; unknown fields are an InputError naming them."""
    named, source = source is not None, source or f"config.{cls.GROUP}"
    d = dict(d)
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
      raise InputError(f"{source}: unknown {cls.GROUP} field(s) {', '.join(unknown)}")
    try:
      return cls(**d)
    except TypeError as e:
      raise InputError(f"{source}: {e}") from None
    except InputError as e:  # a field's own check: name where the value came from
      if not named or str(e).startswith(source):
        raise
      raise InputError(f"{source}: {e}") from None

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def diff(self, other) -> list[str]:
    """'group.field: mine != other's' for every field that differs."""
    return [
      f"{self.GROUP}.{f.name}: {getattr(self, f.name)!r} != {getattr(other, f.name)!r}"
      for f in dataclasses.fields(self)
      if getattr(self, f.name) != getattr(other, f.name)
    ]
