"""``SentenceTransformer.embed``: an iterable of any length, embedded a chunk at a time."""

from __future__ import annotations

from itertools import islice

from refimpl.checks import positive_int
from refimpl.run.pipeline import warn_truncated


def embed_in_chunks(encode_chunk, sentences, batch_size, chunk_size, max_seq_length):
    """Yield arrays of up to ``batch_size`` embeddings in input order, ``chunk_size`` sentences
    (default 16 batches) in memory at a time; ``encode_chunk(list)`` returns
    (embeddings, truncated count, input count) as ``SentenceTransformer._encode`` does."""
    if isinstance(sentences, str):
        raise TypeError("embed takes an iterable of sentences; use encode for a single string")
    batch_size = positive_int("batch_size", batch_size)
    chunk_size = positive_int("chunk_size", chunk_size, allow_none=True) or 16 * batch_size
    return _chunks(encode_chunk, iter(sentences), batch_size, chunk_size, max_seq_length)


def _chunks(encode_chunk, iterator, batch_size, chunk_size, max_seq_length):
    offset, truncated = 0, 0
    while chunk := list(islice(iterator, chunk_size)):
        try:
            embeddings, chunk_truncated, _ = encode_chunk(chunk)
        except (TypeError, ValueError) as error:
            raise type(error)(f"{error} (in the chunk of inputs starting at index {offset})") from None
        truncated += chunk_truncated
        for start in range(0, len(chunk), batch_size):
            yield embeddings[start : start + batch_size]
        offset += len(chunk)
    warn_truncated(truncated, offset, max_seq_length)
