"""The reference engine: ``forward.py`` on padded ``[B, T]`` batches of ``batch_size`` sentences, as
sentence-transformers batches them; plain NumPy, the equations as transformers writes them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refimpl.batch import fixed_size_groups
from refimpl.engines import pooling
from refimpl.engines.base import EngineBase, check_indices


@dataclass
class PaddedStates:
    last_hidden: np.ndarray  # [B, T, H]
    attention_mask: np.ndarray  # [B, T]
    hidden_states: list | None
    attentions: list | None = None  # L arrays [B, nh, T, T], padding included, as transformers gives them

    def sequences(self):
        return [self.last_hidden[b, :n] for b, n in enumerate(self.attention_mask.sum(axis=1))]

    def padded(self):
        return self.last_hidden

    def padded_hidden_states(self):
        return self.hidden_states

    def padded_attentions(self):
        return self.attentions

    def sequence_attentions(self):
        if self.attentions is None:
            return None
        real = self.attention_mask.astype(bool)
        return [[layer[b][:, real[b]][:, :, real[b]] for b in range(len(real))] for layer in self.attentions]

    def pool(self, modes, prompt_length=0):
        return pooling.pool_padded(self.last_hidden, self.attention_mask, modes, prompt_length)


class ReferenceEngine(EngineBase):
    name = "reference"

    def plan(self, lengths, batch_size):
        return fixed_size_groups(len(lengths), batch_size)

    def encode(self, batch, output_hidden_states=False, output_attentions=False):
        return self.encode_padded(batch.padded(self.pad_token_id), output_hidden_states, output_attentions)

    def encode_padded(self, features, output_hidden_states=False, output_attentions=False):
        from refimpl.engines.reference import forward

        mask = features["attention_mask"]
        check_indices(self.config, features["input_ids"], features["token_type_ids"], features["input_ids"].shape[-1])
        last_hidden, hidden, attentions = forward.encoder(
            features["input_ids"],
            features["token_type_ids"],
            mask,
            self.weights,
            self.config,
            output_hidden_states,
            output_attentions,
        )
        return PaddedStates(last_hidden, mask, hidden, attentions)
