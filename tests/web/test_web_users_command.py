"""``logystera web --users`` and ``logystera web token``, as processes: exit codes, the lines printed, a real start."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.support.polling import wait_for
from tests.support.processes import LOGYSTERA, LogysteraProcess
from web.users import hash_token, load_users

pytestmark = pytest.mark.process


def logystera(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert LOGYSTERA is not None
    return subprocess.run([LOGYSTERA, *args], capture_output=True, text=True, timeout=120, cwd=cwd, check=False)


def test_token_prints_a_new_token_and_the_entry_that_signs_it_in(tmp_path: Path) -> None:
    printed = logystera("web", "token", "--name", "alice", "--site", "site-a", "--site", "shop-*", cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout.splitlines()
    assert lines[0] == "# token for alice (give it to them; only its hash below goes in the users file):"
    token = lines[1].removeprefix("# ")
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
    assert lines[2:] == ["  - name: alice", f"    token_sha256: {hash_token(token)}", '    sites: ["site-a", "shop-*"]']
    path = tmp_path / "users.yaml"
    path.write_text("users:\n" + "\n".join(lines) + "\n", encoding="utf-8")  # appended as printed, comments and all
    user = load_users(path).by_token(token)
    assert user is not None and user.viewer.sites == ("site-a", "shop-*")
    assert logystera("web", "token", cwd=tmp_path).stdout != printed.stdout  # a new one each time


@pytest.mark.parametrize(("args", "line"), [
    (["web", "token", "--name", "a:b"], "logystera: error: --name 'a:b': letters, digits, '.', '_', '@', '+', '-' (at most 64)"),
    (["web", "token", "--site", "Shop"],
     "logystera: error: --site 'Shop': must be a site id or a pattern of site ids (a-z, 0-9, '.', '_', '-', with * and ?)"),
    (["web", "--users", "users.yaml"], "users.yaml: users[0].sites[1]: must be a site id or a pattern of site ids "
                                       "(a-z, 0-9, '.', '_', '-', with * and ?)"),
    (["web", "--users", "missing.yaml"], "missing.yaml: No such file or directory"),
])
def test_mistakes_are_one_line_and_exit_2(tmp_path: Path, args: list[str], line: str) -> None:
    (tmp_path / "users.yaml").write_text(f"users:\n  - name: a\n    token_sha256: {'c' * 64}\n    sites: [ok, NOT-OK]\n")
    answer = logystera(*args, cwd=tmp_path)
    assert (answer.returncode, answer.stderr.splitlines()) == (2, [line])


@pytest.mark.slow
def test_with_users_the_console_may_listen_on_every_address_and_asks_for_a_token(tmp_path: Path) -> None:
    token = "t" * 43
    users = tmp_path / "users.yaml"
    users.write_text(f"users:\n  - name: alice\n    token_sha256: {hash_token(token)}\n    sites: [site-a]\n", encoding="utf-8")
    console = LogysteraProcess(["web", "--users", str(users), "--host", "0.0.0.0", "--port", "0",
                                "--store", f"chdb://{tmp_path / 'store'}", "--rules", str(Path(__file__).parents[2] / "rules")])
    try:
        started = wait_for(lambda: next((re.search(r"on http://0\.0\.0\.0:(\d+)/alerts$", line) for line in console.lines
                                         if "serving" in line), None) or (None if console.running else console.output()),
                           "the console to listen", 120)
        assert isinstance(started, re.Match), started
        assert any(line.endswith(f"1 users from {users}; sign in at http://0.0.0.0:{started.group(1)}/login") for line in console.lines)
        url = f"http://127.0.0.1:{started.group(1)}"
        assert httpx.get(f"{url}/api/alerts", timeout=30).status_code == 401
        signed = httpx.get(f"{url}/alerts", headers={"authorization": f"Bearer {token}"}, timeout=30)
        assert '<span class="who">alice</span>' in signed.text
    finally:
        assert console.stop() == 0, console.output()
