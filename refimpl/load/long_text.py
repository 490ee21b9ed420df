"""Bounding the work on very long texts: tokenize only as much as truncation keeps.

Tokenizing 10 million characters takes gigabytes, yet all but ``max_seq_length`` tokens are
then cut. ``bounded_text`` returns a shorter text whose truncated tokens are exactly those of
the whole text. It relies on what every supported tokenizer model (WordPiece, BPE, Unigram)
does: the pre-tokenizer splits the text into words and each word is tokenized on its own, so
the tokens of the words before a word boundary do not depend on anything after it.

- Cut at a word boundary once the words before it give at least ``max_length`` tokens: the
  truncated result is the same, and it is still marked as truncated.
- A single word longer than the window (no split in thousands of characters): WordPiece turns
  it into one [UNK] whatever its length, so it is shortened to the window (still [UNK]); a
  model that splits it into many tokens keeps a prefix of the word with a margin of tokens
  beyond the cut (only the last few tokens of a cut word can differ).
- A stretch that gives no token at all (whitespace that WordPiece drops, zero-width characters the
  normalizer removes) is dropped: it cannot join the words around it into one.
- Anything undecided falls back to the whole text, so results never change.
tests/test_hardening.py compares the bounded and the whole tokenization on such texts.
"""

from __future__ import annotations

MARGIN_TOKENS = 64


def _word_end(pre_tokenizer, text: str, start: int, chunk: int) -> int:
    """Where the word that starts at ``start`` ends, scanning ``chunk`` characters at a time."""
    if pre_tokenizer is None:
        return len(text)
    position = start
    while position < len(text):
        pieces = pre_tokenizer.pre_tokenize_str(text[position : position + chunk])
        if not pieces:
            return position
        first_end = pieces[0][1][1]
        if first_end < min(chunk, len(text) - position) or len(pieces) > 1:
            return position + first_end
        position += chunk
    return len(text)


def bounded_text(text: str, untruncated, max_length: int, unk_id: int | None, window: int) -> str:
    """``text``, or a shorter text that gives the same first ``max_length`` tokens (see the module doc).

    ``untruncated``: the tokenizer without truncation; ``window``: characters looked at first."""
    if len(text) <= 2 * window:
        return text
    pre_tokenizer = untruncated.pre_tokenizer
    position = window
    while position < len(text):
        encoding = untruncated.encode(text[:position], add_special_tokens=False)
        if not encoding.ids:  # nothing but characters that vanish (whitespace, zero-width): drop them
            text = text[position:]
            continue
        words = encoding.word_ids
        first_of_last = words.index(words[-1])
        last_start = encoding.offsets[first_of_last][0]
        if first_of_last >= max_length:  # whole words before the last one already fill max_length
            return text[:last_start]
        if position - last_start >= window // 2:
            end = _word_end(pre_tokenizer, text, last_start, window)
            if end - last_start > window:
                piece = untruncated.encode(text[last_start : last_start + window], add_special_tokens=False)
                if len(piece.ids) >= max_length + MARGIN_TOKENS:
                    return text[: last_start + window]
                if unk_id is None or piece.ids != [unk_id]:
                    return text
                text = text[: last_start + window] + text[end:]  # one [UNK] however long it is
        position *= 2
    return text
