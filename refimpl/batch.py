"""Batches of tokenized sentences: packed ids, how they are grouped into forward passes,
and how packed rows go back to a padded ``[B, T, H]`` layout.

A batch of B sentences is stored unpadded: all token ids concatenated (N = sum of
lengths) plus ``cu_seqlens`` ([B + 1] cumulative lengths), the layout of
flash-attention's varlen interface. The reference engine pads it with ``padded()``;
the fast engine runs it as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def cu_seqlens_from_lengths(lengths) -> np.ndarray:
    """[3, 1, 2] -> [0, 3, 4, 6]: where each sequence starts in the packed tokens."""
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)


@dataclass
class Encoded:
    """Token ids of a list of texts, unpadded: sequence b is ids[cu_seqlens[b]:cu_seqlens[b + 1]]."""

    input_ids: np.ndarray  # [N] int64, all sequences concatenated
    token_type_ids: np.ndarray  # [N] int64
    lengths: np.ndarray  # [B] int64
    truncated: np.ndarray  # [B] bool: the text had more tokens than max_length

    @property
    def cu_seqlens(self) -> np.ndarray:
        return cu_seqlens_from_lengths(self.lengths)

    @classmethod
    def concatenate(cls, parts: list[Encoded]) -> Encoded:
        return cls(
            *(
                np.concatenate([getattr(p, field) for p in parts])
                for field in ("input_ids", "token_type_ids", "lengths", "truncated")
            )
        )

    @classmethod
    def from_padded(cls, input_ids, attention_mask, token_type_ids) -> Encoded:
        """The real tokens of a right-padded [B, T] batch (attention_mask 1...1 0...0 per row)."""
        lengths = attention_mask.sum(axis=1)
        if not all((attention_mask[b, :n] == 1).all() for b, n in enumerate(lengths)):
            raise ValueError("the fast engine needs right-padded batches (attention_mask 1...1 0...0)")
        real = attention_mask.astype(bool)
        return cls(input_ids[real], token_type_ids[real], lengths, np.zeros(len(lengths), bool))

    def select(self, indices) -> Encoded:
        """The sequences at ``indices``, in that order, packed again."""
        cu = self.cu_seqlens
        rows = np.concatenate([np.arange(cu[i], cu[i + 1]) for i in indices]) if len(indices) else np.empty(0, np.int64)
        return Encoded(self.input_ids[rows], self.token_type_ids[rows], self.lengths[indices], self.truncated[indices])

    def real_mask(self) -> np.ndarray:
        """[B, T] bool: True at the positions of real tokens in the padded layout."""
        T = int(self.lengths.max(initial=0))
        return np.arange(T)[None, :] < self.lengths[:, None]

    def padded(self, pad_id: int) -> dict:
        """{input_ids, attention_mask, token_type_ids} as [B, T] arrays, right-padded like a transformers batch."""
        real = self.real_mask()
        ids = np.full(real.shape, pad_id, np.int64)
        types = np.zeros(real.shape, np.int64)
        ids[real] = self.input_ids
        types[real] = self.token_type_ids
        return {"input_ids": ids, "attention_mask": real.astype(np.int64), "token_type_ids": types}


def unpack(packed_rows: np.ndarray, real_mask: np.ndarray) -> np.ndarray:
    """[N, H] rows of real tokens -> [B, T, H] with zeros at padded positions."""
    out = np.zeros(real_mask.shape + packed_rows.shape[1:], packed_rows.dtype)
    out[real_mask] = packed_rows
    return out


def token_budget_groups(lengths, budget: int) -> list[slice]:
    """Consecutive slices of ``lengths`` holding at most ``budget`` tokens each (at least one item)."""
    groups, start, total = [], 0, 0
    for index, length in enumerate(np.asarray(lengths).tolist()):
        if index > start and total + length > budget:
            groups.append(slice(start, index))
            start, total = index, 0
        total += length
    if start < len(lengths):
        groups.append(slice(start, len(lengths)))
    return groups


def fixed_size_groups(count: int, batch_size: int) -> list[slice]:
    """[0, batch_size), [batch_size, 2 batch_size), ... covering ``count`` items."""
    return [slice(first, min(first + batch_size, count)) for first in range(0, count, batch_size)]
