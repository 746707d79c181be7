"""Templates (canned replies) over a real gRPC server on SecantusDB: CRUD, name uniqueness per scope, isolation
between agents, shared templates (admins only), placeholders, bounds and paging.

The database is shared by the whole session, and so are the shared templates: every test uses fresh users and
names with a fresh marker, and looks only at the templates it made.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from sms.v1 import sms_pb2, sms_pb2_grpc, types_pb2

from server import limits
from server.errors import error_reason
from server.reasons import Reason
from server.templates import PLACEHOLDERS
from tests.support.identities import auth, unique_user

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
DENIED = grpc.StatusCode.PERMISSION_DENIED

if TYPE_CHECKING:
    # The `sms` fixture's stub is made on an aio channel, so its calls are awaitables: the async stub, which exists
    # in the type stubs only (annotations are never evaluated at run time here).
    Api: TypeAlias = sms_pb2_grpc.SmsServiceAsyncStub


async def expect_error(call: Any, code: grpc.StatusCode, reason: str | None = None) -> str:
    """Awaits `call`, which must fail with `code` (and `reason`); the error's message."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    if reason is not None:
        assert error_reason(info.value) == reason, info.value.details()
    return info.value.details() or ""


def marker() -> str:
    """A name prefix no other test uses."""
    return f"T{uuid.uuid4().hex[:8]}"


async def create(
    sms: Api, user: str, name: str, body: str = "Hi!", shared: bool = False, role: str = "agent"
) -> types_pb2.Template:
    resp: sms_pb2.CreateTemplateResponse = await sms.CreateTemplate(
        sms_pb2.CreateTemplateRequest(template=types_pb2.Template(display_name=name, body=body, shared=shared)),
        metadata=auth(user, role),
    )
    return resp.template


async def list_all(
    sms: Api, user: str, query: str = "", page_size: int = 0, role: str = "agent"
) -> list[types_pb2.Template]:
    """Every page of the caller's list, checking that no page is over `page_size`."""
    found: list[types_pb2.Template] = []
    token = ""
    while True:
        resp: sms_pb2.ListTemplatesResponse = await sms.ListTemplates(
            sms_pb2.ListTemplatesRequest(page_size=page_size, page_token=token, query=query),
            metadata=auth(user, role),
        )
        assert page_size == 0 or len(resp.templates) <= page_size
        found += resp.templates
        token = resp.next_page_token
        if not token:
            return found


def update_request(
    template_id: str, paths: list[str], display_name: str = "", body: str = ""
) -> sms_pb2.UpdateTemplateRequest:
    return sms_pb2.UpdateTemplateRequest(
        template=types_pb2.Template(id=template_id, display_name=display_name, body=body),
        update_mask=FieldMask(paths=paths),
    )


async def update(
    sms: Api,
    user: str,
    template_id: str,
    paths: list[str],
    role: str = "agent",
    display_name: str = "",
    body: str = "",
) -> types_pb2.Template:
    resp: sms_pb2.UpdateTemplateResponse = await sms.UpdateTemplate(
        update_request(template_id, paths, display_name, body), metadata=auth(user, role)
    )
    return resp.template


def delete_request(template_id: str) -> sms_pb2.DeleteTemplateRequest:
    return sms_pb2.DeleteTemplateRequest(template_id=template_id)


async def test_create_list_update_delete_round_trip(sms: Api) -> None:
    alice, m = unique_user("alice"), marker()
    t = await create(sms, alice, f"{m} Greeting", "Hello {{contact_name}}, {{ agent }} here.")
    assert t.id and t.owner == alice and not t.shared
    assert (t.display_name, t.body) == (f"{m} Greeting", "Hello {{contact_name}}, {{ agent }} here.")
    assert t.create_time == t.update_time and t.create_time.seconds > 0

    assert [x.id for x in await list_all(sms, alice, m)] == [t.id]

    renamed = await update(sms, alice, t.id, ["display_name"], display_name=f"{m} Welcome", body="ignored")
    assert renamed.display_name == f"{m} Welcome" and renamed.body == t.body  # only the masked field changes
    assert renamed.create_time == t.create_time and renamed.update_time.ToDatetime() >= t.update_time.ToDatetime()
    rebodied = await update(sms, alice, t.id, ["body"], body="Thanks, {{contact_id}}")
    assert (rebodied.display_name, rebodied.body) == (f"{m} Welcome", "Thanks, {{contact_id}}")
    assert list(await list_all(sms, alice, m)) == [rebodied]

    await sms.DeleteTemplate(delete_request(t.id), metadata=auth(alice))
    assert await list_all(sms, alice, m) == []
    reason = Reason.TEMPLATE_NOT_FOUND
    await expect_error(sms.DeleteTemplate(delete_request(t.id), metadata=auth(alice)), NOT_FOUND, reason)
    await expect_error(sms.UpdateTemplate(update_request(t.id, ["body"], body="x"), metadata=auth(alice)), NOT_FOUND)


