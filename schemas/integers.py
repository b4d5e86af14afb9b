"""The range of every integer of the contract, in a module that imports nothing.

:mod:`schemas.durations` needs it to parse the command line's durations,
which happens before any model is imported (a local cluster's other
processes start right after the arguments are parsed: ``flows.cluster``).
"""

MAX_SAFE_INTEGER = 2**53 - 1
"""Every integer of a signal lies within ±this (signals.md): the range every JSON parser represents exactly, which
every store column holds (``seq`` is ``UInt64``) and every float sum adds exactly. Each ``int`` field of
:mod:`schemas.signals` carries it or a narrower range; ``tests/schemas`` checks that none is left unbounded."""
