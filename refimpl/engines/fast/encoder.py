"""The fast engine's encoder: the same forward pass on packed tokens, with no padding at all.

The B sentences of a batch are concatenated into N = sum(lengths) tokens; ``cu_seqlens``
([B + 1], cumulative lengths) says where each begins. Each linear layer is one product over all N
real tokens: refimpl's own packed kernels (``kernels/matmul.py``: float32, int8 or bfloat16, bias
and GELU fused into the store) when the engine packed the weights, else BLAS. The elementwise work
runs in fused numba kernels (``kernels/norms.py``), and attention runs per sequence on its own
length (``kernels/attention.py``), so no work is spent on padding and no mask is needed. In float32
the result equals ``forward.encoder`` on the real tokens (tests/test_parity.py).
"""

from __future__ import annotations

import contextlib
import functools
import threading

import numpy as np

from refimpl.engines.fast.kernels import attention as attention_kernels
from refimpl.engines.fast.kernels import matmul, norms, policy
from refimpl.engines.fast.kernels.packing import aligned_empty
from refimpl.load.config import EncoderConfig


def packed_position_ids(input_ids, cu_seqlens, config: EncoderConfig) -> np.ndarray:
    """forward.position_ids, per packed sequence (RoBERTa: cumsum(mask) * mask + padding_idx)."""
    lengths = np.diff(cu_seqlens)
    starts = np.repeat(cu_seqlens[:-1], lengths)  # [N]: each token's sequence start
    if config.roberta_positions:
        mask = (input_ids != config.pad_token_id).astype(np.int64)
        counts = np.cumsum(mask)
        before = np.concatenate([[0], counts])[starts]  # real tokens of earlier sequences
        return (counts - before) * mask + config.pad_token_id
    return np.arange(input_ids.shape[0], dtype=np.int64) - starts


@functools.lru_cache(maxsize=64)
def _scalar(value, dtype):
    """``value`` as a NumPy scalar of ``dtype``, made once per (value, dtype): a pass asks 37 times."""
    return np.dtype(dtype).type(value)


def embeddings(input_ids, token_type_ids, cu_seqlens, w, config: EncoderConfig):
    """word + token_type + position embeddings and LayerNorm, fused: [N] ids -> [N, H]."""
    word = w["word_embeddings"]["weight"]
    dtype = word.dtype
    out = np.empty((input_ids.shape[0], config.hidden_size), dtype)
    norms.embeddings_layer_norm(
        input_ids,
        token_type_ids,
        packed_position_ids(input_ids, cu_seqlens, config),
        word,
        w["token_type_embeddings"]["weight"],
        w["position_embeddings"]["weight"],
        w["LayerNorm"]["weight"],
        w["LayerNorm"]["bias"],
        _scalar(config.layer_norm_eps, dtype),
        _scalar(1.0 / config.hidden_size, dtype),
        out,
    )
    return out


# Below this many tokens, OpenBLAS is faster computing (W x^T)^T than x W^T: it repacks the
# weight on every call, and the transposed problem packs it better (docs/performance.md has
# the measurement). Batch-1 latency lives here.
SMALL_BATCH_TOKENS = 96


def matmul_t(x, weight, out=None):
    """x W^T through BLAS on the [out, in] layout (no transposed copy of W), into ``out`` if given."""
    if x.shape[0] < SMALL_BATCH_TOKENS:
        y = np.matmul(weight, x.T).T  # [out, in] x [in, N] -> [out, N] -> [N, out]
        if out is None:
            return y.copy()
        out[...] = y
        return out
    return np.matmul(x, weight.T, out=out)  # [N, in] -> [N, out]


