"""The authorization endpoint (RFC 6749 section 4.1, OAuth 2.1): `GET /authorize`, `POST /consent`.

Order of checks: client and redirect URI first, and a failure there is an HTML page, never a
redirect (RFC 6749 section 4.1.2.1; otherwise /authorize is an open redirector). Only once the
redirect URI is known to belong to the client are errors sent back to it, with `state` and the
RFC 9207 `iss`. Consent is asked on every authorization, logged in or not: a silent approval lets
any registered client obtain tokens for whoever is logged in (FastMCP GHSA-6x8h-498w-gv8c). The
one exception is an approval the user explicitly chose to remember, for exactly this client,
redirect URI, resource and scopes, on a first-party navigation (`auth.consent`).

The consent page also asks which of the user's memories the application gets (`auth.memories`: a
`memory` select, `default` preselected, or a `new_memory` to create there); the code, and so the
grant, is bound to it, and a remembered approval stands for the memory chosen with it. A memory
that cannot be used (an unknown name, a bad or taken new name, the cap) shows the page again with
the reason, never an error page: the request is still valid.

Every sealed request carries the hash of the browser-binding cookie (`auth.browser`), so the
login and consent forms can only be completed by the browser that opened `/authorize`.

OpenID Connect `prompt` and `max_age` (Core 3.1.2.1): `prompt=login`, and a `max_age` that the
browser's login is older than (`max_age=0` always), show the password form even to a signed-in
user; `prompt=consent` shows the consent page even for a remembered approval; `prompt=none` never
shows a page: it answers `login_required`, `consent_required`, or the code of a remembered
approval. A code carries the time the user typed the password (`auth.browser.Login.auth_time`),
which becomes the ID token's `auth_time`. After the password form the login POST continues the
request itself (`resume`) instead of sending the browser back through /authorize: the login it
just made satisfies `prompt=login` and any `max_age`, which a fresh /authorize could not know.

No redirect off our origin may follow a form POST whose page says `form-action 'self'`: Chromium
applies `form-action` to every redirect after a submission and leaves the user on the form with
no message (the remembered-approval case of the login POST did exactly that). So the login POST
answers a page, never a redirect: the consent page, or for a remembered approval a page that
navigates to the client (`pages.continue_to`), a navigation that is not a form submission. The
login page keeps `form-action 'self'` exactly: it holds the password, and widening it to a
redirect URI that any registered client may choose would let injected markup post the password
there. The consent page does list its validated redirect URI's origin (`pages`), since its 303 to
the client is the answer it exists for and it holds nothing but the CSRF token and the seal.
"""

from __future__ import annotations

from urllib.parse import urlencode, urlsplit

from aiohttp import web
from aiohttp_session import Session

from auth import browser, cimd, consent, csrf, memories, pages, rfc7636, signin
from auth.cimd_fetch import ClientMetadataError
from auth.crypto import hash_secret, new_secret
from auth.errors import OAuth2Error, PageError
from auth.http import client_address, single_query
from auth.models import AuthorizationCode, Client, User
from auth.pending import AuthorizationRequest
from auth.rfc8252 import has_unsafe_characters, is_loopback, matches, origin
from auth.rfc8707 import is_our_resource, normalize_resource
from auth.scopes import granted
from auth.server import AUTH_SERVER, AuthorizationServer


class ErrorRedirect(OAuth2Error):
    """An error sent back to the client at its redirect URI (RFC 6749 section 4.1.2.1), with
    `state` and the RFC 9207 `iss`. Raised only once the redirect URI is known to be the
    client's (module docstring); `auth.errors.middleware` answers it like any `OAuth2Error`."""

    def __init__(self, error: str, description: str, *, redirect_uri: str, state: str | None,
                 issuer: str) -> None:
        super().__init__(error, description, status=303)
        self.redirect_uri = redirect_uri
        self.state = state
        self.issuer = issuer

    def response(self, page: bool = False) -> web.Response:
        params = {"error": self.error, "error_description": self.description}
        if self.state is not None:
            params["state"] = self.state
        params["iss"] = self.issuer
        return redirect(with_params(self.redirect_uri, params))


