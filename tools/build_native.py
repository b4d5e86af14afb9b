"""Compile the detection engine and the per-line parsing with mypyc into the interpreter's prefix (``make`` runs this; optional).

Usage, from the repository root: ``.venv/bin/python tools/build_native.py``.
Builds :data:`schemas.native.NATIVE_MODULES` in a temporary directory and installs
them in :data:`schemas.native.NATIVE_ROOT` (a directory per package) with the digest
of their sources, which :mod:`schemas.native` checks before they are used. Without
mypyc or a C compiler it says so and exits 0: they then stay pure Python,
which is the same program, only slower.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from schemas.native import NATIVE_DIR, NATIVE_MODULES, NATIVE_ROOT, SOURCES_FILE, sources_digest  # noqa: E402


def build() -> str:
    """Build and install the compiled modules; a line saying what happened."""
    try:
        from mypyc.build import mypycify
        from setuptools import Distribution
    except ImportError as error:
        return f"native engine not built ({error.name} is not installed): the engine runs as pure Python"
    digest = sources_digest()
    os.chdir(ROOT)  # mypycify names modules by their paths from here
    with tempfile.TemporaryDirectory(prefix="logystera-native-") as tmp:
        try:
            # A dotted group name puts the shared library inside the package, beside the modules.
            paths = [f"{name.replace('.', '/')}.py" for name in NATIVE_MODULES]
            extensions = mypycify(paths, opt_level="3", group_name="operators._native")
            dist = Distribution({"name": "logystera-native", "ext_modules": extensions})
            command: object = dist.get_command_obj("build_ext")
            command.build_lib, command.build_temp = f"{tmp}/lib", f"{tmp}/temp"  # type: ignore[attr-defined]
            dist.run_command("build_ext")
        except (Exception, SystemExit) as error:  # no C compiler, or mypyc refused a module
            return f"native engine not built ({str(error).splitlines()[0] if str(error) else type(error).__name__}): pure Python"
        shutil.rmtree(NATIVE_ROOT, ignore_errors=True)
        for package in sorted({name.partition(".")[0] for name in NATIVE_MODULES}):
            (NATIVE_ROOT / package).mkdir(parents=True)
            for built in (Path(tmp) / "lib" / package).glob("*.so"):
                shutil.copy2(built, NATIVE_ROOT / package / built.name)
    (NATIVE_DIR / SOURCES_FILE).write_text(digest + "\n")
    return f"native engine built in {NATIVE_ROOT} ({len(NATIVE_MODULES)} modules compiled with mypyc)"


if __name__ == "__main__":
    print(build())