async def test_names_are_unique_per_scope_in_any_case(sms: Api) -> None:
    alice, bob, admin, m = unique_user("alice"), unique_user("bob"), unique_user("admin"), marker()
    mine = await create(sms, alice, f"{m} Follow up")
    # The same name is fine for another agent, and among the shared templates.
    await create(sms, bob, f"{m} Follow up")
    await create(sms, admin, f"{m} Follow up", shared=True, role="admin")
    taken = Reason.TEMPLATE_NAME_TAKEN
    for name in (f"{m} Follow up", f"{m} FOLLOW UP"):
        await expect_error(create(sms, alice, name), grpc.StatusCode.ALREADY_EXISTS, taken)
    await expect_error(
        create(sms, admin, f"{m} follow UP", shared=True, role="admin"), grpc.StatusCode.ALREADY_EXISTS, taken
    )
    # A rename onto a taken name too; onto its own name in another case is a rename, not a clash.
    other = await create(sms, alice, f"{m} Other")
    await expect_error(
        update(sms, alice, other.id, ["display_name"], display_name=f"{m} follow up"),
        grpc.StatusCode.ALREADY_EXISTS,
        taken,
    )
    assert (await update(sms, alice, mine.id, ["display_name"], display_name=f"{m} FOLLOW up")).display_name == (
        f"{m} FOLLOW up"
    )


async def test_agents_never_reach_each_others_personal_templates(sms: Api) -> None:
    alice, bob, m = unique_user("alice"), unique_user("bob"), marker()
    t = await create(sms, alice, f"{m} Alice's")
    assert await list_all(sms, bob, m) == []
    missing = Reason.TEMPLATE_NOT_FOUND
    # Bob is answered exactly as for an id that does not exist.
    for tid in (t.id, "t-no-such-template"):
        await expect_error(
            sms.UpdateTemplate(update_request(tid, ["body"], body="mine now"), metadata=auth(bob)), NOT_FOUND, missing
        )
        await expect_error(sms.DeleteTemplate(delete_request(tid), metadata=auth(bob)), NOT_FOUND, missing)
    assert [x.body for x in await list_all(sms, alice, m)] == [t.body]
    # Admins may act on anyone's template, though they list only the shared ones and their own.
    admin = unique_user("admin")
    assert await list_all(sms, admin, m, role="admin") == []
    edited = await update(sms, admin, t.id, ["body"], role="admin", body="Edited by an admin")
    assert edited.owner == alice and edited.body == "Edited by an admin"
    await sms.DeleteTemplate(delete_request(t.id), metadata=auth(admin, "admin"))
    assert await list_all(sms, alice, m) == []


async def test_shared_templates_are_seen_by_all_and_changed_by_admins_only(sms: Api) -> None:
    admin, alice, bob, m = unique_user("admin"), unique_user("alice"), unique_user("bob"), marker()
    not_allowed = Reason.TEMPLATE_NOT_ALLOWED
    await expect_error(create(sms, alice, f"{m} Mine for all", shared=True), DENIED, not_allowed)

    shared = await create(sms, admin, f"{m} Opening hours", "We open at 9.", shared=True, role="admin")
    assert shared.shared and shared.owner == admin
    by_service = await create(sms, unique_user("svc"), f"{m} Service's", shared=True, role="service")
    own = await create(sms, alice, f"{m} Personal")
    assert [x.id for x in await list_all(sms, alice, m)] == [shared.id, own.id, by_service.id]
    assert [x.id for x in await list_all(sms, bob, m)] == [shared.id, by_service.id]
    assert [x.id for x in await list_all(sms, admin, m, role="admin")] == [shared.id, by_service.id]

    await expect_error(
        sms.UpdateTemplate(update_request(shared.id, ["body"], body="Closed."), metadata=auth(alice)),
        DENIED,
        not_allowed,
    )
    await expect_error(sms.DeleteTemplate(delete_request(shared.id), metadata=auth(bob)), DENIED, not_allowed)

    # Any admin, not only its creator, edits and deletes it.
    other_admin = unique_user("admin")
    edited = await update(
        sms, other_admin, shared.id, ["display_name", "body"], role="admin", display_name=f"{m} Hours", body="9-5."
    )
    assert (edited.display_name, edited.body, edited.shared, edited.owner) == (f"{m} Hours", "9-5.", True, admin)
    assert [x.display_name for x in await list_all(sms, bob, m)] == [f"{m} Hours", f"{m} Service's"]
    await sms.DeleteTemplate(delete_request(shared.id), metadata=auth(admin, "admin"))
    assert [x.id for x in await list_all(sms, bob, m)] == [by_service.id]