def with_params(uri: str, params: dict[str, str]) -> str:
    query = urlencode(params)
    if uri.endswith("?"):
        return uri + query
    return uri + ("&" if urlsplit(uri).query else "?") + query


def redirect(location: str) -> web.Response:
    # 303 after a POST (the browser must GET the callback), also fine after a GET.
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store",
                                             "Referrer-Policy": "no-referrer"})


async def resolve_client(server: AuthorizationServer, params: dict[str, str],
                         address: str = "unknown") -> tuple[Client, str, bool]:
    client_id = params.get("client_id")
    if not client_id:
        raise PageError("The request has no client_id.")
    try:
        # A registered client, or one described by its metadata document (auth.cimd, fetched
        # with the caller's address counted against the registration budget).
        client = await cimd.lookup_client(server, client_id, address)
    except ClientMetadataError as exc:
        raise PageError(f"The application's client ID metadata document cannot be used: {exc.description}") from exc
    if client is None:
        raise PageError("Unknown client. The application may need to register again.")
    requested = params.get("redirect_uri")
    if requested is None:
        if len(client.redirect_uris) != 1:
            raise PageError("The request has no redirect_uri and the client registered several.")
        return client, client.redirect_uris[0], False
    if has_unsafe_characters(requested):
        # Never redirected to: the string received is not the URI a parser would see.
        raise PageError("The redirect_uri contains whitespace or control characters, which no registered "
                        "redirect URI has; the application must send it exactly as registered.")
    if not matches(requested, client.redirect_uris):
        raise PageError("The redirect_uri is not registered for this client.")
    return client, requested, True


def validate(server: AuthorizationServer, params: dict[str, str], client: Client, redirect_uri: str,
             explicit: bool) -> AuthorizationRequest:
    def refused(error: str, description: str) -> ErrorRedirect:
        return ErrorRedirect(error, description, redirect_uri=redirect_uri, state=params.get("state"),
                             issuer=server.settings.issuer)

    response_type = params.get("response_type")
    if not response_type:
        raise refused("invalid_request", "response_type is required")
    if response_type != "code":
        raise refused("unsupported_response_type", "only response_type=code is supported")
    challenge = params.get("code_challenge")
    if not challenge:
        raise refused("invalid_request", "PKCE is required: send code_challenge with code_challenge_method=S256")
    if params.get("code_challenge_method") != "S256":
        raise refused("invalid_request", "code_challenge_method must be S256")
    if not rfc7636.valid_challenge(challenge):
        raise refused("invalid_request", "code_challenge is not a valid S256 challenge")
    resource = params.get("resource") or server.settings.url("/mcp")
    canonical = normalize_resource(resource)
    if canonical is None or not is_our_resource(resource, server.settings.resources):
        raise refused("invalid_target", "the resource is not served by this server")
    prompts = frozenset(params.get("prompt", "").split())
    if "none" in prompts and len(prompts) > 1:
        raise refused("invalid_request", "prompt=none cannot be combined with other prompt values")
    try:
        max_age = _max_age(params.get("max_age"))
    except ValueError:
        raise refused("invalid_request", "max_age must be a whole number of seconds (0 or more)") from None
    return AuthorizationRequest(
        client_id=client.client_id, redirect_uri=redirect_uri, redirect_uri_explicit=explicit,
        state=params.get("state"), code_challenge=challenge, scopes=granted(params.get("scope"), server.settings),
        resource=canonical, nonce=params.get("nonce"), prompt_login="login" in prompts,
        max_age=max_age,
    )


_MAX_AGE_DIGITS = 10


def _max_age(value: str | None) -> int | None:
    """None for an absent max_age (RFC 6749 3.1: a parameter without a value is as if omitted);
    ValueError for anything but a whole number of seconds."""
    if not value:
        return None
    if not (value.isascii() and value.isdigit() and len(value) <= _MAX_AGE_DIGITS):
        raise ValueError(value)
    return int(value)


