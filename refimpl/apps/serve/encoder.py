"""Tokenization for the server: prompts, truncation (right as refimpl, left on a copy of the
tokenizer), the token and character bounds, token-id inputs, and TEI's /tokenize output.

Every method here is blocking and runs in the tokenization thread pool.
"""

from __future__ import annotations

import numpy as np

from refimpl.apps.serve import errors
from refimpl.apps.serve.inputs import EmbedRequest, encoded_from_encodings, ids_encoded
from refimpl.batch import Encoded


class InputEncoder:
    def __init__(self, model, settings):
        from tokenizers import Tokenizer

        self.model = model
        self.max_length = model.max_seq_length
        self.max_chars = settings.input_chars(self.max_length)
        spec = model.tokenizer.to_str()  # the model's tokenizer as refimpl set it up (lowercasing included)
        self.plain = Tokenizer.from_str(spec)  # no truncation: /tokenize and token counts
        self.plain.no_truncation()
        self.plain.no_padding()
        # truncation_direction "Left": the same tokenizer, cut from the left (the special tokens are
        # added after the cut, as with a transformers tokenizer whose truncation_side is "left")
        self.left = Tokenizer.from_str(spec)
        self.left.no_padding()
        self.left.enable_truncation(self.max_length, strategy="longest_first", direction="left")
        self.prompt_lengths: dict[str, int] = {}

    def prompt(self, name: str | None) -> tuple[str, int]:
        """(prompt text, prompt_length for embed_batch) of ``prompt_name`` (else the model's default)."""
        if name is None:
            name = getattr(self.model, "default_prompt_name", None)
            if name is None:
                return "", 0
        prompts = self.model.prompts or {}
        if name not in prompts:
            raise errors.validation(f"`prompt_name` {name!r} is not one of this model's prompts: {sorted(prompts)}")
        text = prompts[name]
        if self.model.pooling_config.include_prompt or not text:
            return text, 0
        if text not in self.prompt_lengths:  # [CLS] + the prompt's tokens, as sentence-transformers counts them
            self.prompt_lengths[text] = len(self.model.tokenize_batch([text]).input_ids) - 1
        return text, self.prompt_lengths[text]

    def _check_chars(self, request: EmbedRequest, name):
        for index, item in enumerate(request.items):
            if isinstance(item, str) and len(item) > self.max_chars:
                where = _where(request, name, index)
                if not request.truncate:
                    raise errors.too_large(
                        f"`{where}` has {len(item)} characters; the limit is {self.max_chars} (--max-input-chars)"
                    )
                if request.direction == "left":
                    raise errors.too_large(
                        f"`{where}` has {len(item)} characters; left truncation takes at most "
                        f"{self.max_chars} (--max-input-chars)"
                    )

    def _texts(self, texts: list[str], request: EmbedRequest) -> Encoded:
        if request.truncate and request.direction == "left":
            return encoded_from_encodings(self.left.encode_batch(texts, add_special_tokens=True))
        return self.model.tokenize_batch(texts)

    def encode(self, request: EmbedRequest, name="inputs") -> tuple[Encoded, int]:
        """(packed ids in input order, prompt_length); 413 for an input over max_seq_length
        tokens unless the request truncates. ``name``: the field, or index -> field name."""
        self._check_chars(request, name)
        prompt, prompt_length = self.prompt(request.prompt_name)
        text_at = [i for i, item in enumerate(request.items) if isinstance(item, str)]
        if prompt and len(text_at) < len(request.items):
            raise errors.validation("`prompt_name` cannot be used with token-id inputs")
        encoded = self._texts([prompt + request.items[i] for i in text_at], request) if text_at else None
        if encoded is not None and not request.truncate and encoded.truncated.any():
            first = int(np.flatnonzero(encoded.truncated)[0])
            count = int(self.model.token_count([prompt + request.items[text_at[first]]])[0])
            self._too_long(request, name, text_at[first], count)
        if len(text_at) == len(request.items):
            return encoded, prompt_length
        parts, text_index = [], 0
        for index, item in enumerate(request.items):
            if isinstance(item, str):
                parts.append(encoded.select([text_index]))
                text_index += 1
            else:
                parts.append(self._ids(item, request, name, index))
        return Encoded.concatenate(parts), prompt_length

    def _too_long(self, request, name, index, count):
        where = _where(request, name, index)
        raise errors.too_large(
            f"`{where}` has {count} tokens; the model takes at most {self.max_length} "
            "(max_seq_length): shorten it or send truncate=true"
        )

    def _ids(self, ids: np.ndarray, request: EmbedRequest, name: str, index: int) -> Encoded:
        if len(ids) <= self.max_length:
            return ids_encoded(ids, False)
        if not request.truncate:
            self._too_long(request, name, index, len(ids))
        kept = ids[-self.max_length :] if request.direction == "left" else ids[: self.max_length]
        return ids_encoded(kept, True)

    def tokenize(self, texts: list[str], add_special_tokens: bool, prompt_name: str | None) -> list[list[dict]]:
        """TEI's /tokenize: per input, {id, text, special, start, stop}; start and stop are UTF-8
        byte offsets into the (prompted) input, null for special tokens, as TEI gives them."""
        for index, text in enumerate(texts):
            if len(text) > self.max_chars:
                raise errors.too_large(f"`inputs[{index}]` has {len(text)} characters; the limit is {self.max_chars}")
        prompt, _ = self.prompt(prompt_name)
        texts = [prompt + text for text in texts]
        encodings = self.plain.encode_batch(texts, add_special_tokens=add_special_tokens)
        return [_tokens(text, encoding) for text, encoding in zip(texts, encodings)]


def _where(request: EmbedRequest, name, index: int) -> str:
    if callable(name):
        return name(index)
    return name if request.single else f"{name}[{index}]"


def _tokens(text: str, encoding) -> list[dict]:
    byte_at = np.concatenate([[0], np.cumsum([len(c.encode("utf-8")) for c in text], dtype=np.int64)])
    out = []
    for token_id, token, (start, stop), special in zip(
        encoding.ids, encoding.tokens, encoding.offsets, encoding.special_tokens_mask
    ):
        if special:
            out.append({"id": token_id, "text": token, "special": True, "start": None, "stop": None})
        else:
            out.append(
                {
                    "id": token_id,
                    "text": text[start:stop],
                    "special": False,
                    "start": int(byte_at[start]),
                    "stop": int(byte_at[stop]),
                }
            )
    return out
