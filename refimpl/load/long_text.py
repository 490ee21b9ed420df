"""Bounding the work on very long texts: tokenize only as much as truncation keeps, and only
where the tokenizer's own normalizer and pre-tokenizer show that the tokens cannot change.

Tokenizing 10 million characters takes gigabytes, yet all but ``max_seq_length`` tokens are then
cut. ``bounded_text`` returns a shorter text whose truncated tokens are exactly those of the whole
text, or the whole text when it cannot show that. Every supported model (WordPiece, BPE, Unigram)
tokenizes each pre-tokenized word on its own, so a cut is exact where three things hold:

- the normalizer treats the text on both sides of the cut independently: it is built only of
  per-character steps (BertNormalizer, Lowercase, StripAccents, Nmt) and the Unicode forms
  (NFC, NFD, NFKC, NFKD), and the cut lies before a space (U+0020), which no normalization form
  composes, reorders or expands across. A Precompiled, Replace, Strip or Prepend step can join
  characters across any point, so with one of them the text is tokenized whole;
- the pre-tokenizer splits there whatever follows: the cut is a space after a character that
  normalizes to something ending in a non-space, and the pre-tokenizer splits on whitespace
  (BertPreTokenizer, Whitespace, WhitespaceSplit, Metaspace that splits, ByteLevel with its regex,
  alone or in a Sequence with Punctuation or Digits). Without one (no pre-tokenizer, a Split
  regex) a "word" can be the whole text, and the text is tokenized whole;
- no added token holds whitespace (it could match across the cut).

Where the text before a cut gives at least ``max_length`` tokens, they are the first tokens of the
whole text, so the truncated result is the same (and still marked as truncated). Two more exact
shortenings keep the work bounded on texts without spaces:

- a stretch at the start that normalizes to nothing but whitespace (spaces WordPiece drops,
  zero-width characters the normalizer removes) gives no token and joins nothing: it is dropped,
  at a point where the normalizer shows the two sides are independent (a starter after it whose
  pair with the character before normalizes as the two apart);
- a single WordPiece word longer than the model's ``max_input_chars_per_word`` is one unknown token
  whatever its characters, so it is shortened to one that is still too long (a WordPiece word
  within the limit depends on all of its characters: one character without a piece makes the
  whole word [UNK], so it is never cut). A Unigram or BPE word is never cut either: its
  segmentation depends on the whole word.

Everything else (a giant BPE or Unigram word, an XLM-RoBERTa Precompiled normalizer, left
truncation) is tokenized whole: exactness wins over the memory bound (docs/reliability.md).
"""

from __future__ import annotations

import json
import unicodedata

# normalizer steps that treat a text before a space independently of the text after it
LOCAL_NORMALIZERS = ("BertNormalizer", "Lowercase", "StripAccents", "Nmt", "NFC", "NFD", "NFKC", "NFKD")
# pre-tokenizers that always split at a space that follows a non-space character
SPLITTING_PRE_TOKENIZERS = ("BertPreTokenizer", "Whitespace", "WhitespaceSplit", "Metaspace", "ByteLevel")
LOCAL_PRE_TOKENIZERS = SPLITTING_PRE_TOKENIZERS + ("Punctuation", "Digits")
# how far back from a scan position a cut point is looked for
SEARCH = 256


def _spec(component) -> dict | None:
    return json.loads(component.__getstate__()) if component is not None else None


def _steps(spec: dict | None, key: str) -> list[dict]:
    if spec is None:
        return []
    return [s for step in spec[key] for s in _steps(step, key)] if spec.get("type") == "Sequence" else [spec]


def _pre_tokenizer_splits(spec: dict | None) -> bool:
    steps = _steps(spec, "pretokenizers")
    for step in steps:
        kind = step.get("type")
        if kind not in LOCAL_PRE_TOKENIZERS:
            return False
        if (kind == "Metaspace" and not step.get("split", True)) or (kind == "ByteLevel" and not step.get("use_regex")):
            return False  # these make no words: the whole text is one
    return any(step.get("type") in SPLITTING_PRE_TOKENIZERS for step in steps)


