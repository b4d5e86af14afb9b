"""The build of the compiled modules (mypyc): which modules, where, and whether this process uses it.

``tools/build_native.py`` (run by ``make`` when it sets up ``.venv``) compiles
:data:`NATIVE_MODULES` (the detection engine of :mod:`operators` and the
per-line parsing of :mod:`schemas`) into :data:`NATIVE_ROOT`, inside the
interpreter's prefix, with the digest of the sources it compiled. Both
packages use that build only while the sources are exactly those (an edited
module makes every one of them pure Python again, never a stale mix) and
unless ``LOGYSTERA_PURE_PYTHON`` is set: the tests run them both ways. The two
are the same program, byte for byte in what they output, snapshots included
(:mod:`operators.snapshot` writes engine objects the same way for both). It
lives in :mod:`schemas`, the package every other imports, so that one check
decides for both.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

NATIVE_MODULES = (
    "operators.compiled", "operators.conditions", "operators.engine", "operators.fingerprints", "operators.metrics",
    "operators.routing", "operators.site", "operators.windows", "schemas.fast_signals", "schemas.records",
)
"""The per-record engine, metric buckets included (per record too when the flow stores them: compiled, the Python
side of a replay with a store runs 13% fewer instructions), and the per-line parsing that feeds it
(:func:`schemas.records.parse_lines` and :func:`schemas.fast_signals.decode_signal`). Not
:mod:`operators.notification` (its objects cross processes, and it runs per notification) nor
:mod:`operators.snapshot` (cold, and it stays plain Python)."""

ROOT = Path(__file__).resolve().parents[1]
"""Where the packages of :data:`NATIVE_MODULES` are (the repository, or site-packages)."""
NATIVE_ROOT = Path(sys.prefix) / "logystera-native"
"""The build: a directory per package of :data:`NATIVE_MODULES`, each inserted first in that package's path."""
NATIVE_DIR = NATIVE_ROOT / "operators"
SOURCES_FILE = "SOURCES"
"""In :data:`NATIVE_DIR`: the digest of the sources the whole build was made from."""


def sources_digest() -> str:
    """SHA-256 of the native modules' sources, in :data:`NATIVE_MODULES` order: what a build is valid for."""
    digest = hashlib.sha256()
    for name in NATIVE_MODULES:
        digest.update((ROOT / f"{name.replace('.', '/')}.py").read_bytes())
    return digest.hexdigest()


def _use_native() -> bool:
    if os.environ.get("LOGYSTERA_PURE_PYTHON"):
        return False
    try:
        built = (NATIVE_DIR / SOURCES_FILE).read_text().strip()
    except OSError:
        return False
    return built == sources_digest()


NATIVE = _use_native()
"""Whether the engine and the parsing run compiled in this process."""
