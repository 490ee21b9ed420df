"""The pipeline: Transformer -> Pooling [-> Normalize], built from modules.json, and the
batch scheduling that ``encode`` uses (tokenize all, sort by length, run the engine's
plan, put the results back in input order, as sentence-transformers' ``encode`` does).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from refimpl.batch import Encoded
from refimpl.engines import DEFAULT_ENGINE, pooling
from refimpl.errors import ModelFileError
from refimpl.load.locate import read_modules
from refimpl.run import turns
from refimpl.run.modules import Normalize, Pooling, Transformer
from refimpl.run.turns import TurnLock

logger = logging.getLogger("refimpl")


@dataclass(eq=False)  # compared by identity: the fork handlers keep a weak set of pipelines
class Pipeline:
    transformer: Transformer
    pooling: Pooling
    normalize: Normalize | None = None
    # forward passes take turns in arrival order, and a fork waits for its turn (run/turns.py)
    lock: TurnLock = field(default_factory=TurnLock)

    def __post_init__(self):
        turns.register(self)

    @property
    def output_dimension(self) -> int:
        return self.pooling.output_dimension

    def sentence_embeddings(self, states, prompt_length: int = 0) -> np.ndarray:
        """Pooling [-> Normalize] of one batch's token states; NaN or infinity is an error."""
        sentence = self.pooling(states, prompt_length)
        if self.normalize is not None:
            sentence = self.normalize(sentence)
        if not np.isfinite(sentence).all():
            raise FloatingPointError(
                f"the model produced NaN or infinity; {self.transformer.weights_file} probably holds non-finite weights"
            )
        return sentence

    def forward(
        self,
        features: dict,
        output_hidden_states: bool = False,
        engine: str | None = None,
        output_attentions: bool = False,
    ) -> dict:
        """Encoder and pooling on a padded [B, T] batch; see SentenceTransformer.forward."""
        ids = np.asarray(features["input_ids"], np.int64)
        mask = np.asarray(features.get("attention_mask", np.ones_like(ids)), np.int64)
        types = np.asarray(features.get("token_type_ids", np.zeros_like(ids)), np.int64)
        if ids.ndim != 2 or mask.shape != ids.shape or types.shape != ids.shape:
            raise ValueError(
                "input_ids, attention_mask and token_type_ids must all be [B, T]; "
                f"got {ids.shape}, {mask.shape}, {types.shape}"
            )
        padded = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        with self.lock:
            states = self.transformer.engine(engine).encode_padded(padded, output_hidden_states, output_attentions)
            sentence = self.sentence_embeddings(states)
        out = dict(features, token_embeddings=states.padded(), sentence_embedding=sentence)
        if output_hidden_states:
            out["hidden_states"] = states.padded_hidden_states()
        if output_attentions:
            out["attentions"] = states.padded_attentions()
        return out

    def run_batch(self, batch: Encoded, output_value: str, prompt_length: int = 0):
        """Rows of [B, D] sentence embeddings, or [T_i, H] token embeddings, in batch order."""
        with self.lock:
            states = self.transformer(batch)
            if output_value == "token_embeddings":
                return states.sequences()
            return self.sentence_embeddings(states, prompt_length)

    def embed(self, encoded: Encoded, batch_size: int, output_value: str, prompt_length: int = 0, progress=False):
        """Every sequence of ``encoded`` through the engine's plan, results in input order."""
        order = np.argsort(-encoded.lengths, kind="stable")  # longest first, as sentence-transformers sorts
        pieces = self.transformer.engine().plan(encoded.lengths[order], batch_size)
        if progress:
            from tqdm import tqdm

            pieces = tqdm(pieces, desc="Batches")
        results: list = [None] * len(order)
        for piece in pieces:
            chosen = order[piece]
            for i, value in zip(chosen, self.run_batch(encoded.select(chosen), output_value, prompt_length)):
                results[i] = value
        if output_value == "token_embeddings":
            return results
        if not results:
            return np.empty(
                (0, self.output_dimension), self.transformer.weights["embeddings"]["LayerNorm"]["weight"].dtype
            )
        return np.stack(results)


def apply_encode_options(
    embeddings: np.ndarray, truncate_dim: int | None, normalize: bool, precision: str
) -> np.ndarray:
    """encode's options on [N, D] embeddings, in sentence-transformers' order: truncate, normalize, quantize."""
    if truncate_dim:
        embeddings = embeddings[:, :truncate_dim]
    if normalize:
        embeddings = pooling.normalize(embeddings)
    if precision != "float32":
        from refimpl.quantization import quantize_embeddings

        embeddings = quantize_embeddings(embeddings, precision)
    return embeddings


def warn_truncated(count: int, total: int, max_seq_length: int):
    """One warning per encode call (or per embed run) when anything was truncated."""
    if count:
        logger.warning(
            "%d of %d inputs were longer than %d tokens and were truncated to %d tokens "
            "(max_seq_length; special tokens included)",
            count,
            total,
            max_seq_length,
            max_seq_length,
        )


def load(model_dir: Path, *, dtype=np.float32, engine: str = DEFAULT_ENGINE, compute: str = "float32") -> Pipeline:
    """Build the modules listed in modules.json and check that they agree with each other."""
    builders = {
        "Transformer": lambda path: Transformer.from_dir(path, dtype=dtype, engine=engine, compute=compute),
        "Pooling": Pooling.from_dir,
        "Normalize": Normalize.from_dir,
    }
    modules = {entry.kind: builders[entry.kind](entry.path) for entry in read_modules(model_dir)}
    transformer, pooler = modules["Transformer"], modules["Pooling"]
    if pooler.config.embedding_dimension != transformer.hidden_size:
        raise ModelFileError(
            pooler.path,
            f"embedding dimension {pooler.config.embedding_dimension} does not match "
            f"hidden_size {transformer.hidden_size} in {transformer.config.path}",
        )
    return Pipeline(transformer, pooler, modules.get("Normalize"))
