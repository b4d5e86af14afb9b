"""Root of the test suite: the shared fixtures, loaded as plugins from ``tests/support/``.

The repository root is on ``sys.path`` through pytest's ``pythonpath``
(pyproject.toml), so ``tests.support`` and the packages import from here.
"""

pytest_plugins = ["tests.support.kafka_broker", "tests.support.store", "tests.support.browser"]
