"""Stable entry points for the engine.

    from refimpl.engines.fast.kernels import matmul as api
    p = api.pack(W, "int8")                 # W [out, in] float32 (nn.Linear layout)
    y = api.linear(x, p, bias, gelu=True)   # x [M, in] float32 -> y [M, out] float32
    y = api.linear(x, p, scratch=buf)       # x quantised / rounded into a buffer of
                                            # activation_bytes(p, M) bytes kept between calls
    a = api.activations(x, p)               # or once, for several products of the same input
    y = api.linear(x, p, activations=a)
    a = api.linear_to_activations(x, p, p2, bias, gelu=True)   # bf16: the output rounded as
    y = api.linear(None, p2, activations=a)                     # p2's input by the store itself

``PackedLinear.to_dict()`` / ``PackedLinear.from_dict(d)`` convert to and from
a flat ``{name: np.ndarray}`` dict (safetensors / .npy friendly; arrays may be
read-only memory maps -- the kernels only read them).  The packed format does
not depend on the tier: a cache file written on an AVX-512 machine works on an
AVX2 one.

Results per mode:
* "f32" : fp32 fma chain in k order (AVX2 and AVX-512 give identical bits;
          the BLAS fallback tier does not).
* "int8": dynamic symmetric per-row int8 activations x per-channel int8
          weights, exact int32 sums; identical bits in every tier.
* "bf16": bf16 weights and activations, vdpbf16ps arithmetic (float32 sums);
          identical bits in every tier but amx, whose tdpbf16ps rounds its sums
          otherwise (within the float32 summation bound: amx.py).
Every mode is batch invariant: a row's output does not depend on the other
rows of x, on M, or on the thread count.
"""

from typing import NamedTuple

import numpy as np

from refimpl.engines.fast.kernels import common, cpu, packing, policy, threads

FORMAT_VERSION = 1
_MODE_ID = {"f32": 0, "int8": 1, "bf16": 2}
_ID_MODE = {v: k for k, v in _MODE_ID.items()}


