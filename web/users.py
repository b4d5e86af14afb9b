"""The console's users (``logystera web --users FILE``): who may sign in, with which token, to see which sites.

A YAML file, validated strictly (unknown keys are errors)::

    users:
      - name: alice
        token_sha256: 3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855   # 64 hex digits
        sites: [shop-eu, "blog-*"]          # site ids or shell-style patterns; "*" is every site

The file holds the SHA-256 of each token, never the token, so it can live in version control and a copy
of it signs no one in. ``logystera web token`` prints a new random token and the lines for this file.

A fast hash is enough here, unlike for passwords: a token is 256 random bits chosen by the machine, not a
word a person chose, so there is no dictionary to try and no work factor would change the odds of a guess.
Being fast also matters, since every API request with ``Authorization`` checks one.

Every problem is reported, one line each, as ``FILE: users[2].sites[0]: <message>`` (indexes from 0, as
pydantic and JSON paths count), ``FILE: (file): ...`` for the document as a whole; exit 2.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from schemas.errors import Problems
from schemas.problems import FieldProblems, StrictYamlLoader, validation_problems
from web.access import Viewer, pattern_is_valid

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$"
"""A user name: shown in the page header, carried in the session cookie and the HTTP Basic user (so no ``:``)."""
MAX_TOKEN_LENGTH = 512
"""Characters a presented token may have; longer is refused before it is hashed."""


class UsersError(Problems):
    """The users file has problems; ``problems`` holds one formatted line each (all printed, exit 2)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(problems, None if len(problems) == 1 else f"{len(problems)} problems in the users file")


class UserEntry(BaseModel):
    """One user as written in the file."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    token_sha256: str
    sites: Annotated[list[str], Field(min_length=1, max_length=1000)]

    @field_validator("token_sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        """64 hex digits (either case): anything else is a token pasted by mistake, or a truncated copy."""
        if re.fullmatch(r"[0-9a-fA-F]{64}", value) is None:
            raise ValueError("must be the SHA-256 of the token, 64 hex digits (logystera web token prints it)")
        return value.lower()

    @field_validator("sites")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        """Each entry a site id or a ``*``/``?`` pattern of the site alphabet (the store's site ids), named by index."""
        bad = [
            (str(index), "must be a site id or a pattern of site ids (a-z, 0-9, '.', '_', '-', with * and ?)")
            for index, pattern in enumerate(value) if not pattern_is_valid(pattern)
        ]
        if bad:
            raise FieldProblems(bad)
        return value


class UsersDocument(BaseModel):
    """The whole file: a non-empty list of users."""

    model_config = ConfigDict(extra="forbid")
    users: Annotated[list[UserEntry], Field(min_length=1)]


@dataclass(frozen=True)
class User:
    """A user who may sign in: the digest of their token and the viewer they read the console as."""

    name: str
    digest: bytes = field(repr=False)
    viewer: Viewer


@dataclass(frozen=True)
class Users:
    """Every user of the console, in file order."""

    users: tuple[User, ...]

    def by_token(self, token: str) -> User | None:
        """The user whose token this is, if any.

        Every user's digest is compared, in constant time, whether or not an earlier one matched: how long
        the answer takes says nothing about which digest (or how much of it) was close.
        """
        if len(token) > MAX_TOKEN_LENGTH:
            return None
        digest = hashlib.sha256(token.encode("utf-8")).digest()
        found: User | None = None
        for user in self.users:
            if hmac.compare_digest(user.digest, digest):
                found = user
        return found

    def named(self, name: str) -> User | None:
        """The user called ``name`` (a session cookie names its user), if any."""
        return next((user for user in self.users if user.name == name), None)


def hash_token(token: str) -> str:
    """The ``token_sha256`` line of ``token``: SHA-256 of its UTF-8 bytes, lowercase hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A new token: 32 random bytes (256 bits) from the OS, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def _indexed(path: str) -> str:
    """``users.2.sites.0`` → ``users[2].sites[0]``."""
    return re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", path)


def load_users(path: str | Path) -> Users:
    """Read and validate a users file; :class:`UsersError` lists every problem."""
    path = Path(path)
    shown = str(path)
    try:
        document = yaml.load(path.read_text(encoding="utf-8"), Loader=StrictYamlLoader)  # noqa: S506 - a SafeLoader subclass
    except OSError as error:
        raise UsersError([f"{shown}: {error.strerror or error}"]) from None
    except UnicodeDecodeError:
        raise UsersError([f"{shown}: (file): not UTF-8 text"]) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise UsersError([f"{shown}: (file): {where}not valid YAML: {getattr(error, 'problem', None) or error}"]) from None
    if not isinstance(document, dict):
        raise UsersError([f"{shown}: (file): must be a mapping with a 'users' list"])
    try:
        parsed = UsersDocument.model_validate(document)
    except ValidationError as error:
        raise UsersError([f"{shown}: {_indexed(name)}: {message}" for name, message in validation_problems(error)]) from None
    problems: list[str] = []
    names: dict[str, int] = {}
    digests: dict[str, int] = {}
    for index, entry in enumerate(parsed.users):
        if entry.name in names:
            problems.append(f"{shown}: users[{index}].name: {entry.name!r} is also users[{names[entry.name]}]")
        if entry.token_sha256 in digests:
            # Two users with one token: whoever holds it would be either of them.
            problems.append(f"{shown}: users[{index}].token_sha256: the same token as users[{digests[entry.token_sha256]}]")
        names.setdefault(entry.name, index)
        digests.setdefault(entry.token_sha256, index)
    if problems:
        raise UsersError(problems)
    return Users(tuple(
        User(entry.name, bytes.fromhex(entry.token_sha256), Viewer(entry.name, tuple(entry.sites)))
        for entry in parsed.users
    ))
