"""The account pages: a person's own view of their account, in the browser.

    GET  /account                  connected applications, live MCP sessions, personal access
                                   tokens, sign out everywhere
    POST /account/disconnect       disconnect an application (client_id)
    POST /account/sessions/end     end one live MCP session (session_id)
    POST /account/tokens           create a personal access token (shown once, on the answer)
    POST /account/tokens/revoke    revoke one (token_id)
    GET  /account/memory           the memory browser (?q= search, ?entity= one entity, ?page=)
    POST /account/memory/delete    delete an entity or one observation: a confirmation page, then
                                   the same POST with confirmed=yes
    GET  /consents                 303 to /account: the remembered approvals are part of it

They live in `server/` because they show what `auth/` must not know about (MCP sessions, the
memory); they use `auth/`'s browser login, CSRF check and page renderer, and are installed as the
authorization server's own pages are (`auth.routes.install(app_pages=...)`): the login cookie,
error pages, and a sign-in that comes back here.

Defences (docs/security.md, "The account pages"):
* Signed out, a page is the sign-in page; a POST is refused (401) before anything is read.
* Every POST carries the session's CSRF token (`auth.browser.csrf_form`), checked first: a forged
  form changes nothing (403).
* Ownership is checked on the server for every id a form names, against the signed-in user: an
  application must be connected to *this* user, a session's record must be this user's, a
  personal access token must be one of this user's live tokens, an entity must be in this
  user's graph (the graph is only ever opened with the user as owner).
  Anything else is 404 with nothing changed, the same whether the id exists for someone else or
  not at all.
* Disconnecting forgets the user's remembered approvals of the client and deletes its tokens and
  codes for this user in one step (`withdraw_consents`), then records the revocation: this
  process ends the client's live sessions at once (their open streams close), other processes
  within a second, and the client's next request gets 401.
* The pages carry `auth.pages.render`'s headers (CSP `default-src 'none'`, `form-action 'self'`,
  no framing, no Referer, no caching), load nothing from elsewhere and need no script.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from aiohttp import web

from auth import browser, csrf, memories, personal, signin
from auth.errors import PageError
from auth.models import Revocation, User
from auth.server import AUTH_SERVER
from auth.signin import Route
from server.account import applications, memory, tokens
from server.account.html import page, post_form
from server.memory.graph import GraphClosedError, ObservationDeletion
from server.principals import parse_owner_label
from server.storage import Storage
from transports.registry import SessionRegistry

_BACK = '<a href="/account">Back to your account</a>'


def _see_other(request: web.Request, path: str) -> web.Response:
    return web.Response(status=303, headers={"Location": request.app[AUTH_SERVER].settings.url(path),
                                             "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})


async def _viewer(request: web.Request) -> tuple[str, User] | web.Response:
    """The signed-in user and the session's CSRF token, or the sign-in page that returns here."""
    sess = await browser.session(request)
    user = await browser.current_user(request)
    if user is None:
        return signin.page(request, signin.SignInView(csrf.token(sess), return_to=request.path))
    return csrf.token(sess), user


async def _acting(request: web.Request, title: str) -> tuple[str, User, dict[str, str]]:
    """A POST's CSRF check, then its signed-in user: (CSRF token, user, form)."""
    sess, form = await browser.csrf_form(request, title)
    user = await browser.current_user(request)
    if user is None:
        raise PageError("You are not signed in, or your sign-in has ended.", 401, title,
                        hint_html='<a href="/account">Sign in on your account page</a> and try again.')
    return csrf.token(sess), user, form


