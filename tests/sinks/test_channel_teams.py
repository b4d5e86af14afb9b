"""The Teams channel against a Workflows-shaped endpoint that checks the envelope, the Adaptive Card and the 28 KB limit."""

from __future__ import annotations

import json

import httpx

from schemas.rules import TeamsChannel
from sinks import teams
from sinks.alert_view import alert_view, clipped
from sinks.channel import SendResult
from tests.support.factories import huge_notification, make_notification, resolved_notification, typed
from tests.support.limits import TEAMS_MAX_BYTES, teams_problems
from tests.support.receivers import TeamsReceiver, send_all


def teams_channel(url: str) -> TeamsChannel:
    return TeamsChannel.model_validate({"name": "ops-teams", "type": "teams", "url": url})


def card(body: bytes) -> dict:  # type: ignore[type-arg]
    return json.loads(body)["attachments"][0]["content"]  # type: ignore[no-any-return]


def test_every_kind_of_notification_is_accepted_with_202() -> None:
    """202 is what a Workflows trigger answers once it has taken the request: delivered, though not yet shown."""
    notifications = [make_notification(), resolved_notification(), huge_notification()]
    with TeamsReceiver() as endpoint:
        results = send_all(teams_channel(endpoint.url), *notifications, collapsed=2)
        received = endpoint.wait_for(3)
    assert results == [SendResult(True, 202, False, None, "")] * 3
    assert endpoint.problems == []
    cards = [card(seen.body) for seen in received]
    assert [content["body"][0]["text"] for content in cards[:2]] == ["[HIGH] Mail delivery is failing",
                                                                     "[HIGH] Resolved: Mail delivery is failing"]
    assert [content["body"][0]["color"] for content in cards] == ["Attention", "Good", "Attention"]
    texts = [[block["text"] for block in content["body"] if block["type"] == "TextBlock"] for content in cards]
    assert all(any(text.startswith("Replaces 2 earlier") for text in card_texts) for card_texts in texts)


def test_the_card_names_what_the_contract_asks_for() -> None:
    content = card(teams.render(typed(make_notification())))
    facts = next(block for block in content["body"] if block["type"] == "FactSet")["facts"]
    assert [fact["title"] for fact in facts] == ["Site", "Subsystem", "Group", "Started", "Re-evaluated"]
    assert content["actions"] == [{"type": "Action.OpenUrl", "title": "Open alert", "url": make_notification()["link"]}]
    monospace = [block["text"] for block in content["body"] if block.get("fontType") == "Monospace"]
    assert len(monospace) == 3 and all(json.loads(line)["type"] == "mail" for line in monospace)


def test_the_card_shrinks_to_fit() -> None:
    """Four-byte characters in every text and a long link: too big with every text at its limit, so the limits scale down."""
    dense = "🔥" * 4000
    evidence = [{"v": 1, "id": f"e{index}", "site": "shop-eu", "type": "mail", "ts": "2026-11-28T10:14:00.000Z",
                 "data": {"outcome": "failed", "transport": dense}} for index in range(5)]
    notification = make_notification() | dict(  # far beyond a valid record: the renderer must hold its limit all the same
        summary="s" + dense, group={"a": dense}, evidence=evidence, site=dense, subsystem=dense,
        rule={"id": "r", "title": dense, "kind": "match", "description": "d" + dense},
        link="https://logystera.example/alerts/" + "🔥" * 2900)
    body = teams.render(typed(notification), collapsed=1)
    full = teams._message(teams._card(clipped(alert_view(typed(notification), 1))))  # every text at its full-scale limit
    assert len(full) > TEAMS_MAX_BYTES >= len(body) and teams_problems(body) == []
    content = card(body)
    assert content["body"][1]["text"].startswith("s🔥") and content["actions"][0]["url"] == notification["link"]


def test_the_endpoint_rejects_what_teams_would_not_show() -> None:
    message_card = {"@type": "MessageCard", "summary": "old connector format", "text": "x"}
    oversized = json.loads(teams.render(typed(make_notification())))
    oversized["attachments"][0]["content"]["body"].append({"type": "TextBlock", "text": "x" * TEAMS_MAX_BYTES})
    oversized_body = json.dumps(oversized).encode()
    assert teams_problems(json.dumps(message_card).encode()) == ["not a message envelope with one attachment"]
    assert teams_problems(oversized_body) == [f"{len(oversized_body)} bytes, limit {TEAMS_MAX_BYTES}"]
    with TeamsReceiver() as endpoint:
        response = httpx.post(endpoint.url, content=oversized_body, headers={"content-type": "application/json"})
    assert response.status_code == 400 and endpoint.problems == [f"request 1: {len(oversized_body)} bytes, limit {TEAMS_MAX_BYTES}"]
