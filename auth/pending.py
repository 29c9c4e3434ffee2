"""The validated authorization request, as it waits for the user in the browser's forms.

`auth.authorize` validates a request and seals it (`auth.browser.seal`) into the sign-in and
consent forms, or into the upstream sign-in's pending cookie (`auth.upstream.flow`); whoever
continues it unseals this model. A module of its own so that the sign-in methods
(`auth.signin`) can describe it without importing the authorization endpoint.
"""

from __future__ import annotations

from urllib.parse import urlencode

from pydantic import BaseModel

from auth.scopes import join


class AuthorizationRequest(BaseModel):
    """A validated request, sealed into the login and consent forms (auth.browser)."""

    client_id: str
    redirect_uri: str
    redirect_uri_explicit: bool
    state: str | None
    code_challenge: str
    scopes: tuple[str, ...]
    resource: str
    # Set in consent seals: the approval must come from the user the page was shown to.
    subject: str | None = None
    # OpenID Connect: echoed in the ID token (auth.oidc_core), so it travels with the code.
    nonce: str | None = None
    # SHA-256 of the browser-binding cookie of the browser that opened /authorize.
    binding: str = ""
    # The consent page must be shown even for a remembered approval: `prompt=consent`, or the
    # flow was not started by a first-party navigation (kept through the login, auth.consent).
    prompt_consent: bool = False
    # OpenID Connect `prompt=login` and `max_age` (seconds): how recent the login must be.
    prompt_login: bool = False
    max_age: int | None = None

    def needs_login(self, auth_time: float, now: float) -> bool:
        """Must the user type the password again, although this browser is signed in?"""
        if self.prompt_login or self.max_age == 0:
            return True
        return self.max_age is not None and now - auth_time > self.max_age

    def query(self) -> str:
        """An equivalent /authorize query, to resume after login."""
        params = {"response_type": "code", "client_id": self.client_id}
        if self.redirect_uri_explicit:
            params["redirect_uri"] = self.redirect_uri
        if self.state is not None:
            params["state"] = self.state
        params.update(code_challenge=self.code_challenge, code_challenge_method="S256",
                      scope=join(self.scopes), resource=self.resource)
        if self.nonce is not None:
            params["nonce"] = self.nonce
        prompt = [name for name, on in (("login", self.prompt_login), ("consent", self.prompt_consent)) if on]
        if prompt:
            params["prompt"] = " ".join(prompt)
        if self.max_age is not None:
            params["max_age"] = str(self.max_age)
        return urlencode(params)
