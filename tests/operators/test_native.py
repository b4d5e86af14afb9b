"""The compiled engine (mypyc, tools/build_native.py) and the pure-Python one are the same program.

Every other test runs with whichever the process uses (``make test`` runs the
engine's tests both ways); these check what only the pair can show: a
snapshot is the same bytes whichever wrote it, one written before the
compiled engine existed (format 2) is restored by both, and a build is used
only for the exact sources it was made from.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import operators
from schemas import native

ROOT = Path(__file__).resolve().parents[2]


def _built() -> bool:
    """Whether this interpreter has a compiled engine for these sources (whatever LOGYSTERA_PURE_PYTHON says here)."""
    saved = os.environ.pop("LOGYSTERA_PURE_PYTHON", None)
    try:
        return native._use_native()
    finally:
        if saved is not None:
            os.environ["LOGYSTERA_PURE_PYTHON"] = saved


BUILT = _built()

DETECTORS = """
import hashlib, io, pickle, sys, operators
from operators import snapshot
from pathlib import Path
from operators.routing import RoutingTable
from operators.site import SiteDetector
from operators.snapshot import SnapshotCodec
from schemas.records import parse_lines
from schemas.rule_loader import load_rules
from simulate.corpus import generate_corpus
rules = load_rules(Path("rules")).enabled_rules
table = RoutingTable(rules)
lines = [(n, line.encode()) for n, line in enumerate(generate_corpus(5_000, 6, seed=5, duration_s=9000), 1)]
detectors, out = {}, []
for record in parse_lines(lines)[0]:
    detector = detectors.get(record.site) or detectors.setdefault(record.site, SiteDetector(table, record.site))
    detector.process(record, out)
codec = SnapshotCodec(table, 60_000)
"""

SNAPSHOTS = DETECTORS + """
digest = hashlib.sha256()
for site in sorted(detectors):
    data = codec.dump(detectors[site])
    assert codec.dump(codec.load(data)) == data
    digest.update(data)
print(operators.NATIVE, len(out), digest.hexdigest())
"""


FORMER = DETECTORS + """
class FormerPickler(pickle.Pickler):
    # format 2's pickler: shared objects by reference, the engine's objects pickled as they are

    def __init__(self, file, ids):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.ids = ids

    def reducer_override(self, obj):
        pid = self.ids.get(id(obj))
        return NotImplemented if pid is None else (snapshot.shared, pid)


def former(detector):
    buffer = io.BytesIO()
    state = (2, snapshot._site_of(detector), (detector.clock, detector.ticks, detector.tick_max, detector.dues), detector.runners, None)
    FormerPickler(buffer, codec._ids).dump(state)
    return buffer.getvalue()


if sys.argv[1] == "write":  # on pure Python, as format 2 was written
    pickle.dump([(former(detectors[site]), codec.dump(detectors[site])) for site in sorted(detectors)], sys.stdout.buffer)
else:
    pairs = pickle.load(sys.stdin.buffer)
    assert all(codec.dump(codec.load(old)) == new for old, new in pairs)
    print(operators.NATIVE, len(pairs), len(out))
"""


def run(script: str, pure: bool, *args: str, stdin: bytes | None = None) -> bytes:
    env = {key: value for key, value in os.environ.items() if key != "LOGYSTERA_PURE_PYTHON"}
    if pure:
        env["LOGYSTERA_PURE_PYTHON"] = "1"
    return subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, env=env, input=stdin, capture_output=True, check=True).stdout


@pytest.mark.process
def test_a_format_2_snapshot_is_restored_exactly_by_either_engine() -> None:
    written = run(FORMER, True, "write")
    for pure in (True, False):
        native, sites, notifications = run(FORMER, pure, "read", stdin=written).decode().split()
        assert native == str(BUILT and not pure)
        assert int(sites) == 6 and int(notifications) > 0


@pytest.mark.process
@pytest.mark.skipif(not BUILT, reason="no compiled engine in this interpreter (make builds one where it can)")
def test_a_snapshot_is_the_same_bytes_whether_the_engine_is_compiled_or_not() -> None:
    runs = {pure: run(SNAPSHOTS, pure).decode().split() for pure in (False, True)}
    assert runs[False][0] == "True" and runs[True][0] == "False"  # each run used the engine it was meant to
    assert int(runs[False][1]) > 0  # the detectors decided something, so their state is not trivial
    assert runs[False][1:] == runs[True][1:]


def test_a_build_is_used_only_for_the_sources_it_was_made_from(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LOGYSTERA_PURE_PYTHON", raising=False)
    monkeypatch.setattr(native, "NATIVE_DIR", tmp_path)
    assert not native._use_native()  # no build at all
    (tmp_path / native.SOURCES_FILE).write_text(native.sources_digest() + "\n")
    assert native._use_native()
    monkeypatch.setenv("LOGYSTERA_PURE_PYTHON", "1")
    assert not native._use_native()
    monkeypatch.delenv("LOGYSTERA_PURE_PYTHON")
    (tmp_path / native.SOURCES_FILE).write_text(hashlib.sha256(b"an older engine").hexdigest() + "\n")
    assert not native._use_native()


def test_every_native_module_is_the_compiled_one_when_the_build_is_used() -> None:
    # One check decides for both packages (schemas.native): never a mix.
    modules = [importlib.import_module(name) for name in native.NATIVE_MODULES]
    compiled = {module.__name__: not str(module.__file__).endswith(".py") for module in modules}
    assert compiled == dict.fromkeys(native.NATIVE_MODULES, operators.NATIVE)
