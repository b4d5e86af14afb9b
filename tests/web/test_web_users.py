"""The ``--users`` file: what it accepts, how each mistake is named (one line, the field's path), and tokens."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from schemas.errors import EXIT_USAGE
from web.users import UsersError, hash_token, load_users, new_token

ALICE = "alice-token-" + "a" * 40
BOB = "bob-token-" + "b" * 40


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "users.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(UsersError) as caught:
        load_users(path)
    assert caught.value.exit_code == EXIT_USAGE
    return [line.replace(str(path), "FILE") for line in caught.value.lines()]


def test_a_valid_file_gives_each_user_a_viewer_of_their_sites(tmp_path: Path) -> None:
    users = load_users(write(tmp_path, f"""\
users:
  - name: alice
    token_sha256: {hash_token(ALICE)}
    sites: [shop-eu, "blog-*"]
  - name: ops@example.org
    token_sha256: {hash_token(BOB).upper()}
    sites: ["*"]
"""))
    alice = users.by_token(ALICE)
    assert alice is not None and alice.name == "alice"
    assert alice.viewer.may_see("shop-eu") and alice.viewer.may_see("blog-de")
    assert not alice.viewer.may_see("shop-us") and not alice.viewer.may_see("blog")
    ops = users.by_token(BOB)  # an upper-case digest is the same digest
    assert ops is not None and ops.viewer.name == "ops@example.org" and ops.viewer.may_see("anything")
    assert users.by_token("alice") is None and users.by_token(ALICE + " ") is None and users.by_token("x" * 10_000) is None
    assert users.named("alice") is alice and users.named("carol") is None


def test_the_hash_is_sha256_of_the_token_and_new_tokens_are_long_and_random() -> None:
    assert hash_token("abc") == hashlib.sha256(b"abc").hexdigest()
    tokens = {new_token() for _ in range(50)}
    assert len(tokens) == 50
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{43}", token) for token in tokens)  # 32 bytes, URL-safe base64


@pytest.mark.parametrize(("text", "expected"), [
    ("users: []\n", ["FILE: users: must have at least 1 item(s)"]),
    ("people: []\n", ["FILE: users: required", "FILE: people: unknown field"]),
    ("- alice\n", ["FILE: (file): must be a mapping with a 'users' list"]),
    ("", ["FILE: (file): must be a mapping with a 'users' list"]),
    ("users: [\n", ["FILE: (file): line 2: not valid YAML: expected the node content, but found '<stream end>'"]),
    ("users:\n  - name: a\n    name: b\n", ["FILE: (file): line 3: not valid YAML: duplicate key 'name'"]),  # the strict loader
    (f"users:\n  - name: alice\n    token: {ALICE}\n    token_sha256: {'a' * 64}\n    sites: [a]\n",
     ["FILE: users[0].token: unknown field"]),
    ("users:\n  - name: alice\n    token_sha256: abc\n    sites: [a]\n",
     ["FILE: users[0].token_sha256: must be the SHA-256 of the token, 64 hex digits (logystera web token prints it)"]),
    (f"users:\n  - name: alice\n    token_sha256: {'a' * 64}\n    sites: []\n",
     ["FILE: users[0].sites: must have at least 1 item(s)"]),
    (f"users:\n  - name: 'al:ice'\n    token_sha256: {'a' * 64}\n    sites: [a]\n",
     [r"FILE: users[0].name: must match ^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$"]),
    (f"users:\n  - name: a\n    token_sha256: {'a' * 64}\n    sites: [a]\n"
     f"  - name: b\n    token_sha256: {'b' * 64}\n    sites: [ok, 'Shop EU', '<script>', ok-2]\n",
     ["FILE: users[1].sites[1]: must be a site id or a pattern of site ids (a-z, 0-9, '.', '_', '-', with * and ?)",
      "FILE: users[1].sites[2]: must be a site id or a pattern of site ids (a-z, 0-9, '.', '_', '-', with * and ?)"]),
    (f"users:\n  - name: a\n    token_sha256: {'a' * 64}\n    sites: [a]\n"
     f"  - name: a\n    token_sha256: {'a' * 64}\n    sites: [b]\n",
     ["FILE: users[1].name: 'a' is also users[0]", "FILE: users[1].token_sha256: the same token as users[0]"]),
])
def test_each_mistake_is_one_line_naming_the_file_and_the_field(tmp_path: Path, text: str, expected: list[str]) -> None:
    assert problems(tmp_path, text) == expected


def test_a_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UsersError) as caught:
        load_users(tmp_path / "nope.yaml")
    assert caught.value.lines() == [f"{tmp_path / 'nope.yaml'}: No such file or directory"]