def linear(x, w, packed=None, with_bias=True, gelu=False, out=None, scratch=None, activations=None):
    """nn.Linear (x W^T [+ b]) and, for the FFN's first product, GELU: [N, in] -> [N, out].

    With the weight packed for refimpl's kernels (``packed``, a ``kernels.matmul.PackedLinear``) the
    bias and GELU are fused into the kernel's store; with BLAS they are one more pass. Without
    ``with_bias`` the kernel that follows adds the bias. ``out``: the [N, out] array to write
    (else a new one); ``scratch``: the pass's buffers, whose "prepared" bytes the kernel quantises or
    rounds x into (no fresh pages); ``activations``: x already prepared for the packed kernel
    (``matmul.linear_to_activations``); x may then be None."""
    if packed is not None:
        bias = w["bias"] if with_bias else None
        prepared = scratch.get("prepared") if scratch else None
        return matmul.linear(x, packed, bias, gelu=gelu, out=out, scratch=prepared, activations=activations)
    y = matmul_t(x, w["weight"], out)
    if gelu:
        norms.bias_gelu(y, w["bias"])
    elif with_bias:
        y += w["bias"]
    return y


class Scratch:
    """The buffers of one forward pass, reused by every layer and by later passes that fit.

    A new array of a few MB is mapped fresh from the system and costs a page fault for each 4 KB page
    it touches: 3,284 faults in an int8 pass of 494 tokens, 5-6 ms of its 71-74 ms
    (docs/performance.md). Passes running at the same time take different Scratches (``_scratch``).
    Layout, for N tokens of hidden size H and FFN size I: ``qkvc`` holds Q, K, V side by side,
    [N, 3H], then the attention context, [N, H], and later the FFN's [N, I]; ``y`` the output
    products, [N, H]; ``prepared`` the products' quantised or rounded inputs, in turn."""

    def __init__(self, key):
        self.key = key  # (dtype, H, I)
        self.tokens = -1
        self.prepared = aligned_empty(0, np.uint8)

    def views(self, n, prepared_bytes):
        dtype, hidden, inner = self.key
        if n > self.tokens or prepared_bytes > self.prepared.size:
            self.tokens = max(n, self.tokens)
            # on cache lines: the products' 64-byte loads of their inputs (and bf16's rounded FFN) not split
            self.qkvc = aligned_empty(self.tokens * max(4 * hidden, inner), dtype)
            self.y = aligned_empty(self.tokens * hidden, dtype)
            self.prepared = aligned_empty(max(prepared_bytes, self.prepared.size), np.uint8)
        q, k, v = (self.qkvc[i * n * hidden : (i + 1) * n * hidden].reshape(n, hidden) for i in range(3))
        return {
            "qkv": self.qkvc[: 3 * n * hidden].reshape(n, 3 * hidden),  # the same memory as
            "q": q,  # the three [N, H] outputs of BLAS's products
            "k": k,
            "v": v,
            "context": self.qkvc[3 * n * hidden : 4 * n * hidden].reshape(n, hidden),
            "h": self.qkvc[: n * inner].reshape(n, inner),
            "y": self.y[: n * hidden].reshape(n, hidden),
            "prepared": self.prepared,
        }


# Scratches no pass is using, at most IDLE_SCRATCHES of them: a pass takes one of its shape (or a new
# one) and gives it back, so memory follows the passes that run at once, not the threads that ever ran one.
# One grown past KEEP_TOKENS (a forward() or verify of a whole batch in one pass) is not kept: encode's
# passes are at most the engine's MAX_TOKENS_PER_FORWARD, and a 64 x 512-token pass's would stay 600 MB.
_idle: list[Scratch] = []
_idle_lock = threading.Lock()
IDLE_SCRATCHES = 4
KEEP_TOKENS = 1024  # engines.fast.MAX_TOKENS_PER_FORWARD (tests/test_memory_bounds.py checks they agree)


