"""``logystera silence`` and ``logystera deliver`` as processes: a held notification survives a SIGKILL, recorded and unsent."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.delivery.test_deliver_command import TIMEOUT, alert, attempts, hook, line, logystera, notification, rules, start
from tests.support.receivers import Hang, WebhookReceiver

pytestmark = [pytest.mark.process, pytest.mark.slow]
__all__ = ["hook"]  # the receiver fixture, shared with test_deliver_command


def test_a_deliver_killed_and_restarted_neither_sends_a_held_notification_nor_loses_its_record(
    tmp_path: Path, hook: WebhookReceiver,
) -> None:
    store = tmp_path / "store"
    directory = rules(tmp_path)
    made = logystera("silence", "add", "--match", "site=blog-us", "--for", "1h", "--by", "alice", "--comment", "migration",
                     "--rules", str(directory), "--store", f"chdb://{store}")
    assert made.returncode == 0, made.stderr
    silence_id = made.stdout.split()[1].rstrip(":")
    alerts = tmp_path / "alerts.jsonl"
    alerts.write_text(line(notification(1)) + "\n" + line(notification(2, site="blog-us")) + "\n", encoding="utf-8")
    hook.answer(Hang(TIMEOUT))  # the sendable one hangs: the process is killed in the middle of the run
    args = (str(alerts), "--rules", str(directory), "--store", f"chdb://{store}")
    process, _ = start(tmp_path, *args, hook=hook)
    hook.wait_for(1, timeout=TIMEOUT)
    process.send_signal(signal.SIGKILL)
    process.wait(TIMEOUT)
    hook.release()
    before = attempts(store)
    assert before[(alert(1), 1, 1)] == ("started", None, "")
    outcome, status, error = before[(alert(2), 1, 1)]
    assert (outcome, status) == ("silenced", None) and error.startswith(f"silence {silence_id} (alice: migration) until ")

    again = logystera("deliver", *args, hook=hook)
    assert again.returncode == 0, again.stderr
    assert again.stderr.splitlines()[-1].startswith("delivery: 2 records, 0 invalid, 0 duplicate, 0 not done: 1 delivered")
    assert "1 done before" in again.stderr.splitlines()[-1]
    after = attempts(store)
    assert after == {**before, (alert(1), 1, 2): ("delivered", 204, "")}, "the held one: its one row, never a call"
    assert {r.headers["webhook-id"] for r in hook.received} == {f"{alert(1)}:1"}
