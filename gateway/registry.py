"""The site registry: which sites may send, with which secret, and which types each has switched off.

A YAML file, validated strictly (unknown keys are errors)::

    sites:
      - id: shop-eu
        secret_env: LOGYSTERA_SECRET_SHOP_EU     # the secret comes from this environment variable
        disabled_types: [request]
      - id: blog
        secret_file: secrets/blog.secret         # or from this file (relative to the registry file)

The file never holds a secret itself, so it can live in version control.
Every problem is reported, one line each, as ``FILE: site <id>: <field>:
<message>`` (``FILE: (file): ...`` for the document as a whole); no message
ever contains a secret.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from protocol.wire import secret_bytes
from schemas.errors import Problems
from schemas.problems import StrictYamlLoader, validation_problems
from schemas.signals import SIGNAL_TYPES, SITE_PATTERN

SignalType = Literal[SIGNAL_TYPES]  # type: ignore[valid-type]


class RegistryError(Problems):
    """The registry file has problems; ``problems`` holds one formatted line each (all printed, exit 2)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(problems, None if len(problems) == 1 else f"{len(problems)} problems in the site registry")


class SiteEntry(BaseModel):
    """One site as written in the registry file."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: Annotated[str, Field(pattern=SITE_PATTERN)]
    secret_env: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    secret_file: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    disabled_types: Annotated[list[SignalType], Field(max_length=len(SIGNAL_TYPES))] = []

    @model_validator(mode="after")
    def _one_secret_source(self) -> SiteEntry:
        """Exactly one place to read the secret from: two would leave it unclear which one counts."""
        if (self.secret_env is None) == (self.secret_file is None):
            raise ValueError("secret_env: give exactly one of secret_env and secret_file")
        return self


class RegistryDocument(BaseModel):
    """The whole file: a non-empty list of sites."""

    model_config = ConfigDict(extra="forbid")
    sites: Annotated[list[Any], Field(min_length=1)]


@dataclass(frozen=True)
class Site:
    """A registered site, its HMAC key resolved; ``repr`` never shows the key."""

    id: str
    key: bytes = field(repr=False)
    disabled_types: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Registry:
    """The registered sites by id, in file order."""

    sites: dict[str, Site]

    def get(self, site: str) -> Site | None:
        """The site registered under ``site``, if any."""
        return self.sites.get(site)

    @property
    def ids(self) -> list[str]:
        """Every registered site id, in file order (the ticker writes one tick per site)."""
        return list(self.sites)


def load_registry(path: str | Path, environ: Mapping[str, str] | None = None) -> Registry:
    """Read and validate a registry file and resolve every secret; :class:`RegistryError` lists every problem."""
    path = Path(path)
    env = os.environ if environ is None else environ
    shown = str(path)
    try:
        document = yaml.load(path.read_text(encoding="utf-8"), Loader=StrictYamlLoader)  # noqa: S506 - a SafeLoader subclass
    except OSError as error:
        raise RegistryError([f"{shown}: {error.strerror or error}"]) from None
    except UnicodeDecodeError:
        raise RegistryError([f"{shown}: (file): not UTF-8 text"]) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise RegistryError([f"{shown}: (file): {where}not valid YAML: {getattr(error, 'problem', None) or error}"]) from None
    try:
        parsed = RegistryDocument.model_validate(document if document is not None else {})
    except ValidationError as error:
        if not isinstance(document, dict):
            raise RegistryError([f"{shown}: (file): must be a mapping with a 'sites' list"]) from None
        raise RegistryError([f"{shown}: (file): {name}: {message}" for name, message in validation_problems(error)]) from None
    problems: list[str] = []
    sites: dict[str, Site] = {}
    for position, raw in enumerate(parsed.sites, start=1):
        named = isinstance(raw, dict) and isinstance(raw.get("id"), str) and raw["id"]
        label = f"site {raw['id']}" if named else f"site #{position}"
        if not isinstance(raw, dict):
            problems.append(f"{shown}: {label}: must be a mapping with id and secret_env or secret_file")
            continue
        try:
            entry = SiteEntry.model_validate(raw)
        except ValidationError as error:
            problems.extend(f"{shown}: {label}: {name}: {message}" for name, message in validation_problems(error))
            continue
        if entry.id in sites:
            problems.append(f"{shown}: {label}: id: registered twice")
            continue
        try:
            key = _read_key(entry, path.parent, env)
        except ValueError as error:
            problems.append(f"{shown}: {label}: {error}")
            continue
        sites[entry.id] = Site(entry.id, key, frozenset(entry.disabled_types))
    if problems:
        raise RegistryError(problems)
    return Registry(sites)


def _read_key(entry: SiteEntry, base: Path, env: Mapping[str, str]) -> bytes:
    """The HMAC key of the configured secret; a ``ValueError`` naming the field (never the value) when it is unusable."""
    if entry.secret_env is not None:
        field_name, source = "secret_env", f"environment variable {entry.secret_env}"
        value = env.get(entry.secret_env)
        if value is None:
            raise ValueError(f"{field_name}: {source} is not set")
    else:
        assert entry.secret_file is not None
        target = base / entry.secret_file
        field_name, source = "secret_file", str(target)
        try:
            value = target.read_text(encoding="utf-8")
        except OSError as error:
            raise ValueError(f"{field_name}: {source}: {error.strerror or 'cannot be read'}") from None
        except UnicodeDecodeError:
            raise ValueError(f"{field_name}: {source}: not UTF-8 text") from None
    # A trailing newline (``echo secret > file``) is never part of the secret.
    value = value.strip()
    if not value:
        raise ValueError(f"{field_name}: {source} is empty")
    try:
        return secret_bytes(value)
    except ValueError as error:
        raise ValueError(f"{field_name}: {source}: {str(error).removeprefix('secret: ')}") from None
