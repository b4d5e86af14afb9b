"""``/silences`` and ``/api/silences``: every silence, in force and expired, with what it held (docs/web.md "Silences").

The ``silences`` table has no site: a silence is a list of matchers (``site=shop-eu rule=~php-.*``), written by
``logystera silence add`` and applied by ``deliver``. What a viewer may see of it follows from two things:

- **what it held**: the ``silenced`` rows of ``deliveries`` joined with the alert each one held
  (``alerts_by_id``, which has the site) — only those of the viewer's sites are listed or counted (``$scope``);
- **what it could hold**: its ``site`` matchers, tested with the same code ``deliver`` uses
  (:meth:`schemas.matchers.Matcher.matches_value`) against the sites the viewer may see — the visible sites the
  store has alerts of, and the literal ``site=`` values the viewer's list admits.

A silence is listed when it held a notification of a visible site, or when its matchers can match a visible site
(a silence without a ``site`` matcher applies to every site, the viewer's too). A silence that only ever
concerned other sites is not listed: its matchers and comment name them.

Whether a silence is in force is a question about *now*: silences are wall-clock objects (``deliver`` applies
them at the moment it sends), so this page — unlike every other page of the console, which uses the store's
clock — reads the wall clock once per request, and says the instant it used.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from delivery.holds import SILENCED, Silence, iso_ms
from delivery.silences import SILENCE_FIELDS, silence_of_row
from web.access import Viewer
from web.pages import SECURITY_HEADERS, page, reads_for, wants_json
from web.reads import Reads

HELD_SHOWN = 50
"""Held notifications listed per silence (all of them are counted)."""

_IN_SCOPE_HELD = (
    "SELECT alert_id, any(site) AS alert_site, any(rule_id) AS alert_rule FROM alerts_by_id "  # noqa: S608 - constants
    f"WHERE alert_id IN (SELECT alert_id FROM deliveries_final WHERE outcome = '{SILENCED}') AND $scope GROUP BY alert_id"
)
"""The alerts of the viewer's sites that a silence held (``alerts_by_id`` is sorted by ``alert_id``)."""


@dataclass
class Held:
    """One notification a silence held on one channel, and the alert it belongs to."""

    alert_id: str
    seq: int
    channel: str
    held_at: int
    site: str
    rule_id: str

    def as_json(self) -> dict[str, Any]:
        """As the API answers it."""
        return {"alert_id": self.alert_id, "seq": self.seq, "channel": self.channel, "held_at": iso_ms(self.held_at),
                "site": self.site, "rule_id": self.rule_id}


@dataclass
class ListedSilence:
    """A silence as the page shows it: its state now, who ended it early, and what it held of the viewer's sites."""

    silence: Silence
    state: str
    held_count: int
    held: list[Held] = field(default_factory=list)

    @property
    def expired_by(self) -> str | None:
        """Who ended it before its planned end (``silence expire`` writes a second version), else None."""
        if self.silence.updated_at > self.silence.created_at and self.state == "expired":
            return self.silence.updated_by
        return None

    def as_json(self) -> dict[str, Any]:
        """As the API answers it."""
        silence = self.silence
        return {
            "id": silence.id, "state": self.state, "matchers": [str(m) for m in silence.matchers],
            "starts_at": iso_ms(silence.starts_at), "ends_at": iso_ms(silence.ends_at),
            "created_by": silence.created_by, "created_at": iso_ms(silence.created_at), "comment": silence.comment,
            "expired_by": self.expired_by, "held_count": self.held_count, "held": [h.as_json() for h in self.held],
        }


def could_match_visible(silence: Silence, viewer: Viewer, visible_sites: set[str]) -> bool:
    """Whether all the silence's ``site`` matchers match one site the viewer may see (no ``site`` matcher: any site)."""
    site_matchers = [m for m in silence.matchers if m.name == "site"]
    if not site_matchers or viewer.sees_everything:
        return True
    candidates = visible_sites | {m.value for m in site_matchers if m.op == "=" and viewer.may_see(m.value)}
    return any(all(m.matches_value(site) for m in site_matchers) for site in candidates)


