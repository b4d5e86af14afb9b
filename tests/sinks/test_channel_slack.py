"""The Slack channel against a Slack-shaped endpoint that checks Block Kit structure and limits and answers like Slack."""

from __future__ import annotations

import httpx

from schemas.rules import SlackChannel
from sinks import slack
from sinks.channel import SendResult
from tests.support.factories import HOSTILE, huge_notification, make_notification, resolved_notification, typed
from tests.support.limits import slack_problems
from tests.support.receivers import Reply, SlackReceiver, send_all


def slack_channel(url: str) -> SlackChannel:
    return SlackChannel.model_validate({"name": "ops-slack", "type": "slack", "url": url})


def test_every_kind_of_notification_is_accepted_by_the_endpoint() -> None:
    notifications = [make_notification(), make_notification(seq=2), resolved_notification(), huge_notification()]
    with SlackReceiver() as endpoint:
        results = send_all(slack_channel(endpoint.url), *notifications, collapsed=3)
        received = endpoint.wait_for(4)
    assert results == [SendResult(True, 200, False, None, "")] * 4
    assert endpoint.problems == []
    headers = [seen.json["blocks"][0]["text"]["text"] for seen in received]
    assert headers[:3] == ["[HIGH] Mail delivery is failing"] * 2 + ["[HIGH] Resolved: Mail delivery is failing"]
    assert all("Replaces 3 earlier notifications of this alert" in seen.json["blocks"][1]["text"]["text"] for seen in received)


def test_the_layout_names_what_the_contract_asks_for() -> None:
    payload = slack.render(typed(make_notification()))
    kinds = [block["type"] for block in payload["blocks"]]
    assert kinds == ["header", "section", "section", "section", "actions", "context"]
    fields = [field["text"].split("\n")[0] for field in payload["blocks"][2]["fields"]]
    assert fields == ["*Site*", "*Subsystem*", "*Group*", "*Started*", "*Re-evaluated*"]
    assert payload["blocks"][3]["text"]["text"].startswith("*Evidence (first 3 of 12 signals)*\n```{")
    assert payload["blocks"][4]["elements"][0]["url"] == make_notification()["link"]


def test_huge_and_hostile_text_stays_within_limits_and_escaped() -> None:
    payload = slack.render(typed(huge_notification()), collapsed=2)
    assert slack_problems(payload) == []
    assert len(payload["blocks"][0]["text"]["text"]) == 150
    mrkdwn = [payload["text"]] + [text for block in payload["blocks"] for text in _mrkdwn_texts(block)]
    assert all("<" not in text and ">" not in text for text in mrkdwn)  # no link, mention or tag from the record
    evidence = payload["blocks"][3]["text"]["text"]
    assert evidence.count("```") == 2 and evidence.endswith("```")  # the record's own fences cannot close the block
    assert len(evidence) <= 3000 and "first 5 of 1000000000 signals" in evidence


def test_a_link_too_long_for_a_button_gets_none() -> None:
    payload = slack.render(typed(make_notification() | {"link": "https://logystera.example/alerts/" + "a" * 3000}))
    assert [block["type"] for block in payload["blocks"]] == ["header", "section", "section", "section", "context"]


def test_the_endpoint_rejects_what_slack_would_and_the_sender_maps_it() -> None:
    """The receiver is strict: a payload over the limits gets Slack's ``400 invalid_blocks``, a permanent failure."""
    too_many = {"text": "x", "blocks": [{"type": "divider"}] * 51}
    long_header = {"text": "x", "blocks": [{"type": "header", "text": {"type": "plain_text", "text": "h" * 151}}]}
    long_section = {"text": "x", "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "s" * 3001}}]}
    empty_field = {"text": "x", "blocks": [{"type": "section", "fields": [{"type": "mrkdwn", "text": ""}]}]}
    assert slack_problems(too_many) == ["blocks must be a list of 1..50"]
    assert slack_problems(long_header) == ["block 0 header: 151 chars, limit 150"]
    assert slack_problems(long_section) == ["block 0 section text: 3001 chars, limit 3000"]
    assert slack_problems(empty_field) == ["block 0 field 0: empty text"]
    assert slack_problems({"blocks": [{"type": "image"}]}) == [
        "no top-level text (the notification fallback)", "block 0: unknown block {'type': 'image'}"]
    with SlackReceiver() as endpoint:
        response = httpx.post(endpoint.url, json=too_many)
        assert (response.status_code, response.text) == (400, "invalid_blocks")
        [result] = send_all(slack_channel(endpoint.url), make_notification())
    assert result.delivered and len(endpoint.problems) == 1


def test_slack_error_bodies_become_the_error_text() -> None:
    with SlackReceiver() as endpoint:
        endpoint.answer(Reply(404, b"no_service"), Reply(410, b"channel_is_archived"), Reply(500, b"rollup_error"),
                        Reply(429, b"rate_limited", {"retry-after": "30"}))
        results = send_all(slack_channel(endpoint.url), *[make_notification()] * 4)
    assert results == [
        SendResult(False, 404, False, None, "HTTP 404: no_service"),
        SendResult(False, 410, False, None, "HTTP 410: channel_is_archived"),
        SendResult(False, 500, True, None, "HTTP 500: rollup_error"),
        SendResult(False, 429, True, 30.0, "HTTP 429: rate_limited"),
    ]


def _mrkdwn_texts(block: dict) -> list[str]:  # type: ignore[type-arg]
    texts = [block["text"]] if block["type"] == "section" and "text" in block else []
    texts += block.get("fields", []) + (block.get("elements", []) if block["type"] == "context" else [])
    return [text["text"] for text in texts if text["type"] == "mrkdwn"]


def test_hostile_text_keeps_its_characters() -> None:
    """Escaping changes only ``& < >`` (and splits code fences): nothing else of the record is lost."""
    payload = slack.render(typed(make_notification(summary=HOSTILE)))
    text = payload["blocks"][1]["text"]["text"]
    readable = HOSTILE.replace("\r\n", "\n").replace("\x00", " ")
    assert text == readable.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
