"""The authorization server's store, called directly, on both backends: what must hold under
concurrency (one winner), the revocation log's cursor and wait, the signing keys and the cookie
key. The HTTP flows that rely on the same store run in tests/test_auth_*.py, also on both."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from auth import accounts
from auth.crypto import hash_secret
from auth.models import AuthorizationCode, PersonalToken, RememberedConsent, Revocation, SigningKey, Token
from auth.store import NotFirstUserError
from tests.authflow import AnyStore, Backend

ISSUER = "https://mcp.example.com"
N = 40  # concurrent callers in the race tests

# A second handle on the same store, as another process (or instance) has: the same file, the same Redis.
Reopen = Callable[[], AnyStore]


@pytest.fixture
async def store(tmp_path: Path, store_backend: Backend) -> AsyncIterator[AnyStore]:
    opened = store_backend.open(tmp_path)
    yield opened
    await opened.close()


@pytest.fixture
async def reopen(tmp_path: Path, store_backend: Backend) -> AsyncIterator[Reopen]:
    opened: list[AnyStore] = []

    def another() -> AnyStore:
        opened.append(store_backend.open(tmp_path))
        return opened[-1]

    yield another
    for handle in opened:
        await handle.close()


async def a_code(store: AnyStore, code_hash: str = "code-1") -> AuthorizationCode:
    user = await accounts.add_user(store, "bob", "password-1234")
    now = time.time()
    assert await store.create_browser_session("login", user.id, user.password_hash, now, now + 600)
    code = AuthorizationCode(code_hash, "client-1", "http://127.0.0.1/cb", "x" * 43, ("memory:read",),
                             ISSUER + "/mcp", user.id, now, now + 60)
    assert await store.save_code(code, "login")
    return code


def token(secret: str, kind: str = "refresh", grant: str = "grant-1", now: float | None = None,
          ttl: float = 600, client: str = "client-1", subject: str = "user-1") -> Token:
    now = time.time() if now is None else now
    return Token(hash_secret(secret), kind, grant, client, subject, ("memory:read",), ISSUER,  # type: ignore[arg-type]
                 now, now + ttl, auth_time=now)


# Races: exactly one winner, on one handle and across handles


async def test_concurrent_redemptions_of_one_code_have_one_winner(store: AnyStore, reopen: Reopen) -> None:
    code = await a_code(store)
    other = reopen()
    now = time.time()
    results = await asyncio.gather(*((store if i % 2 else other).consume_code(code.code_hash, f"g{i}", now)
                                     for i in range(N)))
    statuses = [r.status for r in results]
    # One redeems, the next one is the replay that revokes, every later one finds nothing.
    assert sorted(statuses) == sorted(["redeemed", "replayed"] + ["invalid"] * (N - 2)), statuses
    [winner] = [r for r in results if r.status == "redeemed"]
    assert winner.code is not None and winner.code.grant_id is not None
    # The replay deleted the record: the winner's tokens are refused too.
    assert not await store.save_code_tokens(code.code_hash, [token("a", "access", winner.code.grant_id)])


async def test_redeemed_code_then_tokens_then_replay_revokes_them(store: AnyStore) -> None:
    code = await a_code(store)
    now = time.time()
    redeemed = await store.consume_code(code.code_hash, "grant-a", now)
    assert redeemed.status == "redeemed" and redeemed.code is not None and redeemed.code.grant_id == "grant-a"
    # Tokens of another grant are refused; those of the code's grant stored.
    assert not await store.save_code_tokens(code.code_hash, [token("x", "access", "grant-b")])
    assert await store.save_code_tokens(code.code_hash, [token("a", "access", "grant-a"), token("r", grant="grant-a")])
    assert await store.get_token(hash_secret("a"), now) is not None
    replayed = await store.consume_code(code.code_hash, "grant-c", now)
    assert replayed.status == "replayed" and replayed.code is not None and replayed.code.grant_id == "grant-a"
    assert await store.get_token(hash_secret("a"), now) is None
    assert await store.get_refresh_token(hash_secret("r"), now) is None
    assert (await store.consume_code(code.code_hash, "grant-d", now)).status == "invalid"


async def test_concurrent_rotations_of_one_refresh_token_have_one_winner(store: AnyStore, reopen: Reopen) -> None:
    now = time.time()
    await store.save_tokens([token("r0", now=now)])
    other = reopen()
    results = await asyncio.gather(*(
        (store if i % 2 else other).rotate_refresh_token(
            hash_secret("r0"), [token(f"a{i}", "access", now=now), token(f"r{i + 1}", now=now)], f"sealed-{i}",
            now, 60)
        for i in range(N)))
    rotated = [i for i, r in enumerate(results) if r.status == "rotated"]
    assert len(rotated) == 1, [r.status for r in results]
    [winner] = rotated
    # Every other one is a retry within the grace window, answered with the winner's response.
    assert {(r.status, r.successor) for i, r in enumerate(results) if i != winner} == {("retry", f"sealed-{winner}")}
    assert await store.get_token(hash_secret(f"r{winner + 1}"), now) is not None
    losers = [await store.get_token(hash_secret(f"r{i + 1}"), now) for i in range(N) if i != winner]
    assert losers == [None] * (N - 1)
    old = await store.get_refresh_token(hash_secret("r0"), now)
    assert old is not None and old.superseded_at == now and await store.get_token(hash_secret("r0"), now) is None
    # After the grace window: a replay, and the whole family goes.
    replay = await store.rotate_refresh_token(hash_secret("r0"), [token("late", now=now + 61)], "s", now + 61, 60)
    assert replay.status == "replayed"
    assert await store.get_token(hash_secret(f"r{winner + 1}"), now + 61) is None
    assert await store.get_refresh_token(hash_secret("r0"), now + 61) is None


async def test_rotation_edge_cases(store: AnyStore) -> None:
    now = time.time()
    await store.save_tokens([token("r0", now=now), token("acc", "access", now=now)])
    assert (await store.rotate_refresh_token(hash_secret("acc"), [], "s", now, 60)).status == "invalid"
    assert (await store.rotate_refresh_token(hash_secret("nope"), [], "s", now, 60)).status == "invalid"
    assert (await store.rotate_refresh_token(hash_secret("r0"), [], "s", now + 601, 60)).status == "invalid"
    # Rotated without a new refresh token: a retry has no live successor to hand out.
    assert (await store.rotate_refresh_token(hash_secret("r0"), [token("a1", "access", now=now)], "s", now,
                                             60)).status == "rotated"
    assert (await store.rotate_refresh_token(hash_secret("r0"), [], "s", now + 1, 60)).status == "invalid"
    # The clock went back: not within grace, a replay.
    assert (await store.rotate_refresh_token(hash_secret("r0"), [], "s", now - 5, 60)).status == "replayed"
    assert await store.get_token(hash_secret("a1"), now) is None


async def test_list_subject_tokens_is_the_users_unexpired_tokens_oldest_first(store: AnyStore) -> None:
    now = time.time()
    await store.save_tokens([token("r-late", now=now + 2), token("a-early", "access", now=now),
                             token("r-other-client", grant="grant-2", client="client-2", now=now + 1),
                             token("expired", "access", now=now - 700),
                             token("bobs", subject="user-2", now=now)])
    # Rotated: the superseded refresh token is still listed (it tells when the grant began).
    rotation = await store.rotate_refresh_token(hash_secret("r-late"), [token("r-next", now=now + 3)], "s",
                                                now + 3, 60)
    assert rotation.status == "rotated"
    listed = await store.list_subject_tokens("user-1", now + 3)
    assert [t.token_hash for t in listed] == [hash_secret(s) for s in ("a-early", "r-other-client", "r-late",
                                                                        "r-next")]
    assert listed[2].superseded_at == now + 3 and {t.client_id for t in listed} == {"client-1", "client-2"}
    assert await store.list_subject_tokens("nobody", now) == []
    await store.revoke_subject("user-1", "client-2")
    assert [t.client_id for t in await store.list_subject_tokens("user-1", now + 3)] == ["client-1"] * 3


async def test_concurrent_add_user_keeps_one(store: AnyStore, reopen: Reopen) -> None:
    other = reopen()
    results = await asyncio.gather(*(accounts.add_user(store if i % 2 else other, "carol", f"password-{i:04d}")
                                     for i in range(8)), return_exceptions=True)
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(isinstance(r, accounts.DuplicateUserError) for r in results if isinstance(r, BaseException))
    assert [u.username for u in await store.list_users()] == ["carol"]


async def test_the_first_account_only_once(store: AnyStore, reopen: Reopen) -> None:
    """`add_user(first=True)` (the setup link, auth/setup.py): of concurrent calls through two
    connections with different usernames, one creates the account; later ones are refused, and a
    plain add_user (the CLI) still works."""
    other = reopen()
    results = await asyncio.gather(*(accounts.add_user(store if i % 2 else other, f"first{i}", f"password-{i:04d}",
                                                       first=True) for i in range(8)), return_exceptions=True)
    assert sum(not isinstance(r, BaseException) for r in results) == 1, results
    assert all(isinstance(r, NotFirstUserError) for r in results if isinstance(r, BaseException)), results
    with pytest.raises(NotFirstUserError):
        await accounts.add_user(store, "later", "password-later", first=True)
    await accounts.add_user(store, "later", "password-later")
    assert len(await store.list_users()) == 2


# Accounts and their cascades


async def test_begin_removal_then_remove_user(store: AnyStore) -> None:
    code = await a_code(store)
    user = await store.get_user(code.subject)
    assert user is not None
    now = time.time()
    await store.save_tokens([token("t", "access", subject=user.id, now=now)])
    await store.remember_consent(RememberedConsent(user.id, "client-1", "u", "r", ("a",), now, now + 60))
    before = await store.begin_removal("bob")
    assert before is not None and before.state == "active" and before.id == user.id
    assert await store.get_user(user.id) is None and await store.get_user_by_name("bob") is None
    assert [u.state for u in await store.list_users()] == ["removing"]
    assert await store.get_token(hash_secret("t"), now) is None
    assert await store.get_browser_session("login", now) is None
    assert await store.list_consents(user.id, now) == []
    assert (await store.consume_code(code.code_hash, "g", now)).status == "invalid"
    # Interrupted, then run again: found by name, already REMOVING.
    again = await store.begin_removal("bob")
    assert again is not None and again.state == "removing"
    assert await store.remove_user(user.id) and not await store.remove_user(user.id)
    assert await store.list_users() == [] and await store.begin_removal("bob") is None
    # The name is free again, for a new account with a new id.
    assert (await accounts.add_user(store, "bob", "password-5678")).id != user.id


async def test_password_rehash_never_overwrites_a_changed_password(store: AnyStore) -> None:
    user = await accounts.add_user(store, "bob", "password-1234")
    assert await store.set_password_hash(user.id, "new", replacing=user.password_hash)
    assert not await store.set_password_hash(user.id, "rehash", replacing=user.password_hash)
    assert not await store.set_password_hash("nobody", "x")
    found = await store.get_user(user.id)
    assert found is not None and found.password_hash == "new"
    # A login verified against the old hash is not recorded.
    now = time.time()
    assert not await store.create_browser_session("s", user.id, user.password_hash, now, now + 60)
    assert await store.create_browser_session("s", user.id, "new", now, now + 60)


async def test_consents_are_keyed_by_everything_a_request_must_match(store: AnyStore) -> None:
    now = time.time()
    first = RememberedConsent("u1", "c1", "http://x/cb", "r", ("b", "a"), now, now + 60)
    await store.remember_consent(first)
    assert await store.find_consent("u1", "c1", "http://x/cb", "r", ("a", "b", "a"), now) is not None
    for user, client, redirect, resource, scopes in (
            ("u2", "c1", "http://x/cb", "r", ("a", "b")), ("u1", "c2", "http://x/cb", "r", ("a", "b")),
            ("u1", "c1", "http://x/cb/", "r", ("a", "b")), ("u1", "c1", "http://x/cb", "R", ("a", "b")),
            ("u1", "c1", "http://x/cb", "r", ("a",))):
        assert await store.find_consent(user, client, redirect, resource, scopes, now) is None
    assert await store.find_consent("u1", "c1", "http://x/cb", "r", ("a", "b"), now + 60) is None
    # Renewed, not duplicated.
    await store.remember_consent(RememberedConsent("u1", "c1", "http://x/cb", "r", ("a", "b"), now + 10, now + 100))
    [renewed] = await store.list_consents("u1", now + 70)
    assert renewed.created_at == now + 10 and renewed.scopes == ("a", "b")
    await store.remember_consent(RememberedConsent("u1", "c2", "http://x/cb", "r", ("a",), now, now + 60))
    await store.save_tokens([token("t1", "access", client="c1", subject="u1", now=now),
                             token("t2", "access", client="c2", subject="u1", now=now)])
    assert await store.withdraw_consents("u1", "c1") == 1
    assert await store.get_token(hash_secret("t1"), now) is None
    assert await store.get_token(hash_secret("t2"), now) is not None
    assert [c.client_id for c in await store.list_consents("u1", now)] == ["c2"]
    assert await store.forget_consents("u1") == 1 and await store.list_consents("u1", now) == []


async def test_purge_keeps_clients_with_live_tokens_and_deletes_the_rest(store: AnyStore) -> None:
    from auth.models import Client

    now = 1_800_000_000.0
    for name, issued in (("unused-old", now - 100), ("unused-new", now), ("used", now - 100), ("live", now - 100)):
        await store.save_client(Client(client_id=name, client_id_issued_at=int(issued), redirect_uris=("u",)))
    await store.save_tokens([token("t-used", "access", client="used", now=now - 90, ttl=10),
                             token("t-live", "access", client="live", now=now - 90, ttl=1000)])
    # Re-saving keeps the first issue time and the use record.
    await store.save_client(Client(client_id="used", client_id_issued_at=int(now), redirect_uris=("v",)))
    assert [c.client_id for c in await store.list_clients()][-1] == "unused-new"
    purged = await store.purge_clients(now - 50, now - 50, now, 10)
    assert purged == 2
    assert sorted(c.client_id for c in await store.list_clients()) == ["live", "unused-new"]
    assert await store.purge_clients(now + 50, now + 50, now + 2000, 1) == 1
    assert await store.purge_clients(now + 50, now + 50, now + 2000, 1) == 1
    assert await store.list_clients() == []


# Personal access tokens


def pat(token_id: str, subject: str, now: float, expires_in: float | None = 600, secret: str | None = None,
        name: str = "agent") -> PersonalToken:
    return PersonalToken(token_id, hash_secret(secret or f"secret-{token_id}"), subject, name, ("memory:read",),
                         ISSUER + "/mcp", now, None if expires_in is None else now + expires_in)


async def test_personal_tokens_are_stored_listed_touched_and_deleted(store: AnyStore, reopen: Reopen) -> None:
    alice = await accounts.add_user(store, "alice", "password-1234")
    bob = await accounts.add_user(store, "bob", "password-1234")
    now = time.time()
    assert await store.save_personal_token(pat("a1" * 8, alice.id, now, name=""))
    assert await store.save_personal_token(pat("a2" * 8, alice.id, now + 1, expires_in=None))
    assert await store.save_personal_token(pat("a3" * 8, alice.id, now + 2, expires_in=10))
    assert await store.save_personal_token(pat("b1" * 8, bob.id, now))
    # Nobody's: refused, nothing stored.
    assert not await store.save_personal_token(pat("c1" * 8, "nobody", now))
    assert await store.get_personal_token(hash_secret("secret-" + "c1" * 8), now) is None

    other = reopen()  # another process sees them
    found = await other.get_personal_token(hash_secret("secret-" + "a1" * 8), now)
    assert found == pat("a1" * 8, alice.id, now, name="")
    never = await store.get_personal_token(hash_secret("secret-" + "a2" * 8), now + 10**9)
    assert never is not None and never.expires_at is None
    assert await store.get_personal_token(hash_secret("secret-" + "a3" * 8), now + 12) is None
    assert [t.id for t in await other.list_personal_tokens(alice.id, now)] == ["a1" * 8, "a2" * 8, "a3" * 8]
    assert [t.id for t in await store.list_personal_tokens(alice.id, now + 12)] == ["a1" * 8, "a2" * 8]
    assert [t.id for t in await store.list_personal_tokens(alice.id, now + 10**9)] == ["a2" * 8]

    await store.touch_personal_token("a1" * 8, now + 5)
    await other.touch_personal_token("a1" * 8, now + 3)  # never backwards
    [first, *_] = await store.list_personal_tokens(alice.id, now)
    assert first.last_used_at == now + 5

    deleted = await store.delete_personal_token("a1" * 8)
    assert deleted is not None and deleted.subject == alice.id
    assert deleted.token_hash == hash_secret("secret-" + "a1" * 8)
    assert await other.delete_personal_token("a1" * 8) is None
    await store.touch_personal_token("a1" * 8, now + 6)  # does not bring it back
    assert await store.get_personal_token(hash_secret("secret-" + "a1" * 8), now) is None
    assert [t.id for t in await store.list_personal_tokens(alice.id, now)] == ["a2" * 8, "a3" * 8]
    assert [t.id for t in await store.list_personal_tokens(bob.id, now)] == ["b1" * 8]


async def test_personal_tokens_go_with_their_user(store: AnyStore) -> None:
    alice = await accounts.add_user(store, "alice", "password-1234")
    bob = await accounts.add_user(store, "bob", "password-1234")
    now = time.time()
    for token_id, subject, expires_in in (("a1" * 8, alice.id, None), ("a2" * 8, alice.id, 600.0),
                                          ("b1" * 8, bob.id, None)):
        assert await store.save_personal_token(pat(token_id, subject, now, expires_in))
    # One client's tokens revoked: personal access tokens are no client's, they stay.
    assert await store.revoke_subject(alice.id, "client-1") == 0
    assert len(await store.list_personal_tokens(alice.id, now)) == 2
    # Signed out everywhere: they go.
    assert await store.revoke_subject(alice.id) == 2
    assert await store.list_personal_tokens(alice.id, now) == []
    assert await store.get_personal_token(hash_secret("secret-" + "a1" * 8), now) is None
    assert await store.delete_personal_token("a1" * 8) is None

    assert await store.save_personal_token(pat("b2" * 8, bob.id, now))
    removing = await store.begin_removal("bob")
    assert removing is not None
    assert await store.list_personal_tokens(bob.id, now) == []
    # Being removed: no new token can be saved for it.
    assert not await store.save_personal_token(pat("b3" * 8, bob.id, now))
    assert await store.remove_user(bob.id)
    for token_id in ("b1", "b2", "b3"):
        assert await store.get_personal_token(hash_secret("secret-" + token_id * 8), now) is None
        assert await store.delete_personal_token(token_id * 8) is None


# The revocation log


async def test_revocation_log_cursor(store: AnyStore, reopen: Reopen) -> None:
    start, none = await store.revocations_after(None)
    assert none == []
    other = reopen()
    first, second = Revocation("u1", None, None), Revocation(None, "c1", "g1")
    await other.record_revocation(first, time.time())
    await other.record_revocation(second, time.time())
    cursor, found = await store.revocations_after(start)
    assert found == [first, second] and cursor > start
    assert await store.revocations_after(cursor) == (cursor, [])
    # "From now on" starts after what is already there.
    end, _ = await store.revocations_after(None)
    assert end == cursor
    await other.record_revocation(first, time.time())
    later, found = await store.revocations_after(end)
    assert found == [first] and later > end


async def test_wait_revocations_returns_what_another_process_records(store: AnyStore, reopen: Reopen) -> None:
    cursor, _ = await store.revocations_after(None)
    assert await store.wait_revocations(cursor, 0.05) == (cursor, [])
    other = reopen()
    waiting = asyncio.create_task(store.wait_revocations(cursor, 1.0))
    await asyncio.sleep(0.1)
    await other.record_revocation(Revocation("u1", "c1", None), time.time())
    after, found = await asyncio.wait_for(waiting, 10)
    assert found == [Revocation("u1", "c1", None)] and after > cursor


# Keys


def signing_key(kid: str, created_at: float) -> SigningKey:
    return SigningKey(kid, "RS256", f'{{"kid": "{kid}"}}', "ciphertext", created_at)


async def test_first_signing_key_race_keeps_one(store: AnyStore, reopen: Reopen) -> None:
    now = time.time()
    other = reopen()
    results = await asyncio.gather(*((store if i % 2 else other).add_signing_key(signing_key(f"k{i}", now), now,
                                                                                  now + 60, replace=False)
                                     for i in range(10)))
    assert results.count(True) == 1
    [current] = await store.signing_keys(now)
    assert current.kid == f"k{results.index(True)}" and current.retired_at is None


async def test_signing_key_rotation_retires_and_drops(store: AnyStore) -> None:
    now = time.time()
    assert await store.add_signing_key(signing_key("a", now), now, now + 100, replace=False)
    assert await store.add_signing_key(signing_key("b", now + 1), now + 1, now + 100, replace=True)
    keys = await store.signing_keys(now + 2)
    assert [(k.kid, k.retired_at, k.published_until) for k in keys] == [("b", None, None), ("a", now + 1, now + 100)]
    assert [k.kid for k in await store.signing_keys(now + 100)] == ["b"]
    assert await store.add_signing_key(signing_key("c", now + 200), now + 200, now + 300, replace=True)
    assert [k.kid for k in await store.signing_keys(now + 200)] == ["c", "b"]
    assert [k.kid for k in await store.signing_keys(now + 300)] == ["c"]
    assert not await store.add_signing_key(signing_key("d", now + 201), now + 201, now + 300, replace=False)


async def test_cookie_key_is_created_once_and_shared(reopen: Reopen) -> None:
    handles = [reopen() for _ in range(4)]
    keys = await asyncio.gather(*(h.cookie_key() for h in handles for _ in range(3)))
    assert len(set(keys)) == 1 and len(keys[0]) == 32
    assert await reopen().cookie_key() == keys[0]
