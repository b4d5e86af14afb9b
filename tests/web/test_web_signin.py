"""Signing in to a console with ``--users``, on a real uvicorn: Bearer, Basic, the form and its cookie, the brake.

Also the answers every console gives, signed in or not: the security headers on every response, and pages
without inline script or style (the Content-Security-Policy would block them).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from schemas.errors import UsageError
from schemas.rule_loader import RuleSet
from sinks.clickhouse import Store
from tests.web.console import assert_secured, console_client, inline_parts
from web.app import ConsoleConfig
from web.signin import SESSION_COOKIE, SESSION_KEY_ENV, SESSION_SECONDS, FailureLimiter, SignIn, session_key
from web.users import Users, hash_token, load_users

ALICE = "alice-" + "t" * 40
BOB = "bob-" + "u" * 40
PAGE = "/alerts"
"""A page that needs a viewer (served by web/lists.py once merged; until then the 404 page, which needs one too)."""


class Clock:
    """Wall and monotonic time for the console under test, moved by the test."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def users_file(tmp_path: Path, alice_token: str = ALICE) -> Path:
    path = tmp_path / "users.yaml"
    path.write_text(
        f"users:\n"
        f"  - name: alice\n    token_sha256: {hash_token(alice_token)}\n    sites: [site-a]\n"
        f"  - name: bob\n    token_sha256: {hash_token(BOB)}\n    sites: ['site-*']\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sign_in(tmp_path: Path, clock: Clock) -> SignIn:
    return SignIn(load_users(users_file(tmp_path)), b"k" * 32, FailureLimiter(burst=3, refill_seconds=10, clock=clock), clock)


@pytest.fixture
def console(store: Store, sign_in: SignIn) -> Iterator[httpx.Client]:
    config = ConsoleConfig(store=store, ruleset=RuleSet(), store_dsn="chdb://test", authenticate=sign_in)
    with console_client(config, follow_redirects=False) as client:
        yield client


def basic(name: str, token: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{name}:{token}".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def who(response: httpx.Response) -> str | None:
    match = re.search(r'<span class="who">([^<]*)</span>', response.text)
    return match.group(1) if match else None


def test_a_request_naming_no_one_goes_to_the_form_or_gets_a_challenge(console: httpx.Client) -> None:
    page = console.get(PAGE + "?site=site-a")
    assert page.status_code == 303 and page.headers["location"] == "/login?next=/alerts%3Fsite%3Dsite-a"
    api = console.get("/api/alerts")
    assert api.status_code == 401 and api.json()["error"] == "Sign in"
    assert api.headers["www-authenticate"] == 'Bearer realm="logystera", Basic realm="logystera", charset="UTF-8"'
    assert console.get("/healthz").json() == {"status": "ok"}  # liveness needs no one
    assert console.get("/static/console.css").status_code == 200


def test_bearer_and_basic_sign_in_and_a_wrong_token_is_the_same_401_whoever_it_claims(console: httpx.Client) -> None:
    assert who(console.get(PAGE, headers=bearer(ALICE))) == "alice"
    assert who(console.get(PAGE, headers=basic("bob", BOB))) == "bob"
    wrong = [
        console.get(PAGE, headers=basic("alice", BOB)),  # bob's token under alice's name
        console.get(PAGE, headers=basic("carol", "x" * 46)),  # no such user
    ]
    assert [answer.status_code for answer in wrong] == [401, 401]
    assert wrong[0].text == wrong[1].text and wrong[0].headers["www-authenticate"] == wrong[1].headers["www-authenticate"]
    assert 'data-status="401"' in wrong[0].text


@pytest.mark.parametrize("header", [
    "Bearer", "Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode(), "Digest x=1", "Bearer " + "x" * 600,
])
def test_an_unreadable_authorization_header_is_a_failed_sign_in(console: httpx.Client, header: str) -> None:
    answer = console.get("/api/alerts", headers={"authorization": header})
    assert answer.status_code == 401 and "www-authenticate" in answer.headers


def test_the_form_sets_a_strict_http_only_cookie_that_signs_in_until_it_expires_or_is_signed_out(
    console: httpx.Client, clock: Clock,
) -> None:
    form = console.get("/login?next=/rules")
    assert form.status_code == 200 and '<form id="login" method="post" action="/login">' in form.text
    assert 'name="next" value="/rules"' in form.text and who(form) is None

    refused = console.post("/login", data={"token": BOB + "x", "next": "/rules"})
    assert refused.status_code == 401 and "This token is not valid" in refused.text and SESSION_COOKIE not in refused.cookies
    assert "Basic" not in refused.headers["www-authenticate"]  # no browser dialog over the form

    signed = console.post("/login", data={"token": ALICE, "next": "/rules"})
    assert signed.status_code == 303 and signed.headers["location"] == "/rules"
    cookie = signed.headers["set-cookie"]
    assert re.fullmatch(
        rf"{SESSION_COOKIE}=alice\.\d+\.[0-9a-f]{{64}}; HttpOnly; Max-Age={SESSION_SECONDS}; Path=/; SameSite=strict", cookie,
    ), cookie
    signed_in = console.get(PAGE)  # the client keeps the cookie
    assert who(signed_in) == "alice" and '<form class="logout" method="post" action="/logout">' in signed_in.text
    assert console.get("/login").headers["location"] == "/alerts"  # already signed in: straight on

    clock.now += SESSION_SECONDS + 1
    assert console.get(PAGE).status_code == 303  # expired: back to the form
    clock.now -= SESSION_SECONDS + 1
    assert who(console.get(PAGE)) == "alice"

    out = console.post("/logout")
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert SESSION_COOKIE not in console.cookies
    assert console.get(PAGE).status_code == 303


def test_a_cookie_verifies_only_as_signed_for_the_user_and_their_current_token(tmp_path: Path, sign_in: SignIn) -> None:
    alice = sign_in.users.named("alice")
    assert alice is not None
    value = sign_in.session_value(alice)
    assert sign_in.session_user(value) is alice
    name, expiry, signature = value.split(".")
    edited = [
        f"bob.{expiry}.{signature}",  # another name
        f"{name}.{int(expiry) + 3600}.{signature}",  # a later expiry
        f"{name}.{expiry}.{signature[:-1]}0" if signature[-1] != "0" else f"{name}.{expiry}.{signature[:-1]}1",
        f"{name}.{expiry}", "", "alice", f"{name}.x.{signature}", f"{name}.²³.{signature}", f"{name}.{'9' * 40}.{signature}",
    ]
    assert [sign_in.session_user(bad) for bad in edited] == [None] * len(edited)
    other_key = SignIn(sign_in.users, b"j" * 32, clock=sign_in._clock)
    assert other_key.session_user(value) is None  # another process's random key
    (tmp_path / "rotated").mkdir()
    rotated = SignIn(load_users(users_file(tmp_path / "rotated", alice_token="new-" + "n" * 40)), b"k" * 32, clock=sign_in._clock)
    assert rotated.session_user(value) is None  # alice was given a new token: her old sessions end
    removed = SignIn(Users(tuple(user for user in sign_in.users.users if user.name != "alice")), b"k" * 32, clock=sign_in._clock)
    assert removed.session_user(value) is None


def test_the_form_refuses_other_origins_and_goes_on_only_to_this_console(console: httpx.Client) -> None:
    foreign = console.post("/login", data={"token": ALICE}, headers={"origin": "https://evil.example"})
    assert foreign.status_code == 403 and SESSION_COOKIE not in foreign.cookies
    assert console.post("/logout", headers={"origin": "null"}).status_code == 403
    own = console.post("/login", data={"token": ALICE, "next": "/rules"}, headers={"origin": str(console.base_url).rstrip("/")})
    assert own.status_code == 303
    console.cookies.clear()
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "rules"):
        answer = console.post("/login", data={"token": ALICE, "next": target})
        assert answer.headers["location"] == "/alerts", target
        console.cookies.clear()
    assert console.post("/login", content=b"token=" + b"x" * 5000,
                        headers={"content-type": "application/x-www-form-urlencoded"}).status_code == 413


def test_wrong_tokens_are_braked_per_client_then_allowed_again(console: httpx.Client, clock: Clock) -> None:
    for _ in range(3):
        assert console.get("/api/alerts", headers=bearer("guess")).status_code == 401
    braked = console.get("/api/alerts", headers=bearer(ALICE))  # even the right token waits
    assert braked.status_code == 429 and braked.headers["retry-after"] == "10"
    assert console.post("/login", data={"token": ALICE}).status_code == 429
    assert console.get("/api/alerts").status_code == 401  # naming no one is not a guess: the usual challenge
    clock.now += 10
    assert console.get(PAGE, headers=bearer(ALICE)).status_code not in (401, 429)
    assert console.post("/login", data={"token": "guess"}).status_code == 401  # the form counts too
    assert console.get(PAGE, headers=bearer(ALICE)).status_code == 429


def test_the_brake_remembers_a_bounded_number_of_clients() -> None:
    clock = Clock()
    limiter = FailureLimiter(burst=2, refill_seconds=5, max_clients=100, clock=clock)
    for n in range(1000):
        limiter.fail(f"10.0.{n // 256}.{n % 256}")
        limiter.fail(f"10.0.{n // 256}.{n % 256}")
    assert len(limiter._buckets) == 100
    assert limiter.wait("10.0.3.231") == 5.0 and limiter.wait("10.0.0.0") == 0.0  # the oldest were forgotten
    clock.now += 2.5
    assert limiter.wait("10.0.3.231") == 2.5


# -- what every response carries -------------------------------------------------------------------


def test_every_response_carries_the_security_headers_and_no_page_has_inline_script_or_style(
    console: httpx.Client, clock: Clock,
) -> None:
    answers = [
        console.get(PAGE), console.get("/api/alerts"), console.get("/login"), console.get("/healthz"),
        console.get("/static/console.css"), console.get("/static/nothing.css"),
        console.post("/login", data={"token": "nope"}), console.post("/login", headers={"origin": "https://x.example"}),
        console.get(PAGE, headers=bearer(ALICE)), console.get("/no/such/page", headers=bearer(ALICE)),
        console.get("/api/no/such", headers=basic("bob", BOB)), console.post("/logout"),
    ]
    for _ in range(3):
        answers.append(console.get(PAGE, headers=bearer("guess")))
    answers.append(console.get(PAGE, headers=bearer("guess")))  # 429
    assert {answer.status_code for answer in answers} >= {200, 303, 401, 403, 404, 429}
    for answer in answers:
        assert_secured(answer)


def test_the_inline_finder_finds_what_the_policy_blocks() -> None:
    page = '<p style="color:red">x</p><script>1</script><style>p{}</style><a href="javascript:x()" onclick="y()">z</a>'
    assert inline_parts(page) == ["p[style]", "<script>", "<style>", "a[onclick]", "a[href=javascript:]"]


def test_behind_a_local_proxy_the_brake_counts_the_forwarded_client(console: httpx.Client) -> None:
    first, second = {"x-forwarded-for": "10.0.0.1"}, {"x-forwarded-for": "10.0.0.2"}
    for _ in range(3):
        assert console.get("/api/alerts", headers={**bearer("guess"), **first}).status_code == 401
    assert console.get("/api/alerts", headers={**bearer("guess"), **first}).status_code == 429
    assert console.get("/api/alerts", headers={**bearer("guess"), **second}).status_code == 401


def test_without_users_there_is_nothing_to_sign_in_to(store: Store) -> None:
    with console_client(ConsoleConfig(store=store, ruleset=RuleSet(), store_dsn="chdb://test"), follow_redirects=False) as client:
        assert client.get("/login").headers["location"] == "/alerts"
        assert client.post("/login", data={"token": "x"}).headers["location"] == "/alerts"
        page = client.get(PAGE)
        assert who(page) == "local" and 'action="/logout"' not in page.text


def test_the_session_key_is_random_per_process_unless_the_environment_gives_one() -> None:
    assert session_key({}) != session_key({}) and len(session_key({})) == 32
    assert session_key({SESSION_KEY_ENV: "k" * 32}) == b"k" * 32
    with pytest.raises(UsageError, match=f"^{SESSION_KEY_ENV}: must have at least 32 characters"):
        session_key({SESSION_KEY_ENV: "short"})
