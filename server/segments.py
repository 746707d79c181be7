"""SMS encoding and segment counting, following Twilio's documented rules.

A body made only of characters from the GSM 03.38 default alphabet and its extension table is
sent as GSM-7: one segment holds 160 septets; a longer body is split into parts of 153 septets
(the rest of each part carries the concatenation header). Extension-table characters
(``^{}\\[~]|€`` and form feed) take two septets, an escape plus the character, and such a pair
is never split across two parts.

Any other character makes the whole body UCS-2, counted in UTF-16 code units: 70 in a single
segment, otherwise parts of 67. A character outside the Basic Multilingual Plane (most emoji)
is a surrogate pair of two units, which is never split across two parts.

Twilio's optional "Smart Encoding" (which replaces look-alike Unicode characters such as curly
quotes with GSM-7 ones before sending) is not modelled: the count is for the body as given.
Grapheme clusters are not kept together either; only surrogate pairs and escape pairs are.

``clients/web/src/segments.ts`` implements the same algorithm for the web composer, and both
are tested against ``tests/data/segment_vectors.json``.
"""

from dataclasses import dataclass

GSM7 = "GSM-7"
UCS2 = "UCS-2"

GSM7_SINGLE = 160
GSM7_PART = 153
UCS2_SINGLE = 70
UCS2_PART = 67

# GSM 03.38 default alphabet, in code order 0x00-0x7F with the escape (0x1B) left out.
_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)

# GSM 03.38 extension table: each is sent as the escape septet plus one more.
_GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")


@dataclass(frozen=True)
class SegmentCount:
    """How a message body would be encoded and into how many SMS segments it splits."""

    encoding: str
    """``GSM7`` or ``UCS2``."""
    segments: int
    """Number of SMS segments; 0 for an empty body."""
    units: int
    """GSM-7 septets (extension characters count 2) or UTF-16 code units."""
    per_segment: int
    """The segment size that applies to this body: 160/153 for GSM-7, 70/67 for UCS-2."""
    first_non_gsm: str
    """The first character that forced UCS-2; empty when the body is GSM-7."""


def _septets(char: str) -> int:
    """Return the septets a character takes in GSM-7, or 0 if it is not in GSM-7."""
    if char in _GSM7_BASIC:
        return 1
    if char in _GSM7_EXTENSION:
        return 2
    return 0


def _utf16_units(char: str) -> int:
    """Return the UTF-16 code units of one code point (2 outside the BMP)."""
    return 2 if ord(char) > 0xFFFF else 1


def _parts(sizes: list[int], single: int, part: int) -> tuple[int, int]:
    """Return (segments, per_segment) for indivisible items of the given sizes."""
    total = sum(sizes)
    if total == 0:
        return 0, single
    if total <= single:
        return 1, single
    segments = 1
    used = 0
    for size in sizes:
        if used + size > part:
            segments += 1
            used = 0
        used += size
    return segments, part


def count(body: str) -> SegmentCount:
    """Count the encoding, units and segments Twilio would use for ``body``."""
    septets: list[int] = []
    for char in body:
        size = _septets(char)
        if size == 0:
            units = [_utf16_units(c) for c in body]
            segments, per_segment = _parts(units, UCS2_SINGLE, UCS2_PART)
            return SegmentCount(UCS2, segments, sum(units), per_segment, char)
        septets.append(size)
    segments, per_segment = _parts(septets, GSM7_SINGLE, GSM7_PART)
    return SegmentCount(GSM7, segments, sum(septets), per_segment, "")
