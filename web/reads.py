"""Reads of the store for one request: parameter-bound queries, scoped to what the viewer may see.

Every query of the console goes through :meth:`Reads.rows`. Values from the request (an alert id, a filter)
and the viewer's site filter are bound by the server as ``{name:Type}`` parameters; the SQL text is always
the console's own. A query's ``WHERE`` names the viewer's scope with ``$scope`` (see :meth:`Reads.rows`); a
query without it is refused, so forgetting the filter fails in the console's tests, not as a leak in production.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sinks.clickhouse import Store
from web.access import Viewer


@dataclass
class ReadStats:
    """What the queries of one request cost the store (``read_rows`` of each query's summary), for bench/web.py."""

    queries: int = 0
    rows_read: int = 0
    per_query: list[tuple[str, int]] = field(default_factory=list)


class Reads:
    """The store, as one viewer may read it during one request."""

    def __init__(self, store: Store, viewer: Viewer) -> None:
        self.store = store
        self.viewer = viewer
        self.stats = ReadStats()

    def scope(self, column: str = "site") -> str:
        """The condition that keeps ``column`` (a site id) within the viewer's sites (always true for everyone)."""
        if self.viewer.sees_everything:
            return "1"
        return f"match({column}, {{viewer_sites:String}})"

    def rows(self, name: str, sql: str, parameters: Mapping[str, Any] | None = None, **columns: str) -> list[dict[str, Any]]:
        """Run ``sql`` and return its rows as dicts; ``name`` labels the query in :class:`ReadStats`.

        ``sql`` must contain ``$scope`` (the viewer's filter on ``site``), or ``$scope_<key>`` for a
        ``columns`` entry (``rows(..., a="a.site")`` → ``$scope_a``); ``{name:Type}`` placeholders are bound from
        ``parameters``. The database is the store's (unqualified table names).
        """
        if "$scope" not in sql:
            raise ValueError(f"query {name!r} does not filter by the viewer's sites ($scope)")
        for key, column in sorted(columns.items(), key=lambda item: -len(item[0])):
            sql = sql.replace(f"$scope_{key}", self.scope(column))
        sql = sql.replace("$scope", self.scope())
        bound = dict(parameters or {})
        if not self.viewer.sees_everything:
            bound["viewer_sites"] = self.viewer.site_pattern
        result = self.store.query(sql, parameters=bound)
        read = int(result.summary.get("read_rows", 0)) if isinstance(result.summary, dict) else 0
        self.stats.queries += 1
        self.stats.rows_read += read
        self.stats.per_query.append((name, read))
        names = list(result.column_names)
        return [dict(zip(names, row, strict=True)) for row in result.result_rows]
