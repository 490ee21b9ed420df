"""Input checks for ``encode``: what is a sentence, and what is refused with which error.

A sentence is a ``str`` (a NumPy string element is one). Anything else is
refused with a TypeError naming the offending position and type, rather than
being turned into text behind the user's back (``str(None)`` is "None").
Text that is not valid Unicode (a lone surrogate) is refused with a ValueError
naming the position; every other string is embedded exactly as
sentence-transformers would embed it (see docs/reliability.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np


def _describe(value) -> str:
    return "None" if value is None else type(value).__name__


def as_text_list(sentences) -> tuple[list[str], bool]:
    """(list of sentences, whether a single sentence was given)."""
    if isinstance(sentences, str):
        items, single = [sentences], True
    elif isinstance(sentences, np.ndarray):
        if sentences.ndim == 0:
            items, single = [sentences.item()], True
        elif sentences.ndim == 1:
            items, single = sentences.tolist(), False
        else:
            raise TypeError(f"sentences must be one-dimensional; got an array of shape {sentences.shape}")
    elif (
        sentences is None
        or isinstance(sentences, (bytes, bytearray, memoryview, Mapping))
        or not isinstance(sentences, Iterable)
    ):
        hint = " (decode bytes to str first)" if isinstance(sentences, (bytes, bytearray, memoryview)) else ""
        raise TypeError(f"sentences must be a string or an iterable of strings, got {_describe(sentences)}{hint}")
    else:
        items, single = list(sentences), False
    for index, item in enumerate(items):
        if not isinstance(item, str):
            if isinstance(item, (list, tuple, np.ndarray)):
                raise TypeError(
                    f"sentences[{index}] is a {_describe(item)}; nested lists are not sentences (flatten them)"
                )
            raise TypeError(f"sentences[{index}] is {_describe(item)}, not str")
        try:
            item.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(
                f"sentences[{index}] is not valid Unicode: {error.object[error.start]!r} at position {error.start} "
                "is a lone surrogate"
            ) from None
    # the string's own value: a str subclass (a (str, Enum) member) may override __str__
    return [str.__str__(item) for item in items], single
