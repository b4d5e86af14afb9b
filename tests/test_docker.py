"""The compose stack cannot run here (no container engine), so check what can be checked without one.

Every Logystera service's command must parse with the real ``logystera`` argument parser, the files it
names must be in the image (copied by the Dockerfile), and every variable the stack reads must be
documented in ``docker/.env.example``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from cli.main import build_parser
from web.users import load_users

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker/compose.yaml").read_text())
DOCKERFILE = (ROOT / "docker/Dockerfile").read_text()
VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}")
LOGYSTERA_SERVICES = sorted(name for name, service in COMPOSE["services"].items() if service.get("image") == "logystera:dev")


def _substituted(text: str) -> str:
    return VARIABLE.sub(lambda match: f"x{match.group(1).lower()}", text)


def test_the_stack_runs_gateway_detect_as_two_processes_deliver_and_the_console() -> None:
    assert LOGYSTERA_SERVICES == ["deliver", "detect-0", "detect-1", "gateway", "web"]
    for index in (0, 1):
        command = build_parser().parse_args(COMPOSE["services"][f"detect-{index}"]["command"])
        assert (command.addresses, command.process_id) == ("detect-0:2101,detect-1:2101", index)


@pytest.mark.parametrize("name", LOGYSTERA_SERVICES)
def test_service_command_parses(name: str) -> None:
    command = [_substituted(part) for part in COMPOSE["services"][name]["command"]]
    args = build_parser().parse_args(command)
    assert args.handler.__name__ == f"cmd_{name.split('-')[0]}"


@pytest.mark.parametrize("name", LOGYSTERA_SERVICES)
def test_files_named_by_a_service_are_in_the_image(name: str) -> None:
    copied = re.findall(r"^COPY (\S+) \./(\S+)$", DOCKERFILE, flags=re.MULTILINE)
    in_image = {f"/app/{target}" for _source, target in copied}
    for part in COMPOSE["services"][name]["command"]:
        if part.startswith("/app/"):
            assert any(part == path or part.startswith(path + "/") for path in in_image), part
            assert (ROOT / part.removeprefix("/app/")).exists(), part


def test_every_package_is_copied_into_the_image() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    packages = re.search(r"include = \[(.*?)\]", pyproject)
    assert packages is not None
    for package in re.findall(r'"(\w+)\*"', packages.group(1)):
        assert f"COPY {package} ./{package}" in DOCKERFILE


def test_every_variable_is_documented() -> None:
    documented = set(re.findall(r"^([A-Z0-9_]+)=", (ROOT / "docker/.env.example").read_text(), flags=re.MULTILINE))
    used = set(VARIABLE.findall((ROOT / "docker/compose.yaml").read_text()))
    assert used <= documented, sorted(used - documented)


def test_registry_names_secrets_the_stack_passes() -> None:
    registry = yaml.safe_load((ROOT / "docker/config/sites.yaml").read_text())
    environment = COMPOSE["services"]["gateway"]["environment"]
    assert {site["secret_env"] for site in registry["sites"]} <= set(environment)


def test_the_console_users_file_loads_and_signs_no_one_in_until_edited() -> None:
    users = load_users(ROOT / "docker/config/users.yaml")
    assert [user.name for user in users.users] == ["admin"]
    assert users.by_token("") is None and users.by_token("admin") is None
