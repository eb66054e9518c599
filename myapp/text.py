"""Text from outside (a provider's claims, a form) as the database keeps it and people read it."""

import re
import unicodedata

# C0 and C1 controls and DEL: nothing a person types, and some (NUL) that databases refuse.
CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")
# What no database here stores as it is: PostgreSQL refuses a NUL in text, and no driver encodes
# a lone surrogate (JSON's "\ud800" read alone) as UTF-8.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_LONE_SURROGATES = re.compile("[\ud800-\udfff]")
# What shows nothing on a page: separators (spaces, U+2028), controls, format characters
# (zero-width spaces, joiners, bidi controls, U+FEFF) and marks with nothing to sit on...
_UNSEEN = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf", "Mn", "Me"})
# ...and the letters and symbols fonts draw empty: the Hangul fillers and the blank Braille cell.
_BLANK = frozenset("\u115f\u1160\u2800\u3164\uffa0")


def storable(text: str) -> bool:
    """Whether every database here stores ``text`` exactly: what must not change (an identifier
    from a provider) is refused or digested when not."""
    return _UNSTORABLE.search(text) is None


def blank(text: str) -> bool:
    """Whether ``text`` shows nothing when a page shows it (:data:`_UNSEEN`, :data:`_BLANK`):
    a zero-width space is no title."""
    return all(c in _BLANK or unicodedata.category(c) in _UNSEEN for c in text)


def shown_text(text: str) -> str:
    """``text`` for people to read (a name, an address), made storable: controls dropped, a lone
    surrogate the replacement character."""
    return _LONE_SURROGATES.sub("\ufffd", CONTROLS.sub("", text))
