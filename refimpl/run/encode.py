"""``SentenceTransformer.encode``: its arguments checked and applied in sentence-transformers' order
(prompt, tokenize, the pipeline, then truncate_dim, normalization, precision)."""

from __future__ import annotations

import logging

from refimpl.checks import cpu_device, positive_int
from refimpl.load.config import resolve_prompt
from refimpl.quantization import check_precision
from refimpl.run.inputs import as_text_list
from refimpl.run.pipeline import apply_encode_options

logger = logging.getLogger("refimpl")

OUTPUT_VALUES = ("sentence_embedding", "token_embeddings")


def encode_with_options(
    model,
    sentences,
    prompt_name=None,
    prompt=None,
    batch_size=32,
    show_progress_bar=None,
    output_value="sentence_embedding",
    precision="float32",
    convert_to_numpy=True,
    convert_to_tensor=False,
    device=None,
    normalize_embeddings=False,
    truncate_dim=None,
):
    """``model.encode``'s work: (embeddings, how many inputs were truncated, how many there were)."""
    cpu_device(device)
    texts, single = as_text_list(sentences)
    batch_size = positive_int("batch_size", batch_size)
    if output_value not in OUTPUT_VALUES:
        raise ValueError(f"output_value must be one of {OUTPUT_VALUES}, got {output_value!r}")
    check_precision(precision)
    truncate_dim = positive_int("truncate_dim", truncate_dim, allow_none=True) or model.truncate_dim
    prompt = resolve_prompt(model.prompts, model.default_prompt_name, prompt, prompt_name)
    if show_progress_bar is None:
        show_progress_bar = logger.getEffectiveLevel() in (logging.INFO, logging.DEBUG)
    prompt_length = 0
    if prompt:
        texts = [prompt + text for text in texts]
        if not model.pooling_config.include_prompt:
            # the prompt's tokens, as sentence-transformers counts them (less a final special token)
            prompt_length = model.text_tokenizer.prompt_length(prompt)
    encoded = model.text_tokenizer.encode(texts)
    embeddings = model.pipeline.embed(encoded, batch_size, output_value, prompt_length, show_progress_bar)
    if output_value == "sentence_embedding":
        embeddings = apply_encode_options(embeddings, truncate_dim, normalize_embeddings, precision)
    if single:
        embeddings = embeddings[0]
    elif output_value == "sentence_embedding" and not convert_to_numpy and not convert_to_tensor:
        embeddings = list(embeddings)
    return embeddings, int(encoded.truncated.sum()), len(texts)
