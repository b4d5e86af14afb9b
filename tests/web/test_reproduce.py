"""The alert page's reproduce commands, run as printed, give back the stored notifications byte for byte.

Everything is the real CLI in child processes: ``logystera replay --store`` fills a chDB directory,
``logystera web`` serves the pages (the commands are read from ``/api/alerts/<id>``), and after the console
stops (a chDB directory is one process's at a time) each alert's three command lines run in ``sh``. One alert
of each kind of tests/support/incidents.py: ratio, threshold, absence and match with a suppressed count.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.incidents import notifications_by_rule, write_incidents
from tests.support.polling import wait_for
from tests.support.processes import LOGYSTERA, LogysteraProcess

RULES = Path(__file__).resolve().parents[2] / "rules"
_SERVING = re.compile(r"serving .* on (http://127\.0\.0\.1:\d+)/alerts$")


@pytest.mark.process
@pytest.mark.slow
def test_the_commands_on_each_alert_page_reproduce_its_notifications(tmp_path: Path) -> None:
    signals = write_incidents(tmp_path / "signals.jsonl")
    store = f"chdb://{tmp_path / 'store'}"
    stored = subprocess.run(
        [LOGYSTERA, "replay", str(signals), "--rules", str(RULES), "--store", store, "--out", str(tmp_path / "alerts.jsonl")],
        capture_output=True, text=True, check=False, timeout=120,
    )
    assert stored.returncode == 0, stored.stderr
    emitted = (tmp_path / "alerts.jsonl").read_text().splitlines()
    by_rule = notifications_by_rule(emitted)
    chosen = {rule: by_rule[rule][-1]["alert_id"] for rule in
              ("http-5xx-ratio", "php-fatal-spike", "integration-silent", "sensitive-config-changed")}
    assert by_rule["sensitive-config-changed"][-1]["suppressed_count"] == 1

    web = LogysteraProcess(["web", "--store", store, "--rules", str(RULES), "--port", "0"])
    try:
        base = wait_for(lambda: next((m.group(1) for line in web.lines if (m := _SERVING.search(line))), None),
                        "the console's start line", timeout=60)
        commands = {rule: httpx.get(f"{base}/api/alerts/{alert_id}", timeout=30).json()["reproduce"]["commands"]
                    for rule, alert_id in chosen.items()}
    finally:
        assert web.stop() == 0, web.output()

    bin_dir = str(Path(sys.executable).parent)  # where the logystera console script of this environment is
    for rule, alert_id in chosen.items():
        script = "\n".join(["set -e", *commands[rule]])
        run = subprocess.run(["sh", "-c", script], cwd=tmp_path, capture_output=True, text=True, check=False, timeout=180,
                             env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
        assert run.returncode == 0, f"{rule}: {run.stderr}"
        want = [line for line in emitted if json.loads(line)["alert_id"] == alert_id]
        assert run.stdout.splitlines() == want, rule
