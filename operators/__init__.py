"""The detection engine: compiled with mypyc where ``make`` could build it, pure Python otherwise.

``tools/build_native.py`` (run by ``make`` when it sets up ``.venv``) compiles
:data:`NATIVE_MODULES` into :data:`NATIVE_DIR`, inside the interpreter's
prefix, with the digest of the sources it compiled. This package uses that
build only while the sources are exactly those (an edited module makes the
whole engine pure Python again, never a stale mix) and unless
``LOGYSTERA_PURE_PYTHON`` is set: the tests run the engine both ways. The
two are the same program, byte for byte in what they output, snapshots
included (:mod:`operators.snapshot` writes engine objects the same way for both).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

NATIVE_MODULES = ("compiled", "conditions", "engine", "fingerprints", "metrics", "routing", "site", "windows")
"""The per-record engine, metric buckets included (per record too when the flow stores them: compiled, the Python
side of a replay with a store runs 13% fewer instructions). Not :mod:`operators.notification` (its objects cross
processes, and it runs per notification) nor :mod:`operators.snapshot` (cold, and it stays plain Python)."""

NATIVE_DIR = Path(sys.prefix) / "logystera-native" / "operators"
SOURCES_FILE = "SOURCES"


def sources_digest() -> str:
    """SHA-256 of the native modules' sources, in :data:`NATIVE_MODULES` order: what a build is valid for."""
    digest = hashlib.sha256()
    for name in NATIVE_MODULES:
        digest.update((Path(__file__).with_name(f"{name}.py")).read_bytes())
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
"""Whether the engine runs compiled in this process."""
if NATIVE:
    __path__.insert(0, str(NATIVE_DIR))  # the compiled modules are found first, under the same names
