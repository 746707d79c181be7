"""Free-text search: how text is normalised into index terms, and how a query matches.

The rule, for ListConversations' `query` and SearchMessages' `query`: the query is cut into words (runs of
letters and digits, case and accents ignored); a document matches when every query word is the beginning of a
word of its text. A conversation's text is its contact name and last message preview, plus its contact number,
whose every run of digits counts as a word start (so "555-01" finds +14155550101). A query made only of digits
and phone punctuation (`+ ( ) - .` and spaces) is one number: "(415) 555-01" is the word "41555501".

What makes it fast: each document stores `search_terms`, every prefix (up to TERM_CHARS characters) of each of
its words, in a multikey index with the list order (store.py). A query reads the documents holding one of its
words' terms (the longest: the most selective) and `matches` checks the rest.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from server import limits
from server.errors import InvalidArgument
from server.reasons import Reason

# Prefixes are indexed up to this many characters; a longer query word is looked up by its first TERM_CHARS
# and checked whole against the text.
TERM_CHARS = 16
# A contact number's digits considered (E.164 has at most 15).
NUMBER_DIGITS = 20
# At most this many words of a query are used; more is INVALID_ARGUMENT.
QUERY_WORDS = 8

_WORD = re.compile(r"[^\W_]+")
_PHONE = re.compile(r"^[\d\s()+.\-]+$")


def normalise(text: str) -> str:
    """`text` case-folded, without accents (NFKD, combining marks dropped)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def words(text: str) -> list[str]:
    """The words of `text`, normalised."""
    return _WORD.findall(normalise(text))


def digits(number: str) -> str:
    return "".join(c for c in number if c.isdigit())[:NUMBER_DIGITS]


def _prefixes(word: str) -> Iterable[str]:
    return (word[:i] for i in range(1, min(len(word), TERM_CHARS) + 1))


def text_terms(*texts: str) -> list[str]:
    """The index terms of free text: every prefix of each word (sorted, unique)."""
    return sorted({p for text in texts for w in words(text) for p in _prefixes(w)})


def number_terms(number: str) -> list[str]:
    """The index terms of a phone number: every run of its digits (each suffix's prefixes)."""
    d = digits(number)
    return sorted({p for i in range(len(d)) for p in _prefixes(d[i:])})


def _number_words(number: str) -> list[str]:
    d = digits(number)
    return [d[i:] for i in range(len(d))]


def parse_query(field: str, query: str) -> list[str]:
    """The words of a query (empty for a blank one); INVALID_ARGUMENT naming `field` when it is over its bound,
    has nothing to search for, or too many words."""
    limits.text(field, query, limits.QUERY_BYTES)
    if not query.strip():
        return []
    if _PHONE.match(query) and any(c.isdigit() for c in query):
        return [digits(query)]
    found = list(dict.fromkeys(words(query)))
    if not found:
        raise InvalidArgument(
            field, f"{limits.quote(query)} has no letters or digits to search for", Reason.INVALID_QUERY
        )
    if len(found) > QUERY_WORDS:
        raise InvalidArgument(field, f"at most {QUERY_WORDS} words, got {len(found)}", Reason.INVALID_QUERY)
    return found


def driving_term(query_words: list[str]) -> str:
    """The term an index lookup starts from: the longest word's (the fewest documents hold it)."""
    return max(query_words, key=len)[:TERM_CHARS]


def matches(query_words: list[str], text_words: Iterable[str]) -> bool:
    """Whether every query word begins some word of the text."""
    have = list(text_words)
    return all(any(w.startswith(q) for w in have) for q in query_words)


def conversation_words(contact_number: str, contact_name: str, preview: str) -> list[str]:
    """The words a conversation is found by (for `matches`)."""
    return [*_number_words(contact_number), *words(contact_name), *words(preview)]
