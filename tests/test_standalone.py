"""The repository stands alone: nothing it runs, tests or documents lives beside it.

Three layers, cheapest first:

- a static check over every tracked file: no file names the contract and data
  folder that once sat beside the repository, none holds the absolute path of
  this checkout, no ``Path(__file__)`` climbs above the repository root, every
  relative path in a YAML or TOML file and every relative Markdown link stays
  inside the repository and exists, and every repository path a document
  names in backticks exists (so the docs follow the code when it moves);
- a clone of the repository (its HEAD: commit first) into a folder with
  nothing beside it, where the rule pack is checked, the pack's rule tests
  run and the tests that read repository data pass, with the clone's own
  code on ``PYTHONPATH`` (the project venv supplies only the dependencies);
- the wheel built from that clone, installed with its dependencies into a
  fresh venv, running ``logystera demo``, ``logystera rules check`` on the
  packaged pack and the loghub converter on the packaged sample from an empty
  folder: ``pip install`` + ``logystera demo`` works without a checkout.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from schemas.rule_loader import load_rules
from tests.support.processes import LOGYSTERA

ROOT = Path(__file__).resolve().parent.parent
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".cfg", ".txt", ".json", ".example", ""}

_SHARED = re.compile(r"(?:\.\./)+shared\b|\bshared/(?:spec|data)\b")
"""The contract and data folder that once sat beside the repository, named in any form."""
_CLIMB = re.compile(r"Path\(__file__\)(?:\.resolve\(\))?(?:(?P<parents>(?:\.parent\b)+)|\.parents\[(?P<index>\d+)\])")
_RELATIVE = re.compile(r"(?<![\w./])((?:\.\./)+[\w.-]*)")
_MD_LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")
_MD_CODE_PATH = re.compile(r"`(?P<path>[a-z_]+/[\w./-]*\.(?:py|md|yaml|log|toml))`")


def _git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def _tracked() -> list[Path]:
    assert (ROOT / ".git").exists(), "these checks read the repository's git checkout: run them in a clone"
    return [ROOT / name for name in _git("ls-files", "-z").split("\0") if name]


def _texts() -> Iterator[tuple[Path, str]]:
    for path in _tracked():
        if path.suffix in TEXT_SUFFIXES and path.is_file() and ".log" not in path.suffixes:
            yield path, path.read_text(encoding="utf-8", errors="replace")


def _inside(path: Path) -> bool:
    return path.resolve().is_relative_to(ROOT)


def _where(path: Path, text: str, offset: int) -> str:
    return f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, offset) + 1}"


def test_no_file_names_a_path_beside_the_repository() -> None:
    problems = []
    for path, text in _texts():
        for match in _SHARED.finditer(text):
            problems.append(f"{_where(path, text, match.start())}: {match.group(0)}")
        for match in re.finditer(re.escape(str(ROOT)) + r"\b", text):
            problems.append(f"{_where(path, text, match.start())}: the absolute path of this checkout")
    assert not problems, "\n".join(problems)


def test_no_module_climbs_above_the_repository_root() -> None:
    problems = []
    for path, text in _texts():
        if path.suffix != ".py":
            continue
        depth = len(path.relative_to(ROOT).parts) - 1  # folders between the root and the file
        for match in _CLIMB.finditer(text):
            climbs = match["parents"].count(".parent") if match["parents"] else int(match["index"]) + 1
            if climbs > depth + 1:
                problems.append(f"{_where(path, text, match.start())}: {match.group(0)} leaves the repository")
    assert not problems, "\n".join(problems)


def test_relative_paths_in_data_files_stay_inside() -> None:
    problems = []
    for path, text in _texts():
        if path.suffix not in (".yaml", ".yml", ".toml"):
            continue
        for match in _RELATIVE.finditer(text):
            if not _inside(path.parent / match.group(1)):
                problems.append(f"{_where(path, text, match.start())}: {match.group(1)} leaves the repository")
    assert not problems, "\n".join(problems)


def test_documents_link_and_point_only_to_what_the_repository_holds() -> None:
    tracked = {path.relative_to(ROOT).as_posix() for path in _tracked()}
    folders = {str(Path(name).parent.as_posix()) for name in tracked}
    problems = []
    for path, text in _texts():
        if path.suffix != ".md":
            continue
        for match in _MD_LINK.finditer(text):
            target = match["target"].split("#", 1)[0]
            if not target or re.match(r"[a-z]+:", target):
                continue
            resolved = (path.parent / target).resolve()
            name = resolved.relative_to(ROOT).as_posix() if _inside(resolved) else None
            if name not in tracked and name not in folders:
                problems.append(f"{_where(path, text, match.start())}: link to {match['target']} (not in the repository)")
        for match in _MD_CODE_PATH.finditer(text):
            name = match["path"]
            if name.split("/", 1)[0] + "/" in {f"{top.split('/', 1)[0]}/" for top in tracked} and name not in tracked:
                problems.append(f"{_where(path, text, match.start())}: `{name}` is not in the repository")
    assert not problems, "\n".join(problems)


def _run(command: Sequence[str | Path], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _environment(**extra: str) -> dict[str, str]:
    """This process's environment without its Python path, plus ``extra``."""
    env = {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, **extra}


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository's HEAD, cloned into ``alone/logystera`` with nothing beside it."""
    assert (ROOT / ".git").exists(), "the clone test clones the repository's git checkout: run it in a clone"
    alone = tmp_path_factory.mktemp("alone")
    target = alone.resolve() / "logystera"
    _run(["git", "clone", "--quiet", "--no-hardlinks", ROOT, target], cwd=alone)
    assert [entry.name for entry in alone.iterdir()] == ["logystera"]
    return target


