"""Named memories (auth.memories): the memory chosen on the consent page is bound to the grant, its
tokens, refreshes and MCP sessions; memories are as isolated from each other as users are; the
`memory` commands; deleting a memory revokes what is bound to it and ends its sessions."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import traceback
from pathlib import Path
from typing import Any

import httpx2
import pytest

from auth import memories as auth_memories
from auth.crypto import hash_secret
from auth.models import PersonalToken, Principal, RememberedConsent, Token
from server import memories
from server.memory.graph import Entity
from server.principals import owner_label, parse_owner
from server.storage.sqlite import SQLiteStorage
from server.storage.sqlite.auth import SCHEMA
from tests.authflow import Backend, add_alice
from tests.browser import Browser
from tests.conftest import BACKENDS, OAuthUser, RunningServer, tokens_by_hand
from tests.test_account import signed_in
from tests.test_admin import cli, ended
from tests.test_end_to_end import structured
from tests.test_mcp_http import open_session, sse_or_json

# Every test here that takes `server` runs on SQLite and on Redis (tests/conftest.py).
SERVER_BACKENDS = BACKENDS

ALICE, PASSWORD = "alice", "alice-password-1"
BOTH = "memory:read memory:write"


async def rpc(http: httpx2.AsyncClient, server: RunningServer, session: dict[str, str], method: str,
              params: dict[str, Any] | None = None) -> tuple[int, Any]:
    resp = await http.post(server.url + "/mcp", headers=session,
                           json={"jsonrpc": "2.0", "id": 7, "method": method, "params": params or {}})
    return resp.status_code, (sse_or_json(resp) if resp.status_code == 200 else resp.text)


async def tool(http: httpx2.AsyncClient, server: RunningServer, session: dict[str, str], name: str,
               arguments: dict[str, Any]) -> Any:
    status, body = await rpc(http, server, session, "tools/call", {"name": name, "arguments": arguments})
    assert status == 200, body
    result = body["result"]
    assert not result.get("isError"), result
    return json.loads(result["content"][0]["text"])


async def graph_names(server: RunningServer, owner: str) -> list[str]:
    graph = json.loads((await server.storage.read_graph(owner)).json)
    return sorted(e["name"] for e in graph["entities"])


def entity(name: str, *observations: str) -> dict[str, Any]:
    return {"name": name, "entityType": "thing", "observations": list(observations)}


async def test_the_memory_chosen_at_consent_binds_tokens_refreshes_and_sessions(
        http: httpx2.AsyncClient, server: RunningServer) -> None:
    work = await memories.create_memory(server.storage, ALICE, "work", 20)
    tokens = await tokens_by_hand(server, ALICE, PASSWORD, BOTH, memory="work")
    stored = await server.storage.get_token(hash_secret(tokens["access_token"]), time.time())
    assert stored is not None and stored.memory == work.id

    session = await open_session(http, server, tokens["access_token"])
    await tool(http, server, session, "create_entities", {"entities": [entity("Kept at work")]})
    user = await server.storage.get_user_by_name(ALICE)
    assert user is not None
    assert await graph_names(server, work.id) == ["Kept at work"]
    assert await graph_names(server, user.id) == []
    [live] = [s for s in server.registry.sessions() if s.session_id == session["Mcp-Session-Id"]]
    assert isinstance(live.owner, Principal) and live.owner.memory == work.id
    assert parse_owner(owner_label(live.owner)).memory == work.id

    # A refresh keeps the memory: the new access token works on the same session and graph.
    refreshed = (await http.post(server.url + "/token", data={
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "client_id": tokens["client_id"]}))
    assert refreshed.status_code == 200, refreshed.text
    new = refreshed.json()
    record = await server.storage.get_token(hash_secret(new["refresh_token"]), time.time())
    assert record is not None and record.memory == work.id
    session["Authorization"] = f"Bearer {new['access_token']}"
    graph = await tool(http, server, session, "read_graph", {})
    assert [e["name"] for e in graph["entities"]] == ["Kept at work"]


async def test_a_session_is_unknown_to_a_token_of_the_same_client_for_another_memory(
        http: httpx2.AsyncClient, server: RunningServer) -> None:
    await memories.create_memory(server.storage, ALICE, "work", 20)
    default = await tokens_by_hand(server, ALICE, PASSWORD, BOTH)
    other = await tokens_by_hand(server, ALICE, PASSWORD, BOTH, memory="work", client_id=default["client_id"])
    session = await open_session(http, server, default["access_token"])
    assert (await rpc(http, server, session, "tools/list"))[0] == 200
    hijack = {**session, "Authorization": f"Bearer {other['access_token']}"}
    status, _ = await rpc(http, server, hijack, "tools/list")
    assert status == 404
    # The session itself is untouched.
    assert (await rpc(http, server, session, "tools/list"))[0] == 200


async def test_two_clients_of_one_user_on_two_memories_share_nothing(server: RunningServer) -> None:
    """Every one of the nine tools, on both memories at once: nothing crosses."""
    await memories.create_memory(server.storage, ALICE, "private", 20)
    home = OAuthUser(server.url, ALICE, PASSWORD)
    away = OAuthUser(server.url, ALICE, PASSWORD, memory="private")
    async with home.client() as (a, _), away.client() as (b, _):
        for client, tag in ((a, "home"), (b, "away")):
            structured(await client.call_tool("create_entities", {"entities": [
                entity(f"{tag}-1", f"{tag} note"), entity(f"{tag}-2"), entity("shared name", f"{tag} only")]}))
            structured(await client.call_tool("create_relations", {"relations": [
                {"from": f"{tag}-1", "to": f"{tag}-2", "relationType": "links"},
                {"from": "shared name", "to": f"{tag}-1", "relationType": "owns"}]}))
            structured(await client.call_tool("add_observations", {"observations": [
                {"entityName": "shared name", "contents": [f"{tag} added"]}]}))
        for client, mine, theirs in ((a, "home", "away"), (b, "away", "home")):
            graph = structured(await client.call_tool("read_graph", {}))
            assert sorted(e["name"] for e in graph["entities"]) == [f"{mine}-1", f"{mine}-2", "shared name"]
            [shared] = [e for e in graph["entities"] if e["name"] == "shared name"]
            assert shared["observations"] == [f"{mine} only", f"{mine} added"]
            assert all(theirs not in json.dumps(r) for r in graph["relations"])
            assert structured(await client.call_tool("search_nodes", {"query": theirs}))["entities"] == []
            # Sorted: the order of search results is the search's business, not this test's.
            assert sorted(e["name"] for e in structured(await client.call_tool("search_nodes", {"query": mine}))[
                "entities"]) == [f"{mine}-1", f"{mine}-2", "shared name"]
            opened = structured(await client.call_tool("open_nodes", {"names": [f"{theirs}-1", f"{mine}-1"]}))
            assert [e["name"] for e in opened["entities"]] == [f"{mine}-1"]
        # Deleting in one memory what the other holds too (or holds alone) leaves the other alone.
        structured(await a.call_tool("delete_observations", {"deletions": [
            {"entityName": "shared name", "observations": ["away only", "home only"]}]}))
        structured(await a.call_tool("delete_relations", {"relations": [
            {"from": "away-1", "to": "away-2", "relationType": "links"},
            {"from": "home-1", "to": "home-2", "relationType": "links"}]}))
        structured(await a.call_tool("delete_entities", {"entityNames": ["away-2", "home-2", "shared name"]}))
        home_graph = structured(await a.call_tool("read_graph", {}))
        away_graph = structured(await b.call_tool("read_graph", {}))
    assert home_graph == {"entities": [entity("home-1", "home note")], "relations": []}
    assert sorted(e["name"] for e in away_graph["entities"]) == ["away-1", "away-2", "shared name"]
    assert next(e for e in away_graph["entities"] if e["name"] == "shared name")["observations"] == [
        "away only", "away added"]
    assert len(away_graph["relations"]) == 2


async def test_a_new_memory_is_created_on_the_consent_page_and_bad_choices_are_explained(
        server: RunningServer) -> None:
    start = (f"{server.url}/authorize?" + "&".join(f"{k}={v}" for k, v in {
        "response_type": "code", "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        "code_challenge_method": "S256", "redirect_uri": "http://127.0.0.1:9/callback"}.items()))
    async with httpx2.AsyncClient() as http:
        client = (await http.post(server.url + "/register", json={
            "client_name": "by hand", "redirect_uris": ["http://127.0.0.1:9/callback"]})).json()
    url = start + "&client_id=" + client["client_id"]

    made = Browser(ALICE, PASSWORD, new_memory="Project X")
    try:
        redirect = await made.authorize(url, server.url)
    finally:
        await made.close()
    assert "code" in redirect.params
    consent_page = next(p for p in made.pages if 'name="memory"' in p)
    assert '<option value="default" selected>default</option>' in consent_page
    user, project = await memories.resolve_memory(server.storage, ALICE, "Project X")
    codes = [c for c in [await _code_memory(server, redirect.params["code"])] if c is not None]
    assert codes == [project.id]

    for browser, message in (
            (Browser(ALICE, PASSWORD, new_memory=" padded"), "starts or ends with a space"),
            (Browser(ALICE, PASSWORD, new_memory="Project X"), "already"),
            (Browser(ALICE, PASSWORD, new_memory="default"), "default memory"),
            (Browser(ALICE, PASSWORD, memory="no such memory"), "no memory named"),
            (Browser(ALICE, PASSWORD, new_memory="x" * 65), "1 to 64 printable characters")):
        try:
            with pytest.raises(AssertionError, match="400"):
                await browser.authorize(url, server.url)
            assert browser.last_status == 400
            assert message in browser.last_page.replace("&#x27;", "'"), browser.last_page
            assert 'name="memory"' in browser.last_page and 'role="alert"' in browser.last_page
        finally:
            await browser.close()
    assert [m.name for m in await server.storage.list_memories(user.id)] == ["Project X"]


async def _code_memory(server: RunningServer, code: str) -> str | None:
    """The memory a code is bound to, by redeeming it as the token endpoint would (then it is spent)."""
    redemption = await server.storage.consume_code(hash_secret(code), "grant-for-test", time.time())
    assert redemption.code is not None
    return redemption.code.memory


async def test_the_cap_on_memories_is_a_clear_error(server: RunningServer) -> None:
    limit = server.settings.max_memories_per_user
    for n in range(limit - 1):
        await memories.create_memory(server.storage, ALICE, f"m{n}", limit)
    with pytest.raises(memories.MemoryCommandError, match=r"max_memories_per_user \(20\)"):
        await memories.create_memory(server.storage, ALICE, "one too many", limit)
    listed = await cli(server, "memory", "create", "--user", ALICE, "again")
    assert listed.returncode == 1 and "max_memories_per_user" in listed.stderr


async def test_a_remembered_approval_keeps_its_memory(server: RunningServer) -> None:
    """The page is skipped for a remembered approval, and the code is for the memory chosen with it;
    approving again for another memory and remembering it replaces it."""
    await memories.create_memory(server.storage, ALICE, "work", 20)
    await memories.create_memory(server.storage, ALICE, "play", 20)
    async with httpx2.AsyncClient() as http:
        client = (await http.post(server.url + "/register", json={
            "client_name": "remembering", "redirect_uris": ["http://127.0.0.1:9/callback"]})).json()
    url = (f"{server.url}/authorize?response_type=code&client_id={client['client_id']}"
           "&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256"
           "&redirect_uri=http://127.0.0.1:9/callback")
    user, work = await memories.resolve_memory(server.storage, ALICE, "work")
    _, play = await memories.resolve_memory(server.storage, ALICE, "play")
    browser = Browser(ALICE, PASSWORD, memory="work", remember=True)
    # A first-party navigation (a native client opening the browser), the only kind a remembered
    # approval answers without the page (auth.consent).
    browser.session.headers.update({"Sec-Fetch-Site": "none", "Sec-Fetch-Dest": "document"})
    try:
        async def remembered_run(memory: str | None, prompt: str = "") -> tuple[str | None, bool]:
            browser.memory = memory
            pages_before = len(browser.pages)
            redirect = await browser.authorize(url + prompt, server.url)
            shown = any('name="memory"' in p for p in browser.pages[pages_before:])
            return await _code_memory(server, redirect.params["code"]), shown

        assert await remembered_run("work") == (work.id, True)
        # Remembered: no page, and the code is for "work", whatever the browser would choose.
        assert await remembered_run("play") == (work.id, False)
        # Asked again (prompt=consent), another memory, remembered: it replaces the first.
        assert await remembered_run("play", "&prompt=consent") == (play.id, True)
        assert await remembered_run(None) == (play.id, False)
        consents = await server.storage.list_consents(user.id, time.time())
        assert [(c.client_id, c.memory) for c in consents] == [(client["client_id"], play.id)]
        # The account page says which memory each application is on.
        async with browser.session.get(server.url + "/account") as resp:
            account = await resp.text()
        assert "<dt>Memory</dt><dd>play</dd>" in account
    finally:
        await browser.close()


async def test_memory_commands(server: RunningServer) -> None:
    made = await cli(server, "memory", "create", "--user", ALICE, "Research notes")
    assert made.returncode == 0, made.stderr
    assert "created memory 'Research notes'" in made.stdout and "--memory 'Research notes'" in made.stdout
    user, research = await memories.resolve_memory(server.storage, ALICE, "Research notes")
    listed = await cli(server, "memory", "list", "--user", ALICE)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["NAME", "ID", "ENTITIES", "CREATED"]
    assert lines[1].startswith("default") and user.id in lines[1]
    assert lines[2].startswith("Research notes") and research.id in lines[2]

    renamed = await cli(server, "memory", "rename", "--user", ALICE, "Research notes", "research")
    assert renamed.returncode == 0, renamed.stderr
    assert (await memories.resolve_memory(server.storage, ALICE, "research"))[1].id == research.id

    for args, message in (
            (("create", "--user", ALICE, "research"), "already"),
            (("create", "--user", ALICE, "default"), "default memory"),
            (("create", "--user", ALICE, "tab\there"), "unprintable"),
            (("create", "--user", "nobody", "x"), "no user 'nobody'"),
            (("rename", "--user", ALICE, "default", "x"), "cannot be renamed"),
            (("rename", "--user", ALICE, "research", " x"), "starts or ends with a space"),
            (("rename", "--user", ALICE, "missing", "x"), "has no memory named 'missing'"),
            (("delete", "--user", ALICE, "default"), "cannot be deleted"),
            (("delete", "--user", ALICE, "missing"), "memory list --user alice")):
        failed = await cli(server, "memory", *args)
        assert failed.returncode == 1, (args, failed.stdout)
        assert message in failed.stderr, (args, failed.stderr)

    # Other users' memories are theirs: bob has only the default one, and cannot reach alice's.
    assert "research" not in (await cli(server, "memory", "list", "--user", "bob")).stdout
    deleted = await cli(server, "memory", "delete", "--user", ALICE, "research")
    assert deleted.returncode == 0, deleted.stderr
    assert await server.storage.list_memories(user.id) == []


async def test_deleting_a_memory_ends_its_sessions_and_revokes_its_grants(
        http: httpx2.AsyncClient, server: RunningServer) -> None:
    await memories.create_memory(server.storage, ALICE, "doomed", 20)
    user, doomed = await memories.resolve_memory(server.storage, ALICE, "doomed")
    kept = await tokens_by_hand(server, ALICE, PASSWORD, BOTH)
    gone = await tokens_by_hand(server, ALICE, PASSWORD, BOTH, memory="doomed", client_id=kept["client_id"])
    pat = await cli(server, "tokens", "create", "--user", ALICE, "--memory", "doomed", "--public-url", server.url)
    assert pat.returncode == 0, pat.stderr
    assert "memory:   doomed" in pat.stdout
    pat_session = await open_session(http, server, pat.stdout.splitlines()[-1])
    await tool(http, server, pat_session, "create_entities", {"entities": [entity("in doomed")]})
    assert await graph_names(server, doomed.id) == ["in doomed"]

    kept_session = await open_session(http, server, kept["access_token"])
    doomed_session = await open_session(http, server, gone["access_token"])
    alice = OAuthUser(server.url, ALICE, PASSWORD, memory="doomed")
    failure: BaseException | None = None
    endings: list[bool] = []
    try:
        async with alice.client() as (client, _):
            await client.call_tool("read_graph", {})
            [sdk_session] = [s for s in server.registry.sessions()
                             if s.session_id not in (kept_session["Mcp-Session-Id"],
                                                     doomed_session["Mcp-Session-Id"], pat_session["Mcp-Session-Id"])]
            deleted = await cli(server, "memory", "delete", "--user", ALICE, "doomed")
            endings = [await ended(server, session_id) for session_id in (
                sdk_session.session_id, doomed_session["Mcp-Session-Id"], pat_session["Mcp-Session-Id"])]
            # The live SDK session's next request is refused; its client cannot refresh either, and
            # signing in again finds no memory of that name on the consent page.
            await asyncio.wait_for(client.call_tool("read_graph", {}), 20)
    except Exception as exc:
        failure = exc
    assert deleted.returncode == 0, deleted.stderr
    assert "(1 entities)" in deleted.stdout
    assert endings == [True, True, True]
    assert failure is not None
    # The consent page refused the memory the scripted browser asked for (tests/browser.py).
    assert "AssertionError: 400 from " + server.url + "/consent" in "".join(traceback.format_exception(failure))
    assert (await rpc(http, server, kept_session, "tools/list"))[0] == 200
    for session in (doomed_session, pat_session):
        assert (await rpc(http, server, session, "tools/list"))[0] == 401
    refused = await http.post(server.url + "/token", data={
        "grant_type": "refresh_token", "refresh_token": gone["refresh_token"], "client_id": gone["client_id"]})
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    assert await graph_names(server, doomed.id) == []
    assert await server.storage.get_memory(user.id, doomed.id) is None


async def test_removing_a_user_deletes_every_memory(server: RunningServer) -> None:
    await memories.create_memory(server.storage, ALICE, "extra", 20)
    user, extra = await memories.resolve_memory(server.storage, ALICE, "extra")
    await server.storage.create_entities(extra.id, [Entity(name="e", entityType="t", observations=[])])
    await server.storage.create_entities(user.id, [Entity(name="d", entityType="t", observations=[])])
    removed = await cli(server, "users", "remove", ALICE)
    assert removed.returncode == 0, removed.stderr
    assert "2 entities" in removed.stdout
    assert await graph_names(server, extra.id) == []
    assert await server.storage.list_memories(user.id) == []


def test_owner_labels_without_a_memory_are_on_the_default_memory() -> None:
    assert parse_owner("u1 client") == ("u1", "client", "u1")
    assert parse_owner("u1 pat:0123 mem_x") == ("u1", "pat:0123", "mem_x")
    default = Principal("https://issuer", "u1", "client")
    assert owner_label(default) == "u1 client" and default == Principal("https://issuer", "u1", "client", "u1")
    assert owner_label(Principal("https://issuer", "u1", "client", "mem_x")) == "u1 client mem_x"


# The memory directory itself, on both backends (tests/authflow.py's stores).

async def test_the_directory_creates_renames_and_deletes_with_its_cascade(tmp_path: Path,
                                                                          store_backend: Backend) -> None:
    store = store_backend.open(tmp_path)
    try:
        alice = await add_alice(store)
        now = time.time()
        work = await auth_memories.create(store, alice, "work", limit=3, now=now)
        assert work.id.startswith("mem_") and work.id != alice.id
        with pytest.raises(auth_memories.MemoryExistsError):
            await auth_memories.create(store, alice, "work", limit=3, now=now)
        play = await auth_memories.create(store, alice, "play", limit=3, now=now + 1)
        with pytest.raises(auth_memories.MemoryLimitError, match="max_memories_per_user"):
            await auth_memories.create(store, alice, "third", limit=3, now=now)
        assert [m.name for m in await auth_memories.memories_of(store, alice)] == ["default", "work", "play"]
        with pytest.raises(auth_memories.MemoryExistsError):
            await store.rename_memory(alice.id, play.id, "work")
        assert await store.rename_memory(alice.id, play.id, "games")
        assert not await store.rename_memory("someone else", play.id, "stolen")
        assert await store.get_memory("someone else", play.id) is None
        assert (await store.get_memory(alice.id, play.id)).name == "games"  # type: ignore[union-attr]
        # The old name is free again, the new one taken.
        renamed_back = await auth_memories.create(store, alice, "play", limit=4, now=now + 2)
        await store.delete_memory(alice.id, renamed_back.id)

        # Records bound to "work", and the same kinds on the default memory: only the first go.
        def token(h: str, memory: str | None) -> Token:
            return Token(h, "access", f"g-{h}", "c", alice.id, ("memory:read",), "https://r/mcp", now, now + 3600,
                         memory=memory)
        await store.save_tokens([token("t-work", work.id), token("t-default", None)])
        for pid, memory in (("p-work", work.id), ("p-default", None)):
            assert await store.save_personal_token(PersonalToken(pid, f"h-{pid}", alice.id, "", ("memory:read",),
                                                                 "https://r/mcp", now, None, memory=memory))
        for client, memory in (("c-work", work.id), ("c-default", None)):
            await store.remember_consent(RememberedConsent(alice.id, client, "http://127.0.0.1/cb", "https://r/mcp",
                                                           ("memory:read",), now, now + 3600, memory))
        assert await store.delete_memory(alice.id, work.id)
        assert not await store.delete_memory(alice.id, work.id)
        assert await store.get_token("t-work", now) is None
        assert (await store.get_token("t-default", now)) is not None
        assert await store.get_personal_token("h-p-work", now) is None
        assert (await store.get_personal_token("h-p-default", now)) is not None
        assert [c.client_id for c in await store.list_consents(alice.id, now)] == ["c-default"]
        assert [m.name for m in await store.list_memories(alice.id)] == ["games"]

        # A user being removed gets no new memory; the removal's last step forgets theirs.
        await store.begin_removal(alice.username)
        with pytest.raises(auth_memories.MemoriesError, match="being removed"):
            await store.create_memory(auth_memories.Memory("mem_late", alice.id, "late", now), 10)
        assert [m.name for m in await store.list_memories(alice.id)] == ["games"]
        await store.remove_user(alice.id)
        assert await store.list_memories(alice.id) == []
    finally:
        await store.close()


def test_memory_names_are_checked() -> None:
    for bad in ("", " a", "a ", "a\nb", "\x00", "x" * 65, "default"):
        with pytest.raises(auth_memories.MemoriesError):
            auth_memories.check_name(bad)
    for good in ("a", "Work notes", "ünïcode ✓", "x" * 64, "Default"):
        assert auth_memories.check_name(good) == good


async def test_an_older_database_gets_the_memory_columns(tmp_path: Path) -> None:
    """A file made before named memories: its records gain a NULL `memory` (the default memory)."""
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript(SCHEMA.replace(",\n    memory TEXT", ""))
        conn.execute("INSERT INTO auth_tokens (token_hash, kind, grant_id, client_id, subject, scopes, resource, "
                     "issued_at, expires_at) VALUES ('h', 'access', 'g', 'c', 'u', 'memory:read', 'r', 1, 9e9)")
        assert "memory" not in {r[1] for r in conn.execute("PRAGMA table_info(auth_tokens)")}
    storage = SQLiteStorage(path)
    try:
        token = await storage.get_token("h", time.time())
        assert token is not None and token.memory is None
        for table in ("auth_codes", "auth_tokens", "auth_consents", "auth_personal_tokens", "auth_revocations"):
            columns = await storage.db.read(lambda c, t=table: [r[1] for r in c.execute(f"PRAGMA table_info({t})")])
            assert "memory" in columns, table
    finally:
        await storage.close()


async def test_the_account_memory_browser_shows_the_chosen_memory(server: RunningServer) -> None:
    work = await memories.create_memory(server.storage, ALICE, "work", 20)
    user, _ = await memories.resolve_memory(server.storage, ALICE)
    await server.storage.create_entities(work.id, [Entity(name="at work", entityType="t", observations=["o"])])
    await server.storage.create_entities(user.id, [Entity(name="at home", entityType="t", observations=[])])
    browser = await signed_in(server)
    try:
        async with browser.session.get(server.url + "/account/memory") as resp:
            home = await resp.text()
        assert "at home" in home and "at work" not in home and '<option value="work">work</option>' in home
        async with browser.session.get(server.url + "/account/memory?memory=work") as resp:
            page = await resp.text()
        assert "at work" in page and "at home" not in page
        assert '<input type="hidden" name="memory" value="work">' in page  # the delete forms say which
        async with browser.session.get(server.url + "/account/memory?memory=nope") as resp:
            assert resp.status == 404 and "no memory named" in (await resp.text()).replace("&#x27;", "'")
    finally:
        await browser.close()


async def test_export_and_import_work_on_a_named_memory(server: RunningServer, tmp_path: Path) -> None:
    """`memory export|import --memory NAME` resolve the name among the user's memories
    (`server.admin.memory_owner`)."""
    work = await memories.create_memory(server.storage, ALICE, "work", 20)
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"type": "entity", "name": "Imported", "entityType": "thing",
                                  "observations": ["from a file"]}) + "\n")
    done = await cli(server, "memory", "import", "--user", ALICE, "--memory", "work", str(source))
    assert done.returncode == 0, done.stderr
    assert "memory 'work'" in done.stdout
    user, _ = await memories.resolve_memory(server.storage, ALICE)
    assert await graph_names(server, work.id) == ["Imported"]
    assert await graph_names(server, user.id) == []
    out = tmp_path / "out.jsonl"
    exported = await cli(server, "memory", "export", "--user", ALICE, "--memory", "work", str(out))
    assert exported.returncode == 0, exported.stderr
    assert [json.loads(line)["name"] for line in out.read_text().splitlines()] == ["Imported"]