class CutRules:
    """Where a text may be cut for one tokenizer (see the module doc); ``of`` gives None when nowhere."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.normalize = tokenizer.normalizer.normalize_str if tokenizer.normalizer is not None else (lambda s: s)
        from tokenizers import models

        wordpiece = isinstance(tokenizer.model, models.WordPiece)
        self.word_limit = tokenizer.model.max_input_chars_per_word if wordpiece else None
        self.pre_tokenizer = tokenizer.pre_tokenizer

    @classmethod
    def of(cls, tokenizer) -> CutRules | None:
        normalizers = _steps(_spec(tokenizer.normalizer), "normalizers")
        if not all(step.get("type") in LOCAL_NORMALIZERS for step in normalizers):
            return None
        if not _pre_tokenizer_splits(_spec(tokenizer.pre_tokenizer)):
            return None
        added = tokenizer.get_added_tokens_decoder().values()
        if any(any(ch.isspace() for ch in token.content) for token in added):
            return None
        return cls(tokenizer)

    def is_cut(self, text: str, c: int) -> bool:
        """Can ``text`` be cut before position ``c`` (a space after a character that ends in a non-space)?"""
        if c < 1 or c >= len(text) or text[c] != " " or text[c - 1].isspace():
            return False
        before = text[c - 1]
        if unicodedata.combining(before) or unicodedata.category(before).startswith("M"):
            return False
        normalized = self.normalize(before)
        return bool(normalized) and not normalized[-1].isspace()

    def last_cut(self, text: str, position: int, floor: int | None = None) -> int | None:
        """The last cut point at or before ``position``, looking back to ``floor`` (default: SEARCH
        characters back)."""
        start = max(1, position - SEARCH if floor is None else floor)
        c = text.rfind(" ", start, position + 1)
        while c >= start:
            if self.is_cut(text, c):
                return c
            c = text.rfind(" ", start, c)
        return None

    def independent(self, text: str, p: int) -> bool:
        """Does the normalizer treat text[:p] and text[p:] apart? ``text[p]`` must be a starter whose pair
        with the character before normalizes as the two apart (so nothing composes or reorders across)."""
        if p <= 0 or p >= len(text):
            return True
        first = unicodedata.normalize("NFD", text[p])[:1]
        if unicodedata.combining(first) or unicodedata.category(text[p]).startswith("M"):
            return False
        pair = text[p - 1 : p + 1]
        return self.normalize(pair) == self.normalize(pair[0]) + self.normalize(pair[1])

    def vanishing_prefix(self, text: str, position: int) -> int:
        """How many leading characters (up to ``position``) give no token and may be dropped: they normalize
        to whitespace only, the tokenizer makes no token of them, and the normalizer treats them apart."""
        for p in range(position, max(0, position - SEARCH), -1):
            if self.independent(text, p):
                head = text[:p]
                if self.normalize(head).strip() or self.tokenizer.encode(head, add_special_tokens=False).ids:
                    return 0
                return p
        return 0

    def one_word(self, text: str, start: int, chunk: int) -> tuple[int, int] | None:
        """(end, normalized length) of the stretch from ``start`` to the next cut point (or the text's end)
        when it is a single pre-tokenized word, checked ``chunk`` characters at a time; else None."""
        position, length, last = start, 0, ""
        while position < len(text):
            end = min(len(text), position + chunk)
            while end < len(text) and not self.independent(text, end):
                end += 1
            stop = text.find(" ", position, end)
            if stop != -1:  # the word ends at a cut point, or the stretch is not one word
                if not self.is_cut(text, stop):
                    return None
                end = stop
            piece = self.normalize(text[position:end])
            joined = last + piece
            pieces = self.pre_tokenizer.pre_tokenize_str(joined) if joined else [("", (0, 0))]
            if len(pieces) != 1 or pieces[0][1] != (0, len(joined)):
                return None
            length, last, position = length + len(piece), (piece or last)[-1:], end
            if stop != -1:
                break
        return position, length


def bounded_text(text: str, untruncated, max_length: int, window: int, rules: CutRules | None = None) -> str:
    """``text``, or a shorter text that gives the same first ``max_length`` tokens (see the module doc).

    ``untruncated``: the tokenizer without truncation; ``window``: characters looked at first;
    ``rules``: ``CutRules.of(untruncated)`` when the caller keeps them (None: worked out here)."""
    if len(text) <= 2 * window:
        return text
    rules = rules if rules is not None else CutRules.of(untruncated)
    if rules is None:
        return text
    position = window
    while position < len(text):
        cut = rules.last_cut(text, position)
        if cut is not None:
            if len(untruncated.encode(text[:cut], add_special_tokens=False).ids) >= max_length:
                return text[:cut]
        else:
            dropped = rules.vanishing_prefix(text, position)
            if dropped:  # nothing but vanishing characters so far: drop them and look again
                text = text[dropped:]
                continue
            text = _shorten_giant_word(rules, text, position, window)
        position *= 2
    return text


def _shorten_giant_word(rules: CutRules, text: str, position: int, window: int) -> str:
    """The WordPiece word that holds ``position``, when it is longer than max_input_chars_per_word,
    shortened to a word still longer than that (one [UNK] either way); anything else is left as it is."""
    if rules.word_limit is None:
        return text
    cut = rules.last_cut(text, position, floor=0)
    start = 0 if cut is None else cut + 1
    found = rules.one_word(text, start, window)
    if found is None or found[1] <= rules.word_limit:
        return text
    end = found[0]
    keep = start + window  # a word of about `window` characters, still over the limit
    while keep < end and not rules.independent(text, keep):
        keep += 1
    if keep >= end or len(rules.normalize(text[start:keep])) <= rules.word_limit:
        return text
    return text[:keep] + text[end:]