async def test_known_placeholders_are_accepted_and_others_refused(sms: Api) -> None:
    alice, m = unique_user("alice"), marker()
    every = " ".join(f"{{{{{p}}}}}" for p in PLACEHOLDERS) + " {{ contact_name }} {{\tagent\n}} {not one} }} {{"
    assert (await create(sms, alice, f"{m} All", every)).body == every

    for bad in (
        "Hi {{first_name}}",
        "{{}}",
        "{{ Contact_Name }}",
        "x {{agent}} {{agent.name}}",
        "{{" + "a" * 500 + "}}",
    ):
        err = await expect_error(create(sms, alice, f"{m} Bad", bad), INVALID)
        assert err.startswith("template.body:")
        assert len(err) < 300  # quotes a short prefix, never the whole input
    t = await create(sms, alice, f"{m} Good", "ok")
    err = await expect_error(update(sms, alice, t.id, ["body"], body="{{ contact_email }}"), INVALID)
    assert "template.body" in err and "contact_email" in err


@pytest.mark.parametrize(
    ("name", "body", "field", "reason"),
    [
        ("n" * (limits.TEMPLATE_NAME_BYTES + 1), "ok", "template.display_name", Reason.INPUT_TOO_LARGE),
        ("é" * 33, "ok", "template.display_name", Reason.INPUT_TOO_LARGE),  # 66 bytes in 33 characters
        ("", "ok", "template.display_name", Reason.INVALID_ARGUMENT),
        ("   ", "ok", "template.display_name", Reason.INVALID_ARGUMENT),
        ("Name", "", "template.body", Reason.INVALID_ARGUMENT),
        ("Name", " \n\t ", "template.body", Reason.INVALID_ARGUMENT),
        ("Name", "b" * (limits.TEMPLATE_BODY_CHARS + 1), "template.body", Reason.INPUT_TOO_LARGE),
    ],
)
async def test_create_refuses_out_of_bounds_fields(sms: Api, name: str, body: str, field: str, reason: str) -> None:
    err = await expect_error(create(sms, unique_user("alice"), name, body), INVALID, reason)
    assert err.startswith(f"{field}:") and len(err) < 300


