"""The reference server of the benchmark: the mcp SDK's own `MCPServer` over Streamable HTTP under
uvicorn, with the same read tools as memory-mcp (`open_nodes`, `search_nodes`) over an in-memory
dict, and bearer authentication through the SDK's `TokenVerifier` protocol and `AuthSettings`
accepting one static token.

    python scripts/bench/sdk_server.py --port P --token T [--fast] [--entities N]

`--fast` is the SDK's fastest configuration: `json_response=True` and uvicorn with uvloop and
httptools. Without it: SSE responses (the SDK default) and uvicorn's pure-asyncio defaults.
"""

from __future__ import annotations

import argparse
import time

import uvicorn
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel, ConfigDict, Field


class Entity(BaseModel):
    name: str
    entityType: str
    observations: list[str]


class Relation(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    from_: str = Field(alias="from")
    to: str
    relationType: str


class KnowledgeGraph(BaseModel):
    entities: list[Entity]
    relations: list[Relation]


class StaticTokenVerifier:
    """The SDK's `TokenVerifier` protocol: one token, valid for the benchmark's lifetime."""

    def __init__(self, token: str, resource: str) -> None:
        self._token = token
        self._resource = resource

    async def verify_token(self, token: str) -> AccessToken | None:
        if token != self._token:
            return None
        return AccessToken(token=token, client_id="bench", scopes=["memory:read", "memory:write"],
                           expires_at=int(time.time()) + 3600, resource=self._resource, subject="bench")


def sample_graph(n: int) -> tuple[dict[str, Entity], list[Relation]]:
    """The same small graph the benchmark loads into memory-mcp (see scripts/bench.py)."""
    entities = {f"Entity {i:05d}": Entity(name=f"Entity {i:05d}", entityType="thing",
                                          observations=[f"observation {j} of entity {i}" for j in range(3)])
                for i in range(n)}
    relations = [Relation.model_validate({"from": f"Entity {i:05d}", "to": f"Entity {(i + 1) % n:05d}",
                                          "relationType": "precedes"}) for i in range(n)]
    return entities, relations


def build(token: str, port: int, entities_count: int) -> MCPServer:
    origin = f"http://127.0.0.1:{port}"
    entities, relations = sample_graph(entities_count)
    mcp = MCPServer(
        "sdk-reference",
        token_verifier=StaticTokenVerifier(token, origin + "/mcp"),
        auth=AuthSettings(issuer_url=origin, resource_server_url=origin + "/mcp",  # type: ignore[arg-type]
                          required_scopes=["memory:read"], validate_token_resource=True),
    )

    def subgraph(found: list[Entity]) -> KnowledgeGraph:
        names = {e.name for e in found}
        return KnowledgeGraph(entities=found,
                              relations=[r for r in relations if r.from_ in names or r.to in names])

    @mcp.tool()
    async def open_nodes(names: list[str]) -> KnowledgeGraph:
        """Open specific nodes in the knowledge graph by their names."""
        return subgraph([entities[n] for n in dict.fromkeys(names) if n in entities])

    @mcp.tool()
    async def search_nodes(query: str) -> KnowledgeGraph:
        """Search for nodes in the knowledge graph based on a query."""
        q = query.lower()
        return subgraph([e for e in entities.values() if q in e.name.lower() or q in e.entityType.lower()
                         or any(q in o.lower() for o in e.observations)])

    return mcp


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--fast", action="store_true")
    parser.add_argument("--entities", type=int, default=100)
    args = parser.parse_args()
    mcp = build(args.token, args.port, args.entities)
    # No session cap and no idle expiry within a run: the benchmark holds 10,000 idle sessions.
    app = mcp.streamable_http_app(json_response=args.fast, max_sessions=None, session_idle_timeout=None)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False,
                loop="uvloop" if args.fast else "asyncio", http="httptools" if args.fast else "h11",
                lifespan="on")


if __name__ == "__main__":
    main()