async def consent_page(server: AuthorizationServer, sess: Session, req: AuthorizationRequest, client: Client,
                       user: User, *, chosen: str = memories.DEFAULT_NAME, new_memory: str = "",
                       error: str | None = None) -> web.Response:
    """The consent page, with the user's memories to choose from (`auth.memories`). `error`: the
    memory chosen or to be created could not be used; the page is shown again saying why."""
    bound = req.model_copy(update={"subject": user.id})
    redirect_origin = origin(req.redirect_uri)
    names = [m.name for m in await memories.memories_of(server.store, user)]
    return pages.consent(
        csrf.token(sess), browser.seal(server.sealer, bound), username=user.username,
        client_name=client.client_name, client_id=client.client_id,
        redirect_host=urlsplit(req.redirect_uri).netloc, loopback=is_loopback(req.redirect_uri),
        scopes=req.scopes, resource=req.resource, verified_host=client.verified_domain,
        form_action=(redirect_origin,) if redirect_origin else None,
        memories=names, chosen=chosen if chosen in names else memories.DEFAULT_NAME, new_memory=new_memory,
        error=error,
    )


async def issue_code(server: AuthorizationServer, req: AuthorizationRequest, login: browser.Login,
                     memory: str | None = None) -> str | None:
    """Mint a code for `req` approved under `login`, bound to `memory` (a memory id of the user's;
    None: the default memory); the client's redirect URI carrying it, or None when the login ended
    meanwhile (sign-out everywhere, `GrantStore.save_code`)."""
    code = new_secret()
    now = server.clock()
    saved = await server.store.save_code(AuthorizationCode(
        code_hash=hash_secret(code), client_id=req.client_id, redirect_uri=req.redirect_uri,
        code_challenge=req.code_challenge, scopes=req.scopes, resource=req.resource, subject=login.user.id,
        auth_time=login.auth_time, expires_at=now + server.settings.code_ttl, nonce=req.nonce,
        memory=None if memory is None else memories.stored_id(login.user.id, memory),
    ), login.login_hash)
    if not saved:
        return None
    params = {"code": code}
    if req.state is not None:
        params["state"] = req.state
    params["iss"] = server.settings.issuer
    return with_params(req.redirect_uri, params)


def signed_out() -> PageError:
    return PageError("You were signed out while approving. Start again from your application.", 401)


def unknown_client() -> PageError:
    return PageError("Unknown client. The application may need to register again.")


async def resume(server: AuthorizationServer, sess: Session, req: AuthorizationRequest,
                 login: browser.Login) -> web.Response:
    """The login POST's answer for a pending request: the consent page, or for a remembered
    approval a page that takes the browser to the client (never a redirect: module docstring)."""
    client = await server.store.get_client(req.client_id)
    if client is None:
        raise unknown_client()
    found = None if req.prompt_consent else await consent.remembered(
        server, login.user, req.client_id, req.redirect_uri, req.resource, req.scopes)
    if found is not None:
        location = await issue_code(server, req, login, found.memory)
        if location is None:
            raise signed_out()
        return pages.continue_to(location)
    return await consent_page(server, sess, req, client, login.user)


async def complete_approved(server: AuthorizationServer, sess: Session, req: AuthorizationRequest,
                            login: browser.Login, *, remember: bool) -> web.Response:
    """For a sign-in method that took the approval before sending the browser away (the upstream
    provider's, `auth.signin`): the code, for the user who has just signed in. A page that
    navigates to the client, never a redirect: the provider's own sign-in form may be the form
    submission this answer ends (`pages.continue_to`). The approval was given before the user was
    known, so before their memories could be listed: a user who has only the default memory gets
    the code for it; one with others is shown the consent page now, to choose (the approval
    already given is not taken as a choice of memory)."""
    client = await server.store.get_client(req.client_id)
    if client is None:
        raise unknown_client()
    if len(await memories.memories_of(server.store, login.user)) > 1:
        return await consent_page(server, sess, req, client, login.user)
    location = await issue_code(server, req, login)
    if location is None:
        raise signed_out()
    if remember:
        await consent.remember(server, login.user, req.client_id, req.redirect_uri, req.resource, req.scopes)
    return pages.continue_to(location)