async def test_bounds_at_the_limit_are_accepted(sms: Api) -> None:
    alice, m = unique_user("alice"), marker()
    name = m + "é" * ((limits.TEMPLATE_NAME_BYTES - len(m)) // 2)  # at most 64 bytes
    body = "😀" * limits.TEMPLATE_BODY_CHARS  # 1600 characters (6,400 bytes)
    t = await create(sms, alice, name, body)
    assert (t.display_name, t.body) == (name, body)


@pytest.mark.parametrize(
    ("paths", "reason"),
    [
        ([], Reason.INVALID_UPDATE_MASK),
        (["shared"], Reason.INVALID_UPDATE_MASK),
        (["owner"], Reason.INVALID_UPDATE_MASK),
        (["body", "id"], Reason.INVALID_UPDATE_MASK),
        (["body"] * (limits.MASK_PATHS_COUNT + 1), Reason.INPUT_TOO_LARGE),
        (["x" * (limits.MASK_PATH_BYTES + 1)], Reason.INPUT_TOO_LARGE),
    ],
)
async def test_update_refuses_bad_masks(sms: Api, paths: list[str], reason: str) -> None:
    alice = unique_user("alice")
    t = await create(sms, alice, f"{marker()} Masked")
    await expect_error(
        sms.UpdateTemplate(update_request(t.id, paths, body="new"), metadata=auth(alice)), INVALID, reason
    )


async def test_update_and_delete_check_ids_and_values(sms: Api) -> None:
    alice = unique_user("alice")
    t = await create(sms, alice, f"{marker()} Checked")
    too_long = "t" * (limits.ID_BYTES + 1)
    for call in (
        sms.UpdateTemplate(update_request("", ["body"], body="x"), metadata=auth(alice)),
        sms.UpdateTemplate(update_request(too_long, ["body"], body="x"), metadata=auth(alice)),
        sms.UpdateTemplate(update_request(t.id, ["body"], body=" "), metadata=auth(alice)),
        sms.UpdateTemplate(update_request(t.id, ["display_name"], display_name=""), metadata=auth(alice)),
        sms.DeleteTemplate(delete_request(""), metadata=auth(alice)),
        sms.DeleteTemplate(delete_request(too_long), metadata=auth(alice)),
    ):
        await expect_error(call, INVALID)


async def test_paging_has_no_repeats_or_gaps_and_the_query_is_a_case_insensitive_prefix(
    sms: Api,
) -> None:
    alice, admin, m = unique_user("alice"), unique_user("admin"), marker()
    # Personal and shared interleaved, names differing in case only across scopes (equal name_keys: ordered by id).
    names = ["b", "A", "c", "d", "E", "f", "g"]
    made = []
    for i, n in enumerate(names):
        if i % 2:
            made.append(await create(sms, admin, f"{m} {n}", shared=True, role="admin"))
        else:
            made.append(await create(sms, alice, f"{m} {n}"))
    made.append(await create(sms, admin, f"{m} B", shared=True, role="admin"))
    made.append(await create(sms, alice, f"{m}x other"))
    expected = sorted(made, key=lambda t: (t.display_name.casefold(), t.id))

    paged = await list_all(sms, alice, m.lower(), page_size=3)
    assert [t.id for t in paged] == [t.id for t in expected]
    assert len({t.id for t in paged}) == len(made)
    # Every page size gives the same list.
    for size in (1, 2, 4, 9, 10):
        assert [t.id for t in await list_all(sms, alice, m, page_size=size)] == [t.id for t in expected]

    # The query is a prefix of the display name, in any case.
    spaced = [t.id for t in expected if t.display_name.startswith(f"{m} ")]
    assert [t.id for t in await list_all(sms, alice, f"{m} ", page_size=3)] == spaced
    bs = sorted((t for t in made if t.display_name.casefold() == f"{m} b".casefold()), key=lambda t: t.id)
    assert [t.id for t in await list_all(sms, alice, f"{m.upper()} b")] == [t.id for t in bs] and len(bs) == 2
    assert [t.display_name for t in await list_all(sms, alice, f"{m} E".lower())] == [f"{m} E"]
    assert await list_all(sms, alice, f"{m} h") == []
    assert await list_all(sms, alice, f"{m[1:]}") == []  # a prefix, not a substring


async def test_page_tokens_are_checked(sms: Api) -> None:
    alice, m = unique_user("alice"), marker()
    for n in ("a", "b", "c"):
        await create(sms, alice, f"{m} {n}")
    first: sms_pb2.ListTemplatesResponse = await sms.ListTemplates(
        sms_pb2.ListTemplatesRequest(page_size=2, query=m), metadata=auth(alice)
    )
    assert len(first.templates) == 2 and 0 < len(first.next_page_token) <= limits.PAGE_TOKEN_BYTES
    bad_token = Reason.INVALID_PAGE_TOKEN
    for token, query in (
        ("garbage!", m),
        ("bm90IGpzb24", m),  # base64 of "not json"
        (first.next_page_token, f"{m} a"),  # a token of another query
        ("x" * (limits.PAGE_TOKEN_BYTES + 1), m),
    ):
        reason = Reason.INPUT_TOO_LARGE if len(token) > limits.PAGE_TOKEN_BYTES else bad_token
        await expect_error(
            sms.ListTemplates(sms_pb2.ListTemplatesRequest(page_token=token, query=query), metadata=auth(alice)),
            INVALID,
            reason,
        )
    await expect_error(sms.ListTemplates(sms_pb2.ListTemplatesRequest(page_size=-1), metadata=auth(alice)), INVALID)
    await expect_error(
        sms.ListTemplates(sms_pb2.ListTemplatesRequest(query="q" * 65), metadata=auth(alice)),
        INVALID,
        Reason.INPUT_TOO_LARGE,
    )


async def test_a_token_stays_small_for_the_longest_casefolded_names(sms: Api) -> None:
    alice = unique_user("alice")
    # "ΐ" takes 2 bytes and casefolds to 3 characters of 6 bytes: the largest name_key a 64-byte name makes.
    names = ["ΐ" * 31 + "a", "ΐ" * 31 + "b"]
    for n in names:
        await create(sms, alice, n)
    first: sms_pb2.ListTemplatesResponse = await sms.ListTemplates(
        sms_pb2.ListTemplatesRequest(page_size=1, query="ΐ" * 31), metadata=auth(alice)
    )
    assert len(first.next_page_token) <= limits.PAGE_TOKEN_BYTES
    assert [t.display_name for t in await list_all(sms, alice, "ΐ" * 31, page_size=1)] == names


async def test_a_user_holds_at_most_the_personal_limit(sms: Api) -> None:
    alice, m = unique_user("alice"), marker()
    for i in range(limits.TEMPLATES_PER_USER):
        await create(sms, alice, f"{m} {i:03d}")
    await expect_error(
        create(sms, alice, f"{m} one too many"), grpc.StatusCode.FAILED_PRECONDITION, Reason.TEMPLATE_LIMIT_REACHED
    )
    # Another user's limit is their own; a deletion makes room again.
    await create(sms, unique_user("bob"), f"{m} bob's")
    first = (await list_all(sms, alice, m, page_size=1))[0]
    await sms.DeleteTemplate(delete_request(first.id), metadata=auth(alice))
    await create(sms, alice, f"{m} after a deletion")
