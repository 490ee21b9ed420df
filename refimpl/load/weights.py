"""Loading, step 4: the weights, checked against config.json and named as the checkpoint names them.

The result is a nested dict whose keys are the checkpoint's own names, e.g.
``weights["encoder"]["layer"][3]["attention"]["self"]["query"]["weight"]``,
so each function of the forward pass receives the sub-dict it mirrors. A float32
safetensors checkpoint in float32 mode stays memory-mapped (``formats.safetensors``);
other stored dtypes, float64 mode and ``pytorch_model.bin`` are copies in memory.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from refimpl.errors import ModelFileError
from refimpl.formats.safetensors import StoredTensor, read_safetensors
from refimpl.load.config import EncoderConfig
from refimpl.load.locate import PYTORCH_BIN_NAME, SAFETENSORS_NAME

logger = logging.getLogger("refimpl")


# --- from checkpoint keys to the nested dict the forward pass reads ---------------------------

_PREFIXES = ("roberta.", "bert.", "model.")
_LAYER_KEY = re.compile(r"^encoder\.layer\.(\d+)\.")
# Heads and buffers that sentence embeddings never use.
_IGNORED = re.compile(r"^(pooler\.|lm_head\.|cls\.|classifier\.|qa_outputs\.)|position_ids$|token_type_ids$")


def canonical_name(key: str) -> str:
    """'roberta.encoder.layer.0.output.LayerNorm.gamma' -> 'encoder.layer.0.output.LayerNorm.weight'.

    Mirrors transformers' loading: the base-model prefix is optional, and very old
    TensorFlow-converted checkpoints call LayerNorm's weight and bias gamma and beta.
    """
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix) :]
            break
    if key.endswith(".gamma"):
        key = key[: -len("gamma")] + "weight"
    elif key.endswith(".beta"):
        key = key[: -len("beta")] + "bias"
    return key


def expected_shapes(config: EncoderConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor the forward pass reads, with the shape config.json implies."""
    H, I = config.hidden_size, config.intermediate_size
    shapes = {
        "embeddings.word_embeddings.weight": (config.vocab_size, H),
        "embeddings.position_embeddings.weight": (config.max_position_embeddings, H),
        "embeddings.token_type_embeddings.weight": (config.type_vocab_size, H),
        "embeddings.LayerNorm.weight": (H,),
        "embeddings.LayerNorm.bias": (H,),
    }
    for i in range(config.num_hidden_layers):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            shapes[p + f"attention.self.{name}.weight"] = (H, H)
            shapes[p + f"attention.self.{name}.bias"] = (H,)
        shapes[p + "attention.output.dense.weight"] = (H, H)
        shapes[p + "attention.output.dense.bias"] = (H,)
        shapes[p + "attention.output.LayerNorm.weight"] = (H,)
        shapes[p + "attention.output.LayerNorm.bias"] = (H,)
        shapes[p + "intermediate.dense.weight"] = (I, H)
        shapes[p + "intermediate.dense.bias"] = (I,)
        shapes[p + "output.dense.weight"] = (H, I)
        shapes[p + "output.dense.bias"] = (H,)
        shapes[p + "output.LayerNorm.weight"] = (H,)
        shapes[p + "output.LayerNorm.bias"] = (H,)
    return shapes


def _shape_of(value) -> tuple[int, ...]:
    return tuple(value.shape)