async def handle_authorize(request: web.Request) -> web.Response:
    server = request.app[AUTH_SERVER]
    # Whatever the answer (an error page or redirect included), the binding cookie goes with it,
    # refreshed on every visit so that it outlives the seals of the page it comes with.
    binding = browser.refresh_binding(request)
    params = single_query(request)
    client, redirect_uri, explicit = await resolve_client(server, params, client_address(request))
    req = validate(server, params, client, redirect_uri, explicit)
    prompts = frozenset(params.get("prompt", "").split())
    first_party = consent.first_party_navigation(request)
    req = req.model_copy(update={"binding": hash_secret(binding),
                                 "prompt_consent": "consent" in prompts or not first_party})
    sess = await browser.session(request)
    login = await browser.current_login(request)
    # A signed-in browser whose login is older than the request allows counts as signed out here.
    again = login is not None and req.needs_login(login.auth_time, server.clock())
    active = None if again else login
    found = None if active is None or req.prompt_consent else await consent.remembered(
        server, active.user, req.client_id, req.redirect_uri, req.resource, req.scopes)
    if active is not None and found is not None:
        location = await issue_code(server, req, active, found.memory)
        if location is None:
            raise signed_out()
        return redirect(location)
    if "none" in prompts:
        # OIDC Core 3.1.2.6: a request that would need a page fails instead.
        raise ErrorRedirect("login_required" if active is None else "consent_required",
                            "user interaction is required", redirect_uri=req.redirect_uri, state=req.state,
                            issuer=server.settings.issuer)
    if active is None:
        return signin.page(request, signin.SignInView(csrf.token(sess), browser.seal(server.sealer, req), req, client,
                                                      username=login.user.username if login else "", again=again))
    return await consent_page(server, sess, req, client, active.user)


async def handle_consent(request: web.Request) -> web.Response:
    server = request.app[AUTH_SERVER]
    sess, form = await browser.csrf_form(request)
    req = browser.unseal(server.sealer, form.get("request"), AuthorizationRequest)
    if req is None:
        raise PageError("This authorization request has expired or is invalid.")
    if not browser.bound(request, req.binding):
        raise PageError(pages.OTHER_BROWSER, 403)
    login = await browser.current_login(request)
    if login is None or login.user.id != req.subject:
        # Logged out (or in as someone else) since the page was shown: ask again.
        return redirect(server.settings.url("/authorize?" + req.query()))
    client = await server.store.get_client(req.client_id)
    if client is None:
        raise unknown_client()
    decision = form.get("decision")
    if decision == "deny":
        raise ErrorRedirect("access_denied", "the user denied the request", redirect_uri=req.redirect_uri,
                            state=req.state, issuer=server.settings.issuer)
    if decision != "approve":
        raise PageError("Choose approve or deny.")
    chosen = form.get(MEMORY_FIELD) or memories.DEFAULT_NAME
    new_name = form.get(NEW_MEMORY_FIELD) or ""
    try:
        memory = await _chosen_memory(server, login.user, chosen, new_name)
    except memories.MemoriesError as exc:
        page = await consent_page(server, sess, req, client, login.user, chosen=chosen, new_memory=new_name,
                                  error=str(exc))
        page.set_status(400)
        return page
    location = await issue_code(server, req, login, memory.id)
    if location is None:
        raise signed_out()
    if form.get(consent.REMEMBER_FIELD) == "1":
        await consent.remember(server, login.user, req.client_id, req.redirect_uri, req.resource, req.scopes,
                               memories.stored_id(login.user.id, memory.id))
    return redirect(location)


MEMORY_FIELD = "memory"
NEW_MEMORY_FIELD = "new_memory"


async def _chosen_memory(server: AuthorizationServer, user: User, chosen: str, new_name: str) -> memories.Memory:
    """The memory the consent form names: a new one when `new_name` is filled in (made now, for
    this user), else the existing one named `chosen`. `MemoriesError` with what to do otherwise."""
    if new_name:
        return await memories.create(server.store, user, new_name, limit=server.settings.max_memories_per_user,
                                     now=server.clock())
    found = await memories.find_by_name(server.store, user, chosen)
    if found is None:
        raise memories.MemoriesError(f"you have no memory named {chosen!r} (it may have been renamed or deleted "
                                     "meanwhile): choose one from the list, or create a new one")
    return found
