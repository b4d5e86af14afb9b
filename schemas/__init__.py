"""The contracts: signal, rule and notification models, and the parsing of signal lines into records.

The per-line parsing modules (those of :data:`operators.NATIVE_MODULES` here) run compiled where the engine
does: one build and one check of its sources (:mod:`operators`) decide for both packages, so a process never
runs compiled parsing with a pure engine or the reverse.
"""

import operators

if operators.NATIVE:
    __path__.insert(0, str(operators.NATIVE_ROOT / "schemas"))  # the compiled modules are found first, under the same names
