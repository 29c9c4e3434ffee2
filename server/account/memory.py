"""The memory browser: the user's own knowledge graph, page by page, and deletion after a confirmation.

What it shows comes from the same `GraphStore` queries as the tools (`read_graph`,
`search_nodes`, `open_nodes`), always on one of the signed-in user's own memories (`auth.memories`),
chosen by name (`memory=`, the default memory when absent) and looked up among that user's: there
is no way to name another user's graph. A page shows `PAGE_SIZE` entities, each with its type, observations and the
relations from and to it. The store answers with the whole result as JSON, which is parsed with
orjson and cut into pages here (a 10,000-entity graph is a few megabytes: milliseconds).

An observation is named in the forms by the SHA-256 of its text (`digest`): it may be 16 KiB of
text, more than a form may carry once encoded.

Deleting is two POSTs, both with the CSRF token: the first (a button beside the item) answers
with a confirmation page naming exactly what goes, the second (`confirmed=yes`) deletes. No
script is needed, and a forged or replayed first step deletes nothing. The entity (and the
observation) must exist in the user's graph at both steps, or the answer is 404 and nothing
changes.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from html import escape
from typing import Any
from urllib.parse import urlencode

import orjson

from auth import csrf
from server.account.html import hidden, post_form
from server.memory.graph import GraphJSON

PAGE_SIZE = 25


@dataclass(frozen=True, slots=True)
class View:
    """What the browser was asked for: a search (`query`), one entity (`entity`), or everything."""

    query: str = ""
    entity: str = ""
    page: int = 1
    memory: str = ""
    """The memory's name; empty: the default memory."""

    def url(self, **changes: Any) -> str:
        params = {"memory": self.memory, "q": self.query, "entity": self.entity, "page": str(self.page)}
        params.update({k: str(v) for k, v in changes.items()})
        kept = {k: v for k, v in params.items() if v and not (k == "page" and v == "1")}
        return "/account/memory" + (f"?{urlencode(kept)}" if kept else "")


def digest(observation: str) -> str:
    return hashlib.sha256(observation.encode("utf-8", "surrogatepass")).hexdigest()


def parse_page(value: str | None) -> int:
    try:
        return max(1, int(value or "1"))
    except ValueError:
        return 1


def decode(graph: GraphJSON) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    data = orjson.loads(graph.json)
    return data["entities"], data["relations"]


def _entity_link(name: str, memory: str) -> str:
    return f'<a href="{escape(View(entity=name, memory=memory).url())}">{escape(name)}</a>'


def _entity(csrf_token: str, entity: dict[str, Any], outgoing: list[dict[str, Any]],
            incoming: list[dict[str, Any]], memory: str) -> str:
    name = entity["name"]
    on = {"memory": memory} if memory else {}
    observations = "".join(
        f"<li>{escape(text)}"
        + post_form("/account/memory/delete", csrf_token, {**on, "entity": name, "observation": digest(text)}, "Delete",
                    what=f"observation of {name}", css="inline", danger=True) + "</li>"
        for text in entity["observations"]) or "<li>none</li>"
    relations = "".join(
        f"<li>{escape(r['relationType'])} → {_entity_link(r['to'], memory)}</li>" for r in outgoing) + "".join(
        f"<li>{_entity_link(r['from'], memory)} {escape(r['relationType'])} → this</li>" for r in incoming)
    return (f"<li><h3>{escape(name)}</h3><dl>"
            f"<dt>Type</dt><dd>{escape(entity['entityType'])}</dd>"
            f'<dt>Observations</dt><dd><ul class="items">{observations}</ul></dd>'
            f'<dt>Relations</dt><dd><ul class="items">{relations or "<li>none</li>"}</ul></dd></dl>'
            + post_form("/account/memory/delete", csrf_token, {**on, "entity": name}, "Delete entity", what=name,
                        danger=True)
            + "</li>")


def _chooser(view: View, memories: list[str]) -> str:
    """Which of the user's memories to browse (a GET form: choosing changes nothing)."""
    if len(memories) < 2:
        return ""
    current = view.memory or memories[0]
    options = "".join(f'<option value="{escape(n)}"{" selected" if n == current else ""}>{escape(n)}</option>'
                      for n in memories)
    return (f'<form class="search" method="get" action="/account/memory">'
            f'<label for="memory">Memory</label><select id="memory" name="memory">{options}</select>'
            '<button type="submit">Show</button></form>')


