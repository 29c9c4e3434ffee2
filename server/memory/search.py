"""What `search_nodes` finds and in which order: the semantics every `GraphStore` implements.

The official server's search is a substring match: an entity is found when its name, its type or
one of its observations contains the query, both lowered (JavaScript `toLowerCase`). That stays
the floor here, unchanged (`Query.phrase`, Python's `str.lower`): every entity the official server
finds is found. On top of it, the query is also read as words:

* Folding (`fold`): NFKD, case folding (`str.casefold`: "ß" is "ss", the Kelvin sign is "k"),
  NFKD again (case folding can produce decomposable text, "İ" becomes "i" + a combining dot), and
  every combining mark dropped: "Zürich", "ZURICH" and "zurich" fold alike, and so do "é" and
  "e\\u0301". Folding is done once, in Python, on the way into either store, never by the store.
* Words (`words`): the maximal runs of alphanumeric characters (`str.isalnum`) of the folded text;
  everything else separates words. A query's words are its folded words, each counted once.
* Matching: an entity is a hit when its name, type or an observation contains the whole query as
  a substring (the floor), or when any query word is a prefix of a word of its name, its type or
  one of its observations ("lov" finds "Ada Lovelace", "zurich grüezi" finds "Zürich" through
  either word). Several words match in any order and across fields.
* Rank (`rank_key`): hits are ordered by a key of four integers, smallest first:

    1. minus the number of query words matched. A word is matched in a field when it is the prefix
       of one of the field's words, or when the field contains the whole query (then every word of
       the query is, in a sense, there);
    2. the sum over the matched words of where each matched best: 0 a word of the name starts with
       it, 1 the name contains the whole query, 2 and 3 the same for the type, 4 and 5 for an
       observation. So a name match comes before a type match before an observation match, and a
       word that starts a word before one only inside the whole-query substring;
    3. where the whole query occurs first (0 name, 1 type, 2 an observation, 3 nowhere): of two
       hits otherwise alike, the one that contains the query as typed comes first;
    4. the entity's creation order (its id in the store), which makes the key total.

  The key depends on nothing but the query and the entity's own texts: no corpus statistics (no
  bm25, no idf), so an entity keeps its key while others are created or deleted, and paging by key
  (`after`, `limit`; `server.memory.paging` turns a key into a cursor) never repeats or skips an
  entity that did not change between two pages.

The stores answer from their own indexes (SQLite: FTS5 over the words Python produced; Redis: a
lexicographic sorted set of the same words), which tell them, for each query word and each hit,
the best field where it is a word prefix, and where the whole query occurs; `rank_key` (or, in
Redis's search script, its line-by-line equivalent in Lua) turns these facts into the key.
`reference_key` computes the same key straight from the texts: it is the definition the tests
hold both stores to.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

NAME: Final = 0
TYPE: Final = 1
OBSERVATION: Final = 2
NOWHERE: Final = 3
"""Fields of an entity, in rank order; NOWHERE: not in any field."""

RankKey = tuple[int, int, int, int]


def fold(text: str) -> str:
    """The folded form of a text, which words are cut from (see the module)."""
    if text.isascii():
        # The same result, ~20x cheaper: NFKD leaves ASCII as it is, casefold is lower on ASCII,
        # and ASCII has no combining marks. Most texts are ASCII; an import folds every one.
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", text).casefold())
    if decomposed.isascii():
        return decomposed
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def words(text: str) -> list[str]:
    """The distinct words of a text, folded, in order of first occurrence."""
    return list(dict.fromkeys(_WORD.findall(fold(text))))


_WORD: Final = re.compile(r"[^\W_]+")
"""A maximal run of `str.isalnum` characters: `\\w` is exactly `isalnum` plus "_" (checked for every
code point by tests/test_search.py), done in C instead of a Python loop per character (an import
cuts the words of every text it writes: this was a third of its time)."""


def word_text(text: str) -> str:
    """The words of a text separated by spaces: what the stores index. A word holds only
    alphanumeric characters, never a space, NUL, quote or any other ASCII punctuation."""
    return " ".join(words(text))


@dataclass(frozen=True, slots=True)
class Query:
    """A search query as the stores use it: `phrase`, the whole query lowered (the substring
    floor), and `words`, its distinct folded words."""

    phrase: str
    words: tuple[str, ...]

    @classmethod
    def parse(cls, query: str) -> Query:
        return cls(phrase=query.lower(), words=tuple(words(query)))


def rank_key(query: Query, phrase_field: int, word_fields: Sequence[int], entity_id: int) -> RankKey | None:
    """The key of an entity, from where the whole query first occurs in it (`phrase_field`: NAME,
    TYPE, OBSERVATION, or NOWHERE) and, for each query word in order, the best field where it is
    the prefix of a word (or NOWHERE); None when the entity is not a hit."""
    matched = total = 0
    for field in word_fields:
        tier = min(2 * field if field != NOWHERE else 99, 2 * phrase_field + 1 if phrase_field != NOWHERE else 99)
        if tier != 99:
            matched += 1
            total += tier
    if not matched and phrase_field == NOWHERE:
        return None
    return -matched, total, phrase_field, entity_id


def phrase_field(phrase: str, name: str, entity_type: str, observations: Iterable[str]) -> int:
    """Where the whole query (lowered) first occurs among an entity's texts (the floor)."""
    if phrase in name.lower():
        return NAME
    if phrase in entity_type.lower():
        return TYPE
    if any(phrase in observation.lower() for observation in observations):
        return OBSERVATION
    return NOWHERE


def reference_key(query: Query, name: str, entity_type: str, observations: Sequence[str],
                  entity_id: int) -> RankKey | None:
    """`rank_key` computed from the texts themselves: the definition the stores are tested against."""
    fields = [set(words(name)), set(words(entity_type)), {w for o in observations for w in words(o)}]
    word_fields = [next((f for f, found in enumerate(fields) if any(w.startswith(q) for w in found)), NOWHERE)
                   for q in query.words]
    return rank_key(query, phrase_field(query.phrase, name, entity_type, observations), word_fields, entity_id)


def page(keyed: Iterable[tuple[RankKey, int]], after: tuple[int, ...] | None, limit: int | None
         ) -> tuple[list[int], RankKey | None]:
    """Of hits given as (key, entity id): the ids of the page, in rank order (those after `after`,
    at most `limit`), and the key the next page starts after (None when nothing remains)."""
    ranked = sorted(keyed)
    if after is not None:
        ranked = [hit for hit in ranked if hit[0] > after]
    if limit is not None and len(ranked) > limit:
        ranked = ranked[:limit]
        return [entity_id for _, entity_id in ranked], ranked[-1][0] if ranked else None
    return [entity_id for _, entity_id in ranked], None