def _pack_line(directory: Path, shown: str) -> str:
    """What ``logystera rules check`` prints for the pack in ``directory``, computed in this process."""
    ruleset = load_rules(directory)
    return (f"{shown}: {len(ruleset.rules)} rules ({len(ruleset.enabled_rules)} enabled), "
            f"{len(ruleset.metrics)} metrics, {len(ruleset.channels)} channels: ok\n")


@pytest.mark.slow
@pytest.mark.process
def test_a_clone_alone_checks_its_rules_and_passes_its_data_tests(clone: Path) -> None:
    env = _environment(PYTHONPATH=str(clone))
    show = "import cli.demo, simulate.loghub; print(cli.demo.RULES_DIR); print(simulate.loghub.OPENSSH_SAMPLE)"
    where = _run([sys.executable, "-c", show], clone, env)
    assert where.splitlines() == [str(clone / "rules"), str(clone / "simulate" / "data" / "loghub" / "OpenSSH_2k.log")]
    assert LOGYSTERA is not None
    assert _run([LOGYSTERA, "rules", "check", "rules"], clone, env) == _pack_line(clone / "rules", "rules")
    _run([LOGYSTERA, "rules", "test", "tests/rules/pack"], clone, env)
    _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not process",
          "tests/simulate", "tests/rules/test_loader.py", "tests/test_standalone.py",
          "tests/cli/test_demo.py::test_default_rule_pack_is_what_the_demo_ran"], clone, env)


@pytest.fixture
def fresh_venv(tmp_path: Path) -> Iterator[Path]:
    """An empty venv (no pip: this process's pip installs into it); removed afterwards, it holds about 1 GB."""
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path)
    yield venv
    shutil.rmtree(venv, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.process
def test_the_wheel_alone_runs_the_demo_and_ships_its_data(clone: Path, fresh_venv: Path, tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", wheels, clone], clone, _environment())
    [wheel] = wheels.glob("logystera-*.whl")
    python = fresh_venv / "bin" / "python"
    # --no-compile: no .pyc files written ahead (the run compiles what it imports); it halves the install time.
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-compile", wheel], tmp_path, _environment())
    empty = tmp_path / "empty"
    empty.mkdir()
    env = _environment()
    site_packages = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], empty, env).strip())
    pack = (site_packages / "rules").resolve()
    assert sorted(path.name for path in pack.iterdir()) == sorted(path.name for path in (clone / "rules").iterdir())

    demo = _run([fresh_venv / "bin" / "logystera", "demo"], empty, env)
    assert f"rules from {pack} (1 worker)" in demo
    assert "0 invalid, 0 late" in demo
    assert (empty / ".logystera" / "demo" / "alerts.jsonl").stat().st_size > 0
    assert "Store:   chdb://.logystera/store" in demo

    assert _run([fresh_venv / "bin" / "logystera", "rules", "check", pack], empty, env) == _pack_line(pack, str(pack))
    converted = _run([python, "-m", "simulate.loghub", "ssh.jsonl"], empty, env)
    assert converted.startswith("2000 lines: 527 became 535 auth signals")
    assert (site_packages / "simulate" / "data" / "loghub" / "README.md").is_file()  # the loghub terms travel with the data