class PackedLinear:
    """Packed weight of one linear layer (tier independent)."""

    __slots__ = ("mode", "n", "k", "arrays", "bias", "_zero_bias")

    def __init__(self, mode, n, k, arrays, bias=None):
        if mode not in _MODE_ID:
            raise ValueError("unknown mode %r" % (mode,))
        self.mode = mode
        self.n = int(n)
        self.k = int(k)
        self.arrays = {name: packing.aligned(a) for name, a in arrays.items()}  # unaligned: copied
        # the bias of a product whose weight the loader stacked from several (query, key and value),
        # stacked once as the weight was (not stored in the packed format; None: the caller's own)
        self.bias = None if bias is None else _float32_vector(bias, self.n, "bias")
        self._zero_bias = None

    @property
    def out_features(self):
        return self.n

    @property
    def in_features(self):
        return self.k

    def nbytes(self):
        return sum(a.nbytes for a in self.arrays.values())

    def to_dict(self, prefix=""):
        d = {prefix + "meta": np.array([FORMAT_VERSION, _MODE_ID[self.mode], self.n, self.k, packing.NRP], np.int64)}
        for name, a in self.arrays.items():
            d[prefix + name] = a
        return d

    @classmethod
    def from_dict(cls, d, prefix=""):
        meta = np.asarray(d[prefix + "meta"])
        ver, mode_id, n, k, nrp = (int(v) for v in meta[:5])
        if ver != FORMAT_VERSION or nrp != packing.NRP:
            raise ValueError(
                "packed weight format %d/NR=%d, expected %d/%d: repack" % (ver, nrp, FORMAT_VERSION, packing.NRP)
            )
        mode = _ID_MODE[mode_id]
        names = {"f32": ("w",), "int8": ("w", "scale", "colsum"), "bf16": ("w",)}[mode]
        arrays = {nm: d[prefix + nm] for nm in names}
        p = cls(mode, n, k, arrays)
        p.check()
        return p

    def check(self):
        w = self.arrays["w"]
        NP = packing.n_panels(self.n)
        want = {
            "f32": (NP, self.k, packing.NRP),
            "int8": (NP, (self.k + 3) // 4, packing.NRP, 4),
            "bf16": (NP, (self.k + 1) // 2, packing.NRP, 2),
        }[self.mode]
        dt = {"f32": np.float32, "int8": np.int8, "bf16": np.uint16}[self.mode]
        if w.shape != want or w.dtype != dt or not w.flags.c_contiguous:
            raise ValueError(
                "bad packed array: %s %s, expected %s %s C-contiguous" % (w.shape, w.dtype, want, np.dtype(dt))
            )

    def zero_bias(self):
        if self._zero_bias is None:
            self._zero_bias = np.zeros(self.n, np.float32)
        return self._zero_bias

    def __repr__(self):
        return "PackedLinear(%s, out=%d, in=%d, %.1f MB)" % (self.mode, self.n, self.k, self.nbytes() / 1e6)


def pack(weight, mode, tier=None):
    """Pack ``weight`` [out, in] for ``mode`` ('f32' | 'int8' | 'bf16').

    ``tier`` is only validated (the format is tier independent)."""
    if mode not in packing.PACKERS:
        raise ValueError("unknown mode %r (expected one of %s)" % (mode, tuple(packing.PACKERS)))
    if tier is not None:
        cpu.check_tier(tier)
    W = np.ascontiguousarray(weight, dtype=np.float32)
    if W.ndim != 2:
        raise ValueError("weight must be 2-D [out, in]")
    return PackedLinear(mode, W.shape[0], W.shape[1], packing.PACKERS[mode](W))


_CHOICES = {}


def kernel_for(mode, tier=None):
    """(KernelChoice, module) used by ``linear`` for this mode/tier."""
    return _kernel(mode, tier)[:2]


def _kernel(mode, tier):
    """(KernelChoice, module, the module's linear_<mode>), cached: batch 1 runs 72 products in 5 ms."""
    key = (mode, tier, policy.getenv(cpu.ENV_VAR))
    hit = _CHOICES.get(key)
    if hit is None:
        ch = cpu.select(mode, tier)
        module = ch.kernel_module()
        hit = _CHOICES[key] = (ch, module, getattr(module, "linear_" + mode))
    return hit


# Products with fewer flops than this run in the calling thread only (no
# parallel region).  See threads.py: with OMP_WAIT_POLICY=PASSIVE waking the
# second thread costs ~40 us on this VM, with (briefly) spinning OpenMP ~2 us.
SERIAL_FLOPS = None  # None -> threads.serial_flops() (policy: once per forward pass)


class Activations(NamedTuple):
    """One input of products quantised (int8) or rounded (bf16) for a tier's kernels, once."""

    mode: str
    tier: str
    rows: int
    k: int
    arrays: tuple  # int8: (q [rows, kp], sx [rows]); bf16: (xa [rows, kp2],)
    buffer: np.ndarray  # 1-D uint8 holding the arrays, as the tier's drivers read them


def _float32_rows(x, k):
    if not (type(x) is np.ndarray and x.dtype == np.float32 and x.flags.c_contiguous):
        x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != k:
        raise ValueError("x must be [M, %d], got %s" % (k, x.shape))
    return x


def _prepares(choice, packed):
    """Whether the tier's kernels take ``packed``'s input prepared (quantised or rounded): not in
    float32, not on the BLAS tier."""
    return choice.tier != "blas" and packed.mode != "f32"


def activation_bytes(packed, rows, tier=None):
    """Bytes of scratch ``activations`` needs for ``rows`` rows of ``packed``'s input (0: none)."""
    choice, mod = kernel_for(packed.mode, tier)
    if not _prepares(choice, packed):
        return 0
    w = packed.arrays["w"]
    if packed.mode == "int8":
        return common.int8_activation_bytes(rows, w.shape[1] * 4)
    return common.bf16_activation_bytes(rows, w.shape[1] * 2, mod.BF16_AS_FLOAT32)


def _parallel_by_size(rows, packed):
    """linear's rule for parallel=None: serial below SERIAL_FLOPS (threads.serial_flops by default)."""
    threshold = SERIAL_FLOPS if SERIAL_FLOPS is not None else policy.serial_flops()
    return 2.0 * rows * packed.n * packed.k >= threshold


def activations(x, packed, tier=None, parallel=None, scratch=None):
    """``x`` [M, in] prepared once for every product with ``packed``'s mode and in_features on the tier:
    int8 quantised per row, bf16 rounded; None where there is nothing to prepare (float32, the BLAS
    tier). ``scratch``: a 1-D uint8 array of at least ``activation_bytes`` to hold them, else new
    arrays; ``parallel``: as linear's. Pass the result to ``linear(..., activations=)`` with the same
    x: the products give the same bits as without it."""
    choice, mod = kernel_for(packed.mode, tier)
    if not _prepares(choice, packed):
        return None
    x = _float32_rows(x, packed.k)
    if parallel is None:
        parallel = _parallel_by_size(x.shape[0], packed)
    w = packed.arrays["w"]
    if packed.mode == "int8":
        arrays, buffer = mod.prepare_int8(x, w.shape[1] * 4, parallel, scratch)
    else:
        arrays, buffer = mod.prepare_bf16(x, w.shape[1] * 2, parallel, scratch)
    return Activations(packed.mode, choice.tier, x.shape[0], packed.k, arrays, buffer)


def linear(x, packed, bias=None, gelu=False, out=None, tier=None, parallel=None, activations=None, scratch=None):
    """y = x @ W.T + bias, optionally exact GELU -> [M, out] float32.

    x        : [M, in] float32 (copied if not C-contiguous float32); with ``activations`` it may be
               None (only its shape would be read)
    bias     : [out] float32 or None
    out      : optional preallocated [M, out] float32 C-contiguous array
    tier     : force 'amx' | 'avx512' | 'avx2' | 'blas' (default: $REFIMPL_KERNELS or best)
    parallel : None = auto (serial below SERIAL_FLOPS), True/False to force.
               The result bits never depend on it.
    activations : x already prepared by ``activations(x, packed-of-the-same-mode-and-in)`` or by
               ``linear_to_activations`` (or None)
    scratch  : a 1-D uint8 array of at least ``activation_bytes(packed, M)`` for the kernel to
               quantise or round x into (else a new one); not needed with ``activations``. It is
               overwritten: activations() prepared on the same scratch are gone after the call, and
               two threads must not share one.
    """
    if x is None and activations is not None:
        x = np.empty((activations.rows, 0), np.float32)  # the drivers read the rows from x's shape only
    else:
        x = _float32_rows(x, packed.k)
    M = x.shape[0]
    if out is None:
        out = np.empty((M, packed.n), np.float32)
    elif out.shape != (M, packed.n) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous float32 [%d, %d]" % (M, packed.n))
    bias = _bias(bias, packed)
    if M == 0:
        return out
    choice, _, kernel = _kernel(packed.mode, tier)
    kernel(
        x,
        packed.arrays,
        bias,
        bool(gelu),
        out,
        _parallel(parallel, M, packed),
        _prepared(activations, packed, choice, M),
        scratch,
    )
    return out


def rounds_for(packed, next_packed, tier=None):
    """Whether ``linear_to_activations(x, packed, next_packed)`` runs on the tier: two bf16 products,
    the second's in_features the first's out_features, on a tier whose kernels read prepared inputs
    (not BLAS)."""
    if packed.mode != "bf16" or next_packed.mode != "bf16" or next_packed.k != packed.n:
        return False
    return _prepares(kernel_for("bf16", tier)[0], packed)


def linear_to_activations(x, packed, next_packed, bias=None, gelu=False, tier=None, parallel=None, activations=None,
                          scratch=None, buffer=None):  # fmt: skip
    """``activations(linear(x, packed, bias, gelu), next_packed)``, bit for bit, without the float32
    output: the product rounds its results to bf16 as it stores them, in the layout the next
    product reads (bf16 bits on AVX-512 BF16: half the bytes; float32 values of bf16 numbers on AVX2),
    and not read back to be rounded. bf16 only (``rounds_for``): int8's per-row scale needs each whole row first.

    ``buffer``: a 1-D uint8 array of at least ``activation_bytes(next_packed, M)`` bytes for the result
    (else a new one), sharing no memory with x, ``scratch`` (where x itself is rounded) or
    ``activations`` (refused: the store would overwrite what the product still reads); the other
    arguments as ``linear``'s.
    Pass the result to ``linear(None, next_packed, activations=)``."""
    if not rounds_for(packed, next_packed, tier):
        raise ValueError(
            "linear_to_activations needs two bf16 products, the second's in_features (%d) the first's "
            "out_features (%d), on a tier that prepares inputs; got %s then %s on %s"
            % (next_packed.k, packed.n, packed.mode, next_packed.mode, kernel_for(packed.mode, tier)[0].tier)
        )
    x = _float32_rows(x, packed.k)
    M = x.shape[0]
    bias = _bias(bias, packed)
    choice, mod, _ = _kernel("bf16", tier)
    kp2 = next_packed.arrays["w"].shape[1] * 2
    buf = common.input_buffer(buffer, common.bf16_activation_bytes(M, kp2, mod.BF16_AS_FLOAT32), "buffer")
    read = (("x", x), ("scratch", scratch), ("activations", activations.buffer if activations is not None else None))
    for name, array in read:  # the store would overwrite what other work items still read
        if array is not None and np.may_share_memory(buf, array):
            raise ValueError("the buffer for the rounded output shares memory with %s" % name)
    xa = common.carve(buf, 0, (M, kp2), np.float32 if mod.BF16_AS_FLOAT32 else np.uint16)
    if M:
        prepared = _prepared(activations, packed, choice, M)
        mod.linear_bf16_rounded(
            x, packed.arrays, bias, bool(gelu), xa, _parallel(parallel, M, packed), prepared, scratch
        )
    return Activations("bf16", choice.tier, M, next_packed.k, (xa,), buf)


def _bias(bias, packed):
    """The bias as the kernels read it: [out] float32 C-contiguous (zeros for None)."""
    if bias is None:
        return packed.zero_bias()
    return _float32_vector(bias, packed.n, "bias")


def _float32_vector(vector, n, name):
    if type(vector) is np.ndarray and vector.dtype == np.float32 and vector.shape == (n,) and vector.flags.c_contiguous:
        return vector
    vector = np.ascontiguousarray(vector, dtype=np.float32)
    if vector.shape != (n,):
        raise ValueError("%s must be [%d], got %s" % (name, n, vector.shape))
    return vector


def _parallel(parallel, rows, packed):
    if not threads.configured:
        threads.ensure_configured()
    return bool(_parallel_by_size(rows, packed) if parallel is None else parallel)


def _prepared(activations, packed, choice, rows):
    """The buffer of ``activations`` (None when not given), checked to be for this product's input."""
    if activations is None:
        return None
    if (activations.mode, activations.tier, activations.rows, activations.k) != (
        packed.mode,
        choice.tier,
        rows,
        packed.k,
    ):
        raise ValueError(
            "activations prepared for %s on %s, [%d, %d], used for %s on %s, [%d, %d]"
            % (*activations[:4], packed.mode, choice.tier, rows, packed.k)
        )
    return activations.buffer


def describe(tier=None):
    return cpu.describe(tier)