@dataclass(eq=False)
class AccountPages:
    storage: Storage
    registry: SessionRegistry

    @property
    def routes(self) -> list[Route]:
        return [
            ("GET", "/account", self.handle_account),
            ("POST", "/account/disconnect", self.handle_disconnect),
            ("POST", "/account/sessions/end", self.handle_end_session),
            ("POST", "/account/tokens", self.handle_create_token),
            ("POST", "/account/tokens/revoke", self.handle_revoke_token),
            ("GET", "/account/memory", self.handle_memory),
            ("POST", "/account/memory/delete", self.handle_delete),
            ("GET", "/consents", self.handle_consents),
        ]

    async def handle_account(self, request: web.Request) -> web.Response:
        viewer = await _viewer(request)
        if isinstance(viewer, web.Response):
            return viewer
        csrf_token, user = viewer
        now = request.app[AUTH_SERVER].clock()
        records = await self.storage.list_sessions(user.id)
        known = {m.id: m.name for m in await memories.memories_of(self.storage, user)}
        apps = await applications.connected(self.storage, user.id, now, records, known)
        personal_tokens = await self.storage.list_personal_tokens(user.id, now)
        by_id = {t.id: t for t in personal_tokens}
        names: dict[str, str | None] = {a.client_id: a.name for a in apps}
        for record in records:
            client_id = applications.session_client(record)
            token_id = personal.token_id_of(client_id)
            if token_id is not None:
                names[client_id] = tokens.session_name(by_id.get(token_id))
        settings = request.app[AUTH_SERVER].settings
        body = (f"<p>Signed in as <strong>{escape(user.username)}</strong>.</p>"
                + applications.applications_section(csrf_token, apps)
                + applications.sessions_section(csrf_token, records, names)
                + tokens.section(csrf_token, personal_tokens, settings, user.id, known)
                + '<h2 id="memory">Memory</h2><p><a href="/account/memory">Browse your memory</a>: '
                  "its entities, observations and relations; search it and delete what should go.</p>"
                + '<h2 id="sign-out">Sign out everywhere</h2><p>Signs you out in every browser, forgets your '
                  "remembered approvals, disconnects every application and revokes your personal access "
                  "tokens.</p>"
                + post_form("/logout", csrf_token, {}, "Sign out everywhere", danger=True))
        return page("Your account", "/account", body)

    async def handle_consents(self, request: web.Request) -> web.Response:
        return _see_other(request, "/account#applications")

    async def handle_disconnect(self, request: web.Request) -> web.Response:
        title = "Disconnecting failed"
        _, user, form = await _acting(request, title)
        client_id = form.get("client_id", "")
        records = await self.storage.list_sessions(user.id)
        apps = await applications.connected(self.storage, user.id, request.app[AUTH_SERVER].clock(), records)
        if not client_id or client_id not in {a.client_id for a in apps}:
            raise PageError("That application is not connected to your account (it may have been disconnected "
                            "already).", 404, title, hint_html=_BACK)
        server = request.app[AUTH_SERVER]
        await server.store.withdraw_consents(user.id, client_id)
        # Ends this process's sessions of the client now (their streams close), and is recorded for
        # the other processes.
        await server.notify(Revocation(user.id, client_id, None))
        for record in records:
            # A record no process holds any more (its process stopped) goes too.
            if applications.session_client(record) == client_id:
                await self.storage.delete_session(record.session_id)
        return _see_other(request, "/account#applications")

    async def handle_end_session(self, request: web.Request) -> web.Response:
        title = "Ending the session failed"
        _, user, form = await _acting(request, title)
        session_id = form.get("session_id", "")
        record = await self.storage.get_session(session_id) if session_id else None
        if record is None or record.user != user.id or parse_owner_label(record.owner)[0] != user.id:
            raise PageError("There is no such live session of yours (it may have ended already).", 404, title,
                            hint_html=_BACK)
        if not await self.registry.close_where(lambda s: s.session_id == session_id):
            # Held by another process, or by none: deleting the record ends it wherever it is.
            await self.storage.delete_session(session_id)
        return _see_other(request, "/account#sessions")

    async def handle_create_token(self, request: web.Request) -> web.Response:
        title = "Creating the token failed"
        _, user, form = await _acting(request, title)
        server = request.app[AUTH_SERVER]
        settings = server.settings
        back = '<a href="/account#new-token">Back to your account</a> to try again.'
        name, expires = form.get("name", ""), form.get("expires", "")
        wanted = " ".join(s for s in settings.scopes_supported if form.get(f"scope {s}"))
        problem = tokens.form_problem(name, wanted, expires)
        if problem is not None:
            raise PageError(problem, 400, title, hint_html=back)
        chosen = await memories.find_by_name(self.storage, user, form.get("memory") or memories.DEFAULT_NAME)
        if chosen is None:
            raise PageError(f"You have no memory named {form.get('memory', '')!r} (it may have been renamed or "
                            "deleted): choose one from the list.", 400, title, hint_html=back)
        try:
            created = await personal.create(
                server.store, settings, user, name=name, scopes=personal.parse_scopes(wanted, settings),
                days=personal.parse_expiry(expires), now=server.clock(), memory=chosen.id)
        except personal.PersonalTokenError as exc:  # the account is being removed
            raise PageError(str(exc), 409, title, hint_html=_BACK) from None
        return page("Token created", "", tokens.created_body(created.secret, created.token))

    async def handle_revoke_token(self, request: web.Request) -> web.Response:
        title = "Revoking the token failed"
        _, user, form = await _acting(request, title)
        server = request.app[AUTH_SERVER]
        token_id = form.get("token_id", "")
        mine = {t.id for t in await self.storage.list_personal_tokens(user.id, server.clock())}
        if token_id not in mine or await self.storage.delete_personal_token(token_id) is None:
            raise PageError("You have no such personal access token (it may have been revoked already, or have "
                            "expired).", 404, title, hint_html=_BACK)
        await server.notify(Revocation(user.id, personal.client_id(token_id), None))
        return _see_other(request, "/account#tokens")

    async def handle_memory(self, request: web.Request) -> web.Response:
        viewer = await _viewer(request)
        if isinstance(viewer, web.Response):
            return viewer
        csrf_token, user = viewer
        query = request.query
        chosen = await self._memory(user, query.get("memory", ""), "Your memory")
        view = memory.View(query=query.get("q", "").strip(), entity=query.get("entity", ""),
                           page=memory.parse_page(query.get("page")), memory=_shown_name(chosen))
        if view.entity:
            graph = await self.storage.open_nodes(chosen.id, [view.entity])
        elif view.query:
            graph = await self.storage.search_nodes(chosen.id, view.query)
        else:
            graph = await self.storage.read_graph(chosen.id)
        entities, relations = memory.decode(graph)
        names = [m.name for m in await memories.memories_of(self.storage, user)]
        return page("Your memory", "/account/memory",
                    memory.browser_body(csrf_token, view, entities, relations, names))

    async def _memory(self, user: User, name: str, title: str) -> memories.Memory:
        """The user's memory of that name (the default one for no name); a 404 page otherwise."""
        found = await memories.find_by_name(self.storage, user, name or memories.DEFAULT_NAME)
        if found is None:
            raise PageError(f"You have no memory named {name!r} (it may have been renamed or deleted).", 404, title,
                            hint_html='<a href="/account/memory">Back to your memory</a>')
        return found

    async def handle_delete(self, request: web.Request) -> web.Response:
        title = "Deleting failed"
        csrf_token, user, form = await _acting(request, title)
        chosen = await self._memory(user, form.get("memory", ""), title)
        shown = _shown_name(chosen)
        name = form.get("entity", "")
        wanted = form.get("observation")
        entities, relations = memory.decode(await self.storage.open_nodes(chosen.id, [name])) if name else ([], [])
        entity = next((e for e in entities if e["name"] == name), None)
        missing = "There is no such entity in your memory (it may have been deleted already)."
        if entity is None:
            raise PageError(missing, 404, title,
                            hint_html=f'<a href="{escape(memory.View(memory=shown).url())}">Back to your memory</a>')
        observation = next((o for o in entity["observations"] if memory.digest(o) == wanted), None)
        if wanted is not None and observation is None:
            raise PageError("That entity has no such observation (it may have been deleted already).", 404, title,
                            hint_html=f'<a href="{escape(memory.View(entity=name, memory=shown).url())}">Back to the '
                            'entity</a>')
        if form.get("confirmed") != "yes":
            confirm = "Delete this observation?" if observation is not None else "Delete this entity?"
            return page(confirm, "", memory.confirm_body(csrf_token, entity, observation, len(relations), shown))
        try:
            if observation is not None:
                await self.storage.delete_observations(chosen.id, [ObservationDeletion(entityName=name,
                                                                                        observations=[observation])])
                return _see_other(request, memory.View(entity=name, memory=shown).url())
            await self.storage.delete_entities(chosen.id, [name])
        except GraphClosedError as exc:
            raise PageError(str(exc), 409, title, hint_html=_BACK) from None
        return _see_other(request, memory.View(memory=shown).url())


def _shown_name(chosen: memories.Memory) -> str:
    """The memory as the browser's URLs name it: nothing for the default one."""
    return "" if chosen.is_default else chosen.name