def _visible_sites(reads: Reads) -> set[str]:
    """The sites of the viewer the store has alerts of (``alerts`` is sorted by site first)."""
    if reads.viewer.sees_everything:
        return set()  # not needed: every silence is in scope
    return {row["site"] for row in reads.rows("visible sites", "SELECT DISTINCT site FROM alerts WHERE $scope")}


def list_silences(reads: Reads, now_ms: int) -> tuple[list[ListedSilence], list[str]]:
    """The silences the viewer may see, newest first, each with its state at ``now_ms`` and what it held in scope.

    Also returns one line per stored silence that does not read back (its matchers edited into something invalid).
    """
    rows = reads.rows(
        "silences",
        f"SELECT {SILENCE_FIELDS}, h.held AS held FROM silences_current AS s LEFT JOIN "  # noqa: S608 - constants
        f"(SELECT held_by, count() AS held FROM deliveries_final WHERE outcome = '{SILENCED}' "
        f"AND alert_id IN (SELECT alert_id FROM ({_IN_SCOPE_HELD})) GROUP BY held_by) AS h ON h.held_by = s.id "
        "ORDER BY s.created_at DESC, s.id",
    )
    visible = _visible_sites(reads)
    listed, skipped = [], []
    for row in rows:
        values = list(row.values())
        try:
            silence = silence_of_row(values[:-1])
        except (ValueError, TypeError) as error:
            if int(row["held"]):
                skipped.append(f"silence {values[0]}: its matchers do not read back ({error})")
            continue
        held = int(row["held"])
        if held or could_match_visible(silence, reads.viewer, visible):
            listed.append(ListedSilence(silence, silence.state(now_ms), held))
    with_held = [item for item in listed if item.held_count]
    if with_held:
        found = reads.rows(
            "held notifications",
            "SELECT d.held_by AS silence_id, d.alert_id AS alert_id, d.seq AS seq, d.channel AS channel, "  # noqa: S608
            "toUnixTimestamp64Milli(d.attempted_at) AS held_at, a.alert_site AS site, a.alert_rule AS rule_id "
            f"FROM deliveries_final AS d INNER JOIN ({_IN_SCOPE_HELD}) AS a ON a.alert_id = d.alert_id "
            f"WHERE d.outcome = '{SILENCED}' AND d.held_by IN {{ids:Array(String)}} "
            f"ORDER BY silence_id, held_at DESC, alert_id, seq DESC, channel LIMIT {HELD_SHOWN} BY silence_id",
            {"ids": [item.silence.id for item in with_held]},
        )
        by_id = {item.silence.id: item for item in with_held}
        for row in found:
            by_id[row["silence_id"]].held.append(Held(row["alert_id"], int(row["seq"]), row["channel"],
                                                      int(row["held_at"]), row["site"], row["rule_id"]))
    return listed, skipped


def silences(request: Request) -> Response:
    """The silences page, or the same under ``/api/silences``."""
    reads = reads_for(request)
    now_ms = round(time.time() * 1000)  # silences are wall-clock objects: "in force" means now (module docstring)
    listed, skipped = list_silences(reads, now_ms)
    stats = reads.stats
    if wants_json(request):
        spent = {"queries": stats.queries, "rows_read": stats.rows_read,
                 "per_query": [{"name": name, "rows_read": rows} for name, rows in stats.per_query]}
        response: Response = JSONResponse(
            {"now": iso_ms(now_ms), "silences": [item.as_json() for item in listed], "skipped": skipped, "reads": spent},
            headers=SECURITY_HEADERS,
        )
    else:
        current = [item for item in listed if item.state != "expired"]
        expired = [item for item in listed if item.state == "expired"]
        response = page(request, "silences.html", {"now": iso_ms(now_ms), "current": current, "expired": expired,
                                                   "skipped": skipped, "held_shown": HELD_SHOWN, "iso": iso_ms})
    response.headers["x-rows-read"] = str(stats.rows_read)
    response.headers["x-queries"] = str(stats.queries)
    return response


ROUTES = [
    Route("/silences", silences),
    Route("/api/silences", silences),
]