def browser_body(csrf_token: str, view: View, entities: list[dict[str, Any]],
                 relations: list[dict[str, Any]], memories: list[str] | None = None) -> str:
    everything = escape(View(memory=view.memory).url())
    search = (_chooser(view, memories or []) +
              '<form class="search" method="get" action="/account/memory" role="search">'
              + (hidden("memory", view.memory) if view.memory else "") +
              f'<label for="q">Search names, types and observations</label>'
              f'<input type="search" id="q" name="q" value="{escape(view.query)}">'
              '<button type="submit">Search</button></form>')
    total = len(entities)
    pages = max(1, math.ceil(total / PAGE_SIZE))
    page = min(view.page, pages)
    shown = entities[(page - 1) * PAGE_SIZE:page * PAGE_SIZE]
    names = {e["name"] for e in shown}
    outgoing: dict[str, list[dict[str, Any]]] = {}
    incoming: dict[str, list[dict[str, Any]]] = {}
    for relation in relations:
        if relation["from"] in names:
            outgoing.setdefault(relation["from"], []).append(relation)
        if relation["to"] in names:
            incoming.setdefault(relation["to"], []).append(relation)
    if view.entity:
        what = f"The entity <strong>{escape(view.entity)}</strong>" if total else (
            f"There is no entity named <strong>{escape(view.entity)}</strong> in your memory.")
        summary = f'<p>{what} <a href="{everything}">Show everything</a></p>'
    elif view.query:
        summary = (f"<p>{total} {'entity matches' if total == 1 else 'entities match'} "
                   f"<strong>{escape(view.query)}</strong>. <a href=\"{everything}\">Show everything</a></p>")
    else:
        which = f"memory <strong>{escape(view.memory)}</strong>" if view.memory else "memory"
        summary = f"<p>Your {which} holds {total} {'entity' if total == 1 else 'entities'}.</p>"

    def paging(where: str) -> str:
        if pages == 1:
            return ""
        previous = f'<a href="{escape(view.url(page=page - 1))}">Previous page</a>' if page > 1 else ""
        following = f'<a href="{escape(view.url(page=page + 1))}">Next page</a>' if page < pages else ""
        return (f'<nav class="paging" aria-label="Pages, {where}">{previous}<span>Page {page} of {pages}</span>'
                f"{following}</nav>")

    cards = "".join(_entity(csrf_token, e, outgoing.get(e["name"], []), incoming.get(e["name"], []), view.memory)
                    for e in shown)
    listing = f'<h2 class="vh">Entities</h2><ul class="cards">{cards}</ul>' if cards else ""
    return search + summary + paging("top") + listing + paging("bottom")


def confirm_body(csrf_token: str, entity: dict[str, Any], observation: str | None, relations: int,
                 memory: str = "") -> str:
    name = entity["name"]
    on = hidden("memory", memory) if memory else ""
    if observation is not None:
        what = (f"<p>Delete this observation of <strong>{escape(name)}</strong>?</p>"
                f"<blockquote>{escape(observation)}</blockquote>")
        fields = hidden("entity", name) + hidden("observation", digest(observation))
        back = View(entity=name, memory=memory).url()
    else:
        count = len(entity["observations"])
        what = (f"<p>Delete the entity <strong>{escape(name)}</strong> ({escape(entity['entityType'])}), its "
                f"{count} observation{'' if count == 1 else 's'} and the {relations} "
                f"relation{'' if relations == 1 else 's'} from or to it?</p>")
        fields = hidden("entity", name)
        back = View(entity=name, memory=memory).url()
    return (what + "<p>This cannot be undone.</p>"
            f'<form method="post" action="/account/memory/delete">{hidden(csrf.FIELD, csrf_token)}{on}{fields}'
            f'{hidden("confirmed", "yes")}<button type="submit" class="danger">Delete</button></form>'
            f'<p><a href="{escape(back)}">Cancel, keep it</a></p>')
