// A real OpenID provider for the tests: oidc-provider (OpenID Certified), pinned in package.json.
//
// Usage: node provider.mjs CONFIG.json
// CONFIG: {issuer, port, jwks: {keys: [private JWKs]}, accounts: {id: {claims...}},
//          access_token_ttl?, clients?: [static client metadata]}
// Prints "PORT <n>" once the provider listens, then "CONTROL <n>" for its control port:
//   POST /accounts/<id>/disable | /enable   the account stops (or starts again) existing for
//                                           the provider: sign-in and refresh with it fail
//
// Sign-in uses oidc-provider's own development interactions: a login form (any password; the
// login names one of the configured accounts) and a consent form. Dynamic registration is open,
// so each test registers its own client (its redirect URI names the test server's port).
// Refresh tokens rotate on every use, as Auth0 does with rotation on, and a reused one revokes
// the grant (oidc-provider's reuse detection).
import http from 'node:http';
import fs from 'node:fs';
import Provider from 'oidc-provider';

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const disabled = new Set();

const provider = new Provider(config.issuer, {
  clients: config.clients || [],
  jwks: config.jwks,
  cookies: { keys: ['memory-mcp test provider cookie key'] },
  async findAccount(ctx, id) {
    const account = config.accounts[id];
    if (!account || disabled.has(id)) return undefined;
    return {
      accountId: id,
      async claims() { return { sub: id, ...account }; },
    };
  },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
    groups: ['groups'],
  },
  scopes: ['openid', 'offline_access', 'profile', 'email', 'groups'],
  features: {
    devInteractions: { enabled: true },
    registration: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    revocation: { enabled: true },
  },
  pkce: { required: () => true },
  rotateRefreshToken: () => true,
  ttl: {
    AccessToken: config.access_token_ttl || 3600,
    AuthorizationCode: 60,
    IdToken: 3600,
    RefreshToken: 14 * 24 * 3600,
    Grant: 14 * 24 * 3600,
    Interaction: 3600,
    Session: 24 * 3600,
  },
});
// Behind the test's gateway, which keeps the browser's Host header.
provider.proxy = true;

const server = http.createServer(provider.callback());
server.listen(config.port || 0, '127.0.0.1', () => {
  process.stdout.write(`PORT ${server.address().port}\n`);
  const control = http.createServer((req, res) => {
    const match = /^\/accounts\/([^/]+)\/(disable|enable)$/.exec(req.url || '');
    if (req.method === 'POST' && match) {
      if (match[2] === 'disable') disabled.add(decodeURIComponent(match[1]));
      else disabled.delete(decodeURIComponent(match[1]));
      res.writeHead(204).end();
      return;
    }
    res.writeHead(404).end();
  });
  control.listen(0, '127.0.0.1', () => {
    process.stdout.write(`CONTROL ${control.address().port}\n`);
  });
});