@contextlib.contextmanager
def _scratch(n, config: EncoderConfig, dtype, packed_layers):
    """Buffers for a pass of n tokens: a Scratch taken for the pass and given back after it."""
    prepared_bytes = 0
    if packed_layers:
        prepared_bytes = max((matmul.activation_bytes(p, n) for p in packed_layers[0].values()), default=0)
    key = (np.dtype(dtype), config.hidden_size, config.intermediate_size)
    with _idle_lock:
        match = next((i for i in reversed(range(len(_idle))) if _idle[i].key == key), None)
        scratch = _idle.pop(match) if match is not None else Scratch(key)
    try:
        yield scratch.views(n, prepared_bytes)
    finally:
        if scratch.tokens <= KEEP_TOKENS:
            with _idle_lock:
                _idle.append(scratch)
                del _idle[:-IDLE_SCRATCHES]


def attention(x, cu_seqlens, w, config: EncoderConfig, keep_probabilities=False, packed=None, scratch=None, out=None):
    """RobertaAttention on packed tokens: projections, per-sequence attention, dense + residual + LayerNorm;
    with ``keep_probabilities`` also each sequence's attention probabilities [nh, L, L]. ``packed`` maps
    the layer's packed products ("self.qkv": query, key and value stacked, "output.dense") to their
    packed weights, when the engine packed them;
    ``scratch``: the pass's buffers (``Scratch.views``), else new arrays; ``out``: where the result goes
    (may be x itself), else a new array."""
    packed = packed or {}
    scratch = scratch or {}
    sw = w["self"]
    context = scratch["context"] if scratch else np.empty_like(x)
    scale = _scalar(config.head_dim**-0.5, x.dtype)
    heads = config.num_attention_heads
    stacked = packed.get("self.qkv")  # query, key and value as one product: [N, H] -> [N, 3H]
    if packed and stacked is None:
        raise ValueError(f"packed attention products {sorted(packed)} lack 'self.qkv' (query, key and value stacked)")
    if stacked is not None:
        stacked_bias = stacked.bias  # set by packed_weights.packed_layers, else stacked here
        if stacked_bias is None:
            stacked_bias = np.concatenate([sw[name]["bias"] for name in ("query", "key", "value")])
        bias = {"bias": stacked_bias}
        qkv = linear(x, bias, stacked, out=scratch.get("qkv"), scratch=scratch)
        result = attention_kernels.attention_qkv(
            qkv, cu_seqlens, heads, scale, out=context, probabilities=keep_probabilities
        )
    else:
        q, k, v = (linear(x, sw[name], out=scratch.get(name[0])) for name in ("query", "key", "value"))  # [N, H]
        result = attention_kernels.attention(
            q, k, v, cu_seqlens, heads, scale, out=context, probabilities=keep_probabilities
        )
    kept = result[1] if keep_probabilities else None
    dense = packed.get("output.dense")
    result = dense_residual_layer_norm(context, x, w["output"], config, dense, scratch, out)
    return result, kept


def dense_residual_layer_norm(
    h, residual, w, config: EncoderConfig, packed=None, scratch=None, out=None, activations=None
):
    """LayerNorm(h W^T + b + residual): RobertaSelfOutput / RobertaOutput, LayerNorm fused with bias and
    residual, written to ``out`` (may be ``residual``) or a new array; ``activations``: h already
    prepared for the packed product (then h may be None)."""
    scratch = scratch or {}
    y = linear(h, w["dense"], packed, False, out=scratch.get("y"), scratch=scratch, activations=activations)
    out = np.empty_like(residual) if out is None else out
    norms.bias_residual_layer_norm(
        y,
        w["dense"]["bias"],
        residual,
        w["LayerNorm"]["weight"],
        w["LayerNorm"]["bias"],
        _scalar(config.layer_norm_eps, y.dtype),
        _scalar(1.0 / config.hidden_size, y.dtype),
        out,
    )
    return out


# bf16: the FFN's first product rounds its output for the second (ffn); False runs the two as any
# other pair of products (tests/test_compute_modes.py checks both give the same bits)
ROUNDED_FFN = True