def select_weights(state: Mapping[str, object], config: EncoderConfig, source: Path) -> dict[str, object]:
    """Map checkpoint keys to canonical names and check every shape against config.json.

    ``state`` values are StoredTensor or NumPy arrays; both have ``.shape``.
    Disagreements are reported in config.json's terms (hidden size, layers, vocabulary).
    """
    canonical: dict[str, object] = {}
    for key, value in state.items():
        name = canonical_name(key)
        if _IGNORED.search(name):
            continue
        if name in canonical:
            raise ModelFileError(source, f"tensor '{name}' is stored twice (as '{key}' and under another prefix)")
        canonical[name] = value

    cfg = config.path or "config.json"
    word = canonical.get("embeddings.word_embeddings.weight")
    if word is not None and _shape_of(word) != (config.vocab_size, config.hidden_size):
        raise ModelFileError(
            source,
            f"embeddings.word_embeddings.weight has shape {list(_shape_of(word))} but {cfg} says "
            f"vocab_size={config.vocab_size}, hidden_size={config.hidden_size}",
        )
    layers = {int(m.group(1)) for name in canonical if (m := _LAYER_KEY.match(name))}
    if layers and max(layers) + 1 != config.num_hidden_layers:
        raise ModelFileError(
            source,
            f"holds {max(layers) + 1} encoder layers (encoder.layer.0-{max(layers)}) but {cfg} says "
            f"num_hidden_layers={config.num_hidden_layers}",
        )
    if config.num_hidden_layers > 0 and not layers:
        raise ModelFileError(
            source, f"holds no encoder layers but {cfg} says num_hidden_layers={config.num_hidden_layers}"
        )

    shapes = expected_shapes(config)
    selected = {}
    for name, shape in shapes.items():
        if name not in canonical:
            raise ModelFileError(source, f"tensor '{name}' is missing")
        if _shape_of(canonical[name]) != shape:
            raise ModelFileError(
                source,
                f"tensor '{name}' has shape {list(_shape_of(canonical[name]))}, expected {list(shape)} from {cfg}",
            )
        selected[name] = canonical[name]
    unused = sorted(set(canonical) - set(shapes))
    if unused:
        raise ModelFileError(
            source, f"holds tensors this architecture does not have, e.g. '{unused[0]}' ({len(unused)} in all)"
        )
    return selected


def to_nested(flat: Mapping[str, np.ndarray]) -> dict:
    """{'encoder.layer.0.attention.self.query.weight': W} -> {'encoder': {'layer': [{'attention': ...}]}}."""
    nested: dict = {}
    for name, value in flat.items():
        node = nested
        parts = name.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    encoder = nested.get("encoder", {"layer": {}})
    encoder["layer"] = [encoder["layer"][str(i)] for i in range(len(encoder.get("layer", {})))]
    nested["encoder"] = encoder
    return nested


def load_weights(state: Mapping[str, object], config: EncoderConfig, source: Path, dtype=np.float32) -> dict:
    """Checked, canonically named weights as a nested dict of ``dtype`` arrays."""
    dtype = np.dtype(dtype)
    selected = select_weights(state, config, source)
    arrays = {}
    for name, value in selected.items():
        if isinstance(value, StoredTensor):
            array = value.to_numpy(dtype)
        else:
            array = np.asarray(value)
            if array.dtype.kind != "f":
                raise ModelFileError(source, f"tensor '{name}' has dtype {array.dtype}; weights must be floating point")
            array = array.astype(dtype, copy=False)
        arrays[name] = array
    return to_nested(arrays)


STORED_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}
STORED_DTYPES.update({name: name for name in ("float16", "float32", "float64")})  # pytorch_model.bin's arrays


def stored_float_dtype(state: Mapping) -> str | None:
    """The dtype of the checkpoint's first floating tensor (by name), which transformers computes in when
    nothing else sets one. pytorch_model.bin's bfloat16 tensors arrive here as float32 already."""
    for name in sorted(state):
        tensor = state[name]
        stored = getattr(tensor, "dtype", None)
        stored = STORED_DTYPES.get(stored if isinstance(stored, str) else np.dtype(stored).name)
        if stored is not None:
            return stored
    return None


def read_state(transformer_dir: Path):
    """The raw tensors of the Transformer module (safetensors, else pytorch_model.bin) and their file."""
    safetensors_file = transformer_dir / SAFETENSORS_NAME
    if safetensors_file.exists():
        return read_safetensors(safetensors_file), safetensors_file
    bin_file = transformer_dir / PYTORCH_BIN_NAME
    if bin_file.exists():
        from refimpl.formats.torch_bin import read_pytorch_bin

        logger.warning(
            "%s has no %s; reading %s without torch (copied into memory, not mapped). "
            "`refimpl convert %s %s` writes a safetensors file once for fast, mapped loads.",
            transformer_dir,
            SAFETENSORS_NAME,
            PYTORCH_BIN_NAME,
            bin_file,
            safetensors_file,
        )
        return read_pytorch_bin(bin_file), bin_file
    raise ModelFileError(safetensors_file, f"file is missing (and there is no {PYTORCH_BIN_NAME} either)")
