"""Root of the test suite: the repository root on ``sys.path``, and the Kafka broker fixture.

pytest puts this folder (``tests/``) on ``sys.path`` to import this file. Alone
there, it would make ``tests/flows/``, ``tests/schemas/``… shadow the packages
``flows``, ``schemas``… as empty namespace packages; with the repository root on
the path the real (regular) packages win, and ``tests.kafka_broker`` imports.
"""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

pytest_plugins = ["tests.kafka_broker"]
