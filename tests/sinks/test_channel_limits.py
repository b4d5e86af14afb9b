"""Property: whatever text a record carries, Slack and Teams payloads stay within their limits and e-mails stay well-formed.

The checks are the receivers' own (written from the services' documented
limits), so this tests the renderers against an independent reading.
"""

from __future__ import annotations

import email
import email.policy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.signals import SITE_PATTERN
from sinks import email as email_channel
from sinks import slack, teams
from tests.support.factories import make_notification, typed
from tests.support.limits import email_problems, slack_problems, teams_problems

TEXT = st.text(st.characters(codec="utf-8"), max_size=6000) | st.text(st.sampled_from("<>&`*_\"\\\r\n\x00é🔥"), max_size=6000)
SHORT = st.text(st.characters(codec="utf-8"), min_size=1, max_size=300)


@st.composite
def notifications(draw: st.DrawFn) -> tuple[dict[str, Any], int]:
    evidence = [{"v": 1, "id": f"e{index}", "site": "shop-eu", "type": "mail", "ts": "2026-11-28T10:14:00.000Z",
                 "data": {"transport": draw(TEXT)}} for index in range(draw(st.integers(0, 12)))]
    record = make_notification() | dict(  # beyond what a valid record holds too: renderers must not rely on validation
        rule={"id": "r", "title": draw(SHORT), "kind": "match", "description": draw(st.none() | TEXT)},
        site=draw(st.from_regex(SITE_PATTERN, fullmatch=True)), subsystem=draw(SHORT), summary=draw(TEXT),
        group=draw(st.dictionaries(st.sampled_from(["a", "b", "c"]), TEXT, max_size=3)),
        evidence=evidence, evidence_total=len(evidence) + draw(st.integers(0, 10**9)),
        suppressed_count=draw(st.integers(0, 10**6)), status=draw(st.sampled_from(["firing", "resolved"])),
        link="https://logystera.example/alerts/" + draw(st.text(st.characters(codec="utf-8", categories=["L", "N"]), max_size=3000)),
    )
    return record, draw(st.integers(0, 10**6))


@settings(max_examples=60, deadline=None)
@given(notifications())
def test_every_rendering_stays_within_its_limits(case: tuple[dict[str, Any], int]) -> None:
    notification, collapsed = typed(case[0]), case[1]
    assert slack_problems(slack.render(notification, collapsed)) == []
    assert teams_problems(teams.render(notification, collapsed)) == []
    sent = email_channel.render(notification, collapsed, sender="alerts@logystera.example", to=["ops@example.com"], date=0.0)
    parsed = email.message_from_bytes(sent.as_bytes(), policy=email.policy.default)
    assert email_problems(parsed) == []  # type: ignore[arg-type]
