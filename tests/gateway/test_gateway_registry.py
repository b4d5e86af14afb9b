"""The site registry file and ``logystera gateway``'s refusal to start on a bad one (exit 2, one line per problem)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from cli.main import main
from gateway.registry import RegistryError, load_registry
from protocol.wire import secret_bytes


def write(tmp_path: Path, text: str, name: str = "sites.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(RegistryError) as raised:
        load_registry(path, env or {})
    return raised.value.problems


def test_secrets_come_from_the_environment_or_a_file_never_from_the_registry(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "blog").write_text("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n")  # `echo > file` adds a newline
    path = write(tmp_path, "sites:\n  - id: shop-eu\n    secret_env: SHOP\n    disabled_types: [request, cron]\n"
                           "  - id: blog\n    secret_file: secrets/blog\n")
    registry = load_registry(path, {"SHOP": "s3cr3t"})
    assert registry.ids == ["shop-eu", "blog"]
    shop, blog = registry.sites["shop-eu"], registry.sites["blog"]
    assert shop.key == b"s3cr3t" and shop.disabled_types == {"request", "cron"}
    assert blog.key == secret_bytes("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw") and blog.disabled_types == frozenset()
    assert "s3cr3t" not in repr(registry) and "key" not in repr(shop)


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("sites:\n  - id: Shop\n    secret_env: S\n", {"S": "x"}, "site Shop: id: must match ^[a-z0-9][a-z0-9._-]{0,62}$"),
        ("sites:\n  - id: shop\n", {}, "site shop: secret_env: give exactly one of secret_env and secret_file"),
        ("sites:\n  - id: shop\n    secret_env: S\n    secret_file: f\n", {"S": "x"},
         "site shop: secret_env: give exactly one of secret_env and secret_file"),
        ("sites:\n  - id: shop\n    secret: hunter2\n    secret_env: S\n", {"S": "x"}, "site shop: secret: unknown field"),
        ("sites:\n  - id: shop\n    secret_env: S\n    disabled_types: [tick]\n", {"S": "x"},
         "site shop: disabled_types.0: must be 'auth', 'mail', 'cron', 'php_error', 'config_change', 'db_event', 'request', "
         "'plugin', 'file_edit' or 'integration'"),
        ("sites:\n  - id: shop\n    secret_env: MISSING\n", {}, "site shop: secret_env: environment variable MISSING is not set"),
        ("sites:\n  - id: shop\n    secret_env: S\n", {"S": "  \n"}, "site shop: secret_env: environment variable S is empty"),
        ("sites:\n  - id: shop\n    secret_env: S\n", {"S": "whsec_!!"},
         "site shop: secret_env: environment variable S: the part after 'whsec_' is not valid base64"),
        ("sites:\n  - id: shop\n    secret_env: S\n  - id: shop\n    secret_env: S\n", {"S": "x"}, "site shop: id: registered twice"),
        ("sites:\n  - 42\n", {}, "site #1: must be a mapping with id and secret_env or secret_file"),
        ("sites: []\n", {}, "(file): sites: must have at least 1 item(s)"),
        ("{}\n", {}, "(file): sites: required"),
        ("- id: shop\n", {}, "(file): must be a mapping with a 'sites' list"),
        ("sites:\n  - id: shop\n    id: blog\n", {}, "(file): line 3: not valid YAML: duplicate key 'id'"),
    ],
)
def test_each_problem_is_one_line_naming_the_file_the_site_and_the_field(tmp_path: Path, text: str, env: dict[str, str],
                                                                         expected: str) -> None:
    path = write(tmp_path, text)
    assert problems(path, env) == [f"{path}: {expected}"]


def test_a_missing_secret_file_is_named_relative_to_the_registry(tmp_path: Path) -> None:
    path = write(tmp_path, "sites:\n  - id: shop\n    secret_file: nope.secret\n")
    assert problems(path) == [f"{path}: site shop: secret_file: {tmp_path / 'nope.secret'}: No such file or directory"]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "sites:\n  - id: a\n    secret_env: A\n  - id: b\n  - id: c\n    secret_env: C\n")
    assert problems(path) == [
        f"{path}: site a: secret_env: environment variable A is not set",
        f"{path}: site b: secret_env: give exactly one of secret_env and secret_file",
        f"{path}: site c: secret_env: environment variable C is not set",
    ]


def test_the_gateway_command_refuses_a_bad_registry_with_exit_2_and_never_prints_a_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOGY_TEST_SECRET", "whsec_not*base64")
    path = write(tmp_path, "sites:\n  - id: shop\n    secret_env: LOGY_TEST_SECRET\n  - id: Blog\n    secret_env: X\n")
    code = main(["gateway", "--registry", str(path), "--bootstrap", "127.0.0.1:1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.splitlines() == [
        f"{path}: site shop: secret_env: environment variable LOGY_TEST_SECRET: the part after 'whsec_' is not valid base64",
        f"{path}: site Blog: id: must match ^[a-z0-9][a-z0-9._-]{{0,62}}$",
    ]
    assert "not*base64" not in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--tick-interval", "1500ms"], "logystera: error: --tick-interval: must be a whole number of seconds, at least 1s"),
        (["--tick-interval", "often"], "logystera: error: argument --tick-interval: 'often' is not a duration like 90s, 15m, 1h or 1d"),
        (["--dedup-window", "0s"], "logystera: error: --dedup-window: must be more than 0"),
        (["--kafka-option", "acks=1"], "logystera: error: --kafka-option: acks: set by the gateway, cannot be changed"),
        (["--kafka-option", "no.such.setting=1"],
         "logystera: error: --kafka-option: Kafka producer: No such configuration property: \"no.such.setting\""),
        (["--kafka-option", "linger.ms"], "logystera: error: --kafka-option: 'linger.ms' is not KEY=VALUE"),
        (["--max-future", "1500ms"], "logystera: error: --max-future: must be a whole number of seconds"),
        (["--header-timeout", "0s"], "logystera: error: --header-timeout: must be more than 0"),
        (["--body-timeout", "soon"], "logystera: error: argument --body-timeout: 'soon' is not a duration like 90s, 15m, 1h or 1d"),
        (["--max-connections", "0"], "logystera: error: --max-connections: must be at least 1"),
        (["--max-pending-mib", "0"], "logystera: error: --max-pending-mib: must be at least 1 (one batch body may be 1 MiB)"),
    ],
)
def test_bad_options_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                          options: list[str], expected: str) -> None:
    monkeypatch.setenv("LOGY_TEST_SECRET", "s3cr3t")
    path = write(tmp_path, "sites:\n  - id: shop\n    secret_env: LOGY_TEST_SECRET\n")
    code = main(["gateway", "--registry", str(path), "--bootstrap", "127.0.0.1:1", *options])
    assert code == 2
    assert capsys.readouterr().err.splitlines() == [expected]


def test_a_port_in_use_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGY_TEST_SECRET", "s3cr3t")
    path = write(tmp_path, "sites:\n  - id: shop\n    secret_env: LOGY_TEST_SECRET\n")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code = main(["gateway", "--registry", str(path), "--bootstrap", "127.0.0.1:1", "--port", str(port)])
    assert code == 2
    assert capsys.readouterr().err.splitlines() == [f"logystera: error: --host/--port 127.0.0.1:{port}: Address already in use"]
