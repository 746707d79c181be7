"""Unit tests of the pure rules: status ranks, opt-out keywords, Send validation, page tokens, phone numbers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from server import paging
from server import status as st
from server.config import Config, ConfigError
from server.errors import InvalidArgument
from server.gateway import opt_keyword, validate_send
from server.phone import normalise_lenient, to_e164


@pytest.mark.parametrize(
    ("current", "new", "moves"),
    [
        ("queued", "sending", True),
        ("sending", "sent", True),
        ("sent", "delivered", True),
        ("queued", "delivered", True),
        ("delivered", "read", True),
        ("sent", "queued", False),
        ("delivered", "sent", False),
        ("delivered", "failed", False),
        ("failed", "delivered", False),
        ("undelivered", "delivered", False),
        ("sent", "sent", False),
        ("accepted", "queued", False),
        ("scheduled", "sending", True),
    ],
)
def test_status_ranks(current: str, new: str, moves: bool) -> None:
    assert st.moves(current, new) is moves


def test_parse_status() -> None:
    assert st.parse_status(" Delivered ") == "delivered"
    with pytest.raises(InvalidArgument):
        st.parse_status("lost")


@pytest.mark.parametrize(
    "body", ["STOP", " stop ", "Stopall", "unsubscribe", "CANCEL", "end", "quit", "REVOKE", "optout"]
)
def test_opt_out_words(body: str) -> None:
    assert opt_keyword(body) is True


@pytest.mark.parametrize("body", ["START", "unstop", " yes"])
def test_opt_in_words(body: str) -> None:
    assert opt_keyword(body) is False


@pytest.mark.parametrize("body", ["stop it", "please STOP", "", "yes please", "starting"])
def test_other_bodies_change_nothing(body: str) -> None:
    assert opt_keyword(body) is None


def test_validate_send_normalises_and_fingerprints() -> None:
    cfg = Config()
    a = validate_send(cfg, "(415) 555-0100", "hi", [], "", "k")
    assert a.to == "+14155550100"
    b = validate_send(cfg, "+1 415 555 0100", "hi", [], "", "k")
    c = validate_send(cfg, "+1 415 555 0100", "hi!", [], "", "k")
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


@pytest.mark.parametrize(
    ("to", "body", "media", "field"),
    [
        ("12", "hi", [], "to"),
        ("+44 20", "hi", [], "to"),
        ("+14155550100", "", [], "body"),
        ("+14155550100", "x" * 1601, [], "body"),
        ("+14155550100", "hi", ["javascript:alert(1)"], "media_urls"),
        ("+14155550100", "hi", ["https://a.example/x"] * 11, "media_urls"),
    ],
)
def test_validate_send_rejects(to: str, body: str, media: list[str], field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_send(Config(), to, body, media, "", "")
    assert info.value.field == field


def test_region_applies_to_national_numbers() -> None:
    assert to_e164("020 7946 0958", "GB") == "+442079460958"
    assert normalise_lenient("MG123", "US") == "MG123"


def test_page_tokens_round_trip_and_reject_garbage() -> None:
    t = datetime(2026, 11, 26, 8, 0, 0, 123000, tzinfo=UTC)
    token = paging.encode_token("messages", t, "abc")
    assert paging.decode_token("messages", token) == (t, "abc")
    assert paging.decode_token("messages", "") is None
    for bad in ("!!", token[:-3], paging.encode_token("conversations", t, "abc")):
        with pytest.raises(InvalidArgument):
            paging.decode_token("messages", bad)
    assert paging.page_size(0) == paging.DEFAULT_PAGE_SIZE
    assert paging.page_size(10**6) == paging.MAX_PAGE_SIZE
    with pytest.raises(InvalidArgument):
        paging.page_size(-1)


def test_config_from_env_and_errors() -> None:
    cfg = Config.from_env({"SMS_RETRY_DELAYS": "0.5,1", "SMS_WEBHOOK_VERIFY": "false", "SMS_GRPC_ADDR": "0.0.0.0:1"})
    assert cfg.retry_delays == (0.5, 1.0) and cfg.webhook_verify is False and cfg.grpc_target == "0.0.0.0:1"
    with pytest.raises(ConfigError, match="SMS_SEND_CONCURRENCY"):
        Config.from_env({"SMS_SEND_CONCURRENCY": "many"})
    with pytest.raises(ConfigError, match="TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN"):
        Config().require("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN")
    assert "secret" not in repr(Config(jwt_secret="secret", twilio_auth_token="secret"))


def test_updates_applied_locally_match_mongodb_semantics() -> None:
    from server.store import applied

    doc = {"_id": 1, "status": "queued", "status_history": [{"status": "queued"}], "attempts": 1, "in_flight": {}}
    new = applied(
        doc,
        {
            "$set": {"status": "sending"},
            "$push": {"status_history": {"status": "sending"}},
            "$inc": {"attempts": 1, "fresh": 2},
            "$unset": {"in_flight": ""},
        },
    )
    assert new == {
        "_id": 1,
        "status": "sending",
        "attempts": 2,
        "fresh": 2,
        "status_history": [{"status": "queued"}, {"status": "sending"}],
    }
    assert doc["status"] == "queued" and len(doc["status_history"]) == 1  # the input is left alone
    for unsupported in ({"$addToSet": {"a": 1}}, {"$set": {"a.b": 1}}):
        with pytest.raises(ValueError):
            applied(doc, unsupported)
