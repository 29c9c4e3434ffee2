// An MCP client written the way the TypeScript SDK's documentation shows: StreamableHTTPClientTransport
// with an OAuthClientProvider, UnauthorizedError -> redirect -> finishAuth(code) -> connect again.
//
// The person at the browser is the Python test: this script prints one JSON line per event on
// stdout ({"event": "authorize", "url": ...}) and reads the redirect it was sent to from stdin
// ({"redirect": "http://127.0.0.1:PORT/callback?code=...&state=..."}), as a desktop app would read
// its callback. It then lists the tools, creates one entity and reads the graph back.
//
// Usage: node ts_sdk_client.mjs SERVER_MCP_URL ENTITY_NAME

import { createInterface } from "node:readline";

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { UnauthorizedError } from "@modelcontextprotocol/sdk/client/auth.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [serverUrl, entityName] = process.argv.slice(2);
if (!serverUrl || !entityName) {
  console.error("usage: node ts_sdk_client.mjs SERVER_MCP_URL ENTITY_NAME");
  process.exit(2);
}

const emit = (event) => process.stdout.write(JSON.stringify(event) + "\n");
const stdin = createInterface({ input: process.stdin });
const lines = stdin[Symbol.asyncIterator]();
async function nextMessage() {
  const { value, done } = await lines.next();
  if (done) throw new Error("stdin closed before the redirect arrived");
  return JSON.parse(value);
}

// Never listened on: the test reads the redirect off the authorization server's Location header.
const REDIRECT_URL = "http://127.0.0.1:33419/callback";

class MemoryOAuthProvider {
  constructor() {
    this.store = {};
    this.expectedState = undefined;
  }
  get redirectUrl() {
    return REDIRECT_URL;
  }
  get clientMetadata() {
    return {
      client_name: "memory-mcp interop (TypeScript SDK)",
      redirect_uris: [REDIRECT_URL],
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
      token_endpoint_auth_method: "none",
    };
  }
  state() {
    this.expectedState = crypto.randomUUID();
    return this.expectedState;
  }
  clientInformation() {
    return this.store.client;
  }
  saveClientInformation(info) {
    this.store.client = info;
  }
  tokens() {
    return this.store.tokens;
  }
  saveTokens(tokens) {
    this.store.tokens = tokens;
  }
  redirectToAuthorization(url) {
    emit({ event: "authorize", url: url.toString() });
  }
  saveCodeVerifier(verifier) {
    this.store.verifier = verifier;
  }
  codeVerifier() {
    if (!this.store.verifier) throw new Error("no code verifier saved");
    return this.store.verifier;
  }
  saveDiscoveryState(state) {
    this.store.discovery = state;
  }
  discoveryState() {
    return this.store.discovery;
  }
}

const provider = new MemoryOAuthProvider();
const clientInfo = { name: "memory-mcp-interop-ts", version: "1.0.0" };

async function connect() {
  const transport = new StreamableHTTPClientTransport(new URL(serverUrl), { authProvider: provider });
  const client = new Client(clientInfo);
  try {
    await client.connect(transport);
    return client;
  } catch (error) {
    if (!(error instanceof UnauthorizedError)) throw error;
  }
  const { redirect } = await nextMessage();
  const params = new URL(redirect).searchParams;
  if (params.get("state") !== provider.expectedState) {
    throw new Error(`state mismatch: sent ${provider.expectedState}, got ${params.get("state")}`);
  }
  await transport.finishAuth(params.get("code"));
  // The first transport is spent (its start() ran); a new one picks up the saved tokens.
  const retry = new Client(clientInfo);
  await retry.connect(new StreamableHTTPClientTransport(new URL(serverUrl), { authProvider: provider }));
  return retry;
}

const client = await connect();
emit({
  event: "connected",
  server: client.getServerVersion(),
  protocolVersion: client.transport?.protocolVersion ?? null,
  tokenType: provider.store.tokens?.token_type,
  hasRefreshToken: Boolean(provider.store.tokens?.refresh_token),
});
const { tools } = await client.listTools();
emit({ event: "tools", names: tools.map((t) => t.name) });
const created = await client.callTool({
  name: "create_entities",
  arguments: { entities: [{ name: entityName, entityType: "test", observations: ["made by the TypeScript SDK"] }] },
});
emit({ event: "created", result: created });
const graph = await client.callTool({ name: "read_graph", arguments: {} });
emit({ event: "graph", result: graph });
// Paging (issue 14): the SDK checks each structuredContent, nextCursor included, against the output schema.
const page = await client.callTool({ name: "read_graph", arguments: { limit: 1 } });
emit({ event: "page", result: page });
const cursor = page.structuredContent?.nextCursor;
if (cursor) {
  const rest = await client.callTool({ name: "read_graph", arguments: { limit: 1, cursor } });
  emit({ event: "rest", result: rest });
}
await client.close();
stdin.close();
emit({ event: "done" });
