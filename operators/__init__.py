"""The detection engine: compiled with mypyc where ``make`` could build it, pure Python otherwise (:mod:`schemas.native`)."""

from schemas.native import NATIVE, NATIVE_ROOT

if NATIVE:
    __path__.insert(0, str(NATIVE_ROOT / "operators"))  # the compiled modules are found first, under the same names
