"""The contracts: signal, rule and notification models, and the parsing of signal lines into records.

Its per-line parsing modules run compiled where the engine does: one build and one check of its sources
(:mod:`schemas.native`) decide for both packages, so a process never runs compiled parsing with a pure engine or
the reverse.
"""

from schemas.native import NATIVE, NATIVE_ROOT

if NATIVE:
    __path__.insert(0, str(NATIVE_ROOT / "schemas"))  # the compiled modules are found first, under the same names