def ffn(x, w, config: EncoderConfig, packed=None, scratch=None, out=None):
    """RobertaIntermediate + RobertaOutput: dense with bias and GELU, dense + residual + LayerNorm.

    In bf16 the first product stores its output already rounded as the second's input, on h's bytes
    (``matmul.linear_to_activations``): the same bits as rounding a float32 h, without reading h back
    to round it, and in half the bytes on AVX-512 BF16 (bits; AVX2's emulation reads float32 values of
    bf16 numbers) (``ROUNDED_FFN``)."""
    packed = packed or {}
    scratch = scratch or {}
    first, second = packed.get("intermediate.dense"), packed.get("output.dense")
    h = scratch.get("h")
    if h is None:
        h = np.empty((x.shape[0], config.intermediate_size), x.dtype)
    rounded = None
    if ROUNDED_FFN and first is not None and second is not None and matmul.rounds_for(first, second):
        buffer = h.reshape(-1).view(np.uint8)
        if matmul.activation_bytes(second, x.shape[0]) <= buffer.size:
            prepared = scratch.get("prepared")
            bias = w["intermediate"]["dense"]["bias"]
            rounded = matmul.linear_to_activations(x, first, second, bias, True, scratch=prepared, buffer=buffer)
    if rounded is None:
        h = linear(x, w["intermediate"]["dense"], first, gelu=True, out=h, scratch=scratch)  # [N, H] -> [N, I]
    return dense_residual_layer_norm(
        None if rounded is not None else h, x, w["output"], config, second, scratch, out, activations=rounded
    )  # [N, I] -> [N, H]


def layer(x, cu_seqlens, w, config: EncoderConfig, keep_probabilities=False, packed=None, scratch=None, in_place=False):
    """RobertaLayer on packed tokens (and, when asked, its attention probabilities per sequence);
    ``packed``: the layer's packed products by name (packed_weights.PACKED), or None (BLAS);
    ``in_place``: write the result over x (the pass keeps no earlier hidden state)."""
    packed = packed or {}
    attention_packed = {
        name.removeprefix("attention."): p for name, p in packed.items() if name.startswith("attention.")
    }
    after_attention = x if in_place else None
    x, probabilities = attention(
        x, cu_seqlens, w["attention"], config, keep_probabilities, attention_packed, scratch, after_attention
    )
    return ffn(x, w, config, packed, scratch, x), probabilities


def encoder(
    input_ids, token_type_ids, cu_seqlens, weights, config: EncoderConfig, output_hidden_states=False,
    output_attentions=False, packed_layers=None,
):  # fmt: skip
    """The last hidden state of every real token, [N, H]; optionally every layer's, and every
    layer's attention probabilities as one [nh, L, L] array per sequence (no padding).
    ``packed_layers``: per layer, its linear layers packed for refimpl's kernels (None: BLAS)."""
    dtype = weights["embeddings"]["word_embeddings"]["weight"].dtype
    with (
        policy.forward_pass(on_blas=_products_on_blas(packed_layers)),
        _scratch(input_ids.shape[0], config, dtype, packed_layers) as scratch,
    ):
        x = embeddings(input_ids, token_type_ids, cu_seqlens, weights["embeddings"], config)
        hidden_states = [x] if output_hidden_states else None  # kept only when asked: 13 x [N, H]
        attentions = [] if output_attentions else None
        for index, layer_weights in enumerate(weights["encoder"]["layer"]):
            packed = packed_layers[index] if packed_layers is not None else None
            x, probabilities = layer(
                x,
                cu_seqlens,
                layer_weights,
                config,
                output_attentions,
                packed,
                scratch,
                in_place=not output_hidden_states,
            )
            if output_hidden_states:
                hidden_states.append(x)
            if output_attentions:
                attentions.append(probabilities)
    return x, hidden_states, attentions


def _products_on_blas(packed_layers) -> bool:
    """True when this pass's products run through OpenBLAS: no packed weights, or the BLAS tier."""
    first = next(iter(packed_layers[0].values()), None) if packed_layers else None
    if first is None:
        return True
    return matmul.kernel_for(first.mode)[0].tier == "blas"
