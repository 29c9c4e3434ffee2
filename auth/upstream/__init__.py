"""Sign-in through an upstream OpenID Connect provider (Auth0, Keycloak, Okta, Google, Entra ID,
any certified provider), while this server stays the authorization server of MCP clients: the
provider says who the user is, this server issues its own codes and tokens, and the provider's
tokens never leave it (no token passthrough).

    settings.py    what the `upstream_*` settings become
    http.py        HTTP to the provider (aiohttp, deadlines, size bounds) and its error kinds
    discovery.py   OpenID Connect Discovery 1.0, and the provider's JWKS with key rotation
    id_token.py    ID token validation (OpenID Connect Core 3.1.3.7, joserfc for signatures)
    client.py      the relying party: authorization URL, code exchange, refresh, UserInfo, start-up check
    admission.py   who of the provider's users may sign in here
    kept.py        the refresh token kept (AES-GCM) for `upstream_check=refresh`, and that check
    flow.py        the `auth.signin` method: its routes, the pending cookie, the account link

User-facing setup: docs/auth0.md and docs/oidc.md.
"""
