"""CPU feature detection and kernel-tier selection.

Tiers, best first:

* ``"amx"``    -- the avx512 tier with int8 and bf16 on AMX tiles (``amx.py``). Needs amx-tile +
  amx-int8 (bf16 also amx-bf16, else it stays on vdpbf16ps) and Linux's permission for the tile
  state (``amx_permitted``). int8 is bit-identical to every other tier; bf16 is not (the tile unit
  rounds its sums otherwise than vdpbf16ps: ``amx.py``), and ``REFIMPL_KERNELS=avx512`` gives the
  bits of the other tiers. float32 runs the avx512 tier's kernels. Measured on a Sapphire
  Rapids-class Xeon (KVM, 2 cores; ``REFIMPL_KERNELS=avx512|amx python -m tools.product_rates
  --modes int8 bf16 --cold``): the 72 products of 494 rows ran at 987-1,050 GOPS in int8 against
  the VNNI kernel's 770, and at 697-756 GFLOP/s in bf16 against vdpbf16ps's 186.
* ``"avx512"`` -- needs avx512f + avx512bw + avx512vl (+ avx2, fma).
  int8 uses ``vpdpbusd`` when avx512vnni is present, otherwise the AVX2
  sign-trick kernel; bf16 uses ``vdpbf16ps`` when avx512bf16 is present,
  otherwise the AVX2 emulation (bit-identical, see ``avx2.py``).
* ``"avx2"``   -- needs avx2 + fma.
* ``"blas"``   -- anything else: NumPy/BLAS fallback (``blas.py``).

``REFIMPL_KERNELS=amx|avx512|avx2|blas`` forces a tier.  Forcing a tier that the
CPU (or numba's code generator, see below) lacks raises ``ValueError`` naming
the missing feature -- we never run an instruction the CPU does not have.

Features come from ``llvmlite.binding.get_host_cpu_features()``, restricted by
what numba's code generator is told to use: if ``NUMBA_CPU_FEATURES`` is set
numba compiles with exactly that feature string (the explicit ``+feature``
list is then authoritative), and ``NUMBA_ENABLE_AVX=0`` removes every avx*
feature.  (Numba compiles for the host CPU name and host feature string by
default, so on an AVX-512 host the AVX-512 kernels compile; on an AVX2-only
host they are simply never compiled, because numba compiles lazily on the
first call and ``select`` never hands out a module the CPU cannot run.)
"""

import os
from dataclasses import dataclass, field, replace

TIERS = ("amx", "avx512", "avx2", "blas")  # best first
MODES = ("f32", "int8", "bf16")
ENV_VAR = "REFIMPL_KERNELS"

_AVX512 = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl")
REQUIRED = {"amx": (*_AVX512, "amx-tile", "amx-int8"), "avx512": _AVX512, "avx2": ("avx2", "fma"), "blas": ()}

# llvmlite spells these without underscore; /proc/cpuinfo with one.
_ALIASES = {
    "avx512_vnni": "avx512vnni",
    "avx512_bf16": "avx512bf16",
    "avx512_vbmi2": "avx512vbmi2",
    "avx512_bitalg": "avx512bitalg",
    "avx512_vpopcntdq": "avx512vpopcntdq",
    "avx_vnni": "avxvnni",
    "amx_tile": "amx-tile",
    "amx_int8": "amx-int8",
    "amx_bf16": "amx-bf16",
}


def _norm(name):
    name = name.strip().lower()
    return _ALIASES.get(name, name)


def _parse_feature_string(s):
    on, off = set(), set()
    for tok in s.split(","):
        tok = tok.strip()
        if not tok:
            continue
        if tok[0] == "-":
            off.add(_norm(tok[1:]))
        else:
            on.add(_norm(tok.lstrip("+")))
    return on, off


_FEATURES_CACHE = None


def host_features(refresh=False):
    """Frozenset of feature names usable by numba-compiled code on this host."""
    global _FEATURES_CACHE
    if _FEATURES_CACHE is not None and not refresh:
        return _FEATURES_CACHE
    try:
        import llvmlite.binding as llb

        fm = llb.get_host_cpu_features()
        feats = {_norm(k) for k, v in fm.items() if v}
    except Exception:  # pragma: no cover - no LLVM host info
        feats = set()
    try:
        from numba.core import config

        if config.CPU_FEATURES is not None:
            on, off = _parse_feature_string(config.CPU_FEATURES)
            feats = (feats & on) - off
        if not config.ENABLE_AVX:
            feats = {f for f in feats if not f.startswith("avx")}
    except Exception:  # pragma: no cover
        pass
    _FEATURES_CACHE = frozenset(feats)
    return _FEATURES_CACHE


_ARCH_PRCTL = 158  # x86-64 syscall number
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18
_AMX_PERMITTED = None


def amx_permitted():
    """Whether this process may use the AMX tile data: Linux (5.16+) grants it on request
    (arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)), once per process, kept by fork, and an AMX
    instruction without it kills the process (SIGILL). Asked once, on first use."""
    global _AMX_PERMITTED
    if _AMX_PERMITTED is None:
        _AMX_PERMITTED = False
        try:
            import ctypes
            import platform

            if platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64"):
                libc = ctypes.CDLL(None, use_errno=True)
                _AMX_PERMITTED = libc.syscall(_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0
        except (OSError, AttributeError):  # pragma: no cover - no libc syscall
            pass
    return _AMX_PERMITTED


def missing_features(tier, features=None):
    feats = host_features() if features is None else features
    missing = [f for f in REQUIRED[tier] if f not in feats]
    if tier == "amx" and not missing and not amx_permitted():
        missing.append("amx-tile (the kernel refused the tile state: arch_prctl ARCH_REQ_XCOMP_PERM)")
    return missing


def best_tier(features=None):
    for t in TIERS:
        if not missing_features(t, features):
            return t
    return "blas"


def requested_tier(features=None):
    """The tier to use: ``REFIMPL_KERNELS`` if set (validated), else the best."""
    env = os.environ.get(ENV_VAR, "").strip().lower()
    if not env:
        return best_tier(features)
    return check_tier(env, features)


def check_tier(tier, features=None):
    """Validate an explicitly requested tier; raise ValueError if unusable."""
    tier = tier.strip().lower()
    if tier not in TIERS:
        raise ValueError("unknown kernel tier %r (expected one of %s)" % (tier, ", ".join(TIERS)))
    miss = missing_features(tier, features)
    if miss:
        raise ValueError(
            "kernel tier %r needs CPU feature(s) %s which this CPU / numba "
            "target lacks (best available tier: %r)" % (tier, ", ".join(miss), best_tier(features))
        )
    return tier


@dataclass(frozen=True)
class KernelChoice:
    """What ``select`` picked for one mode."""

    mode: str
    tier: str
    module: str  # the kernel module: refimpl.engines.fast.kernels.amx, .avx512, .avx2 or .blas
    algorithm: str  # human-readable kernel name
    features_used: tuple = field(default_factory=tuple)
    tile: str = ""  # MRxNR register tile

    def kernel_module(self):
        """Import and return the kernel module (nothing is compiled here)."""
        import importlib

        return importlib.import_module(self.module)

    def __str__(self):
        return "%s: tier=%s %s [%s] tile=%s" % (
            self.mode,
            self.tier,
            self.algorithm,
            ",".join(self.features_used),
            self.tile,
        )


def select(mode, tier=None, features=None):
    """Pick the kernel for ``mode`` ('f32', 'int8' or 'bf16').

    ``tier`` (or ``$REFIMPL_KERNELS``) may force a lower tier; a tier the CPU
    lacks raises ValueError.
    """
    if mode not in MODES:
        raise ValueError("unknown mode %r (expected one of %s)" % (mode, MODES))
    feats = host_features() if features is None else features
    t = check_tier(tier, feats) if tier else requested_tier(feats)
    pkg = __name__.rsplit(".", 1)[0]
    if t == "blas":
        alg = {"f32": "numpy sgemm", "int8": "exact int via float64 dgemm", "bf16": "numpy reference (slow)"}[mode]
        return KernelChoice(mode, t, pkg + ".blas", alg, (), "-")
    if t == "avx2":
        alg = {
            "f32": "fma f32",
            "int8": "vpsignb+vpmaddubsw+vpmaddwd",
            "bf16": "bf16->f32 widen + fma (MXCSR FTZ/DAZ)",
        }[mode]
        used = {"f32": ("avx2", "fma"), "int8": ("avx2",), "bf16": ("avx2", "fma")}[mode]
        from refimpl.engines.fast.kernels import avx2

        return KernelChoice(mode, t, pkg + ".avx2", alg, used, avx2.TILES[mode])
    if t == "amx":
        if mode == "f32" or (mode == "bf16" and "amx-bf16" not in feats):  # as on the avx512 tier
            return replace(select(mode, "avx512", feats), tier=t)
        from refimpl.engines.fast.kernels import amx

        alg = {"int8": "tdpbusd tiles (u8=a+128, -128*colsum)", "bf16": "tdpbf16ps tiles"}[mode]
        return KernelChoice(mode, t, pkg + ".amx", alg, amx.FEATURES[mode], amx.TILES[mode])
    # avx512 tier
    from refimpl.engines.fast.kernels import avx2, avx512

    if mode == "f32":
        return KernelChoice(mode, t, pkg + ".avx512", "fma f32 zmm", ("avx512f",), avx512.TILES["f32"])
    if mode == "int8":
        if "avx512vnni" in feats:
            return KernelChoice(
                mode,
                t,
                pkg + ".avx512",
                "vpdpbusd (u8=a+128, -128*colsum)",
                ("avx512f", "avx512bw", "avx512vnni"),
                avx512.TILES["int8"],
            )
        return KernelChoice(
            mode, t, pkg + ".avx2", "vpsignb+vpmaddubsw+vpmaddwd (no VNNI)", ("avx2",), avx2.TILES["int8"]
        )
    if "avx512bf16" in feats:
        return KernelChoice(mode, t, pkg + ".avx512", "vdpbf16ps", ("avx512f", "avx512bf16"), avx512.TILES["bf16"])
    return KernelChoice(mode, t, pkg + ".avx2", "bf16 emulation (no AVX512-BF16)", ("avx2", "fma"), avx2.TILES["bf16"])


def _target_features_note(features):
    from refimpl.engines.fast.kernels import target

    if target.VECTOR_WIDTH:  # the host's features with one tuning flag off: say that, not the whole list
        return ", the host's features, loops vectorised at %d bits (-prefer-256-bit)" % target.VECTOR_WIDTH
    return "" if features is None else " features=%s" % features


def describe(tier=None):
    """One multi-line string: CPU, numba target, tier, and the kernel per mode."""
    import llvmlite.binding as llb

    try:
        import numba
        from numba.core import config

        nb = "numba %s, threads=%d, layer=%s" % (numba.__version__, config.NUMBA_NUM_THREADS, config.THREADING_LAYER)
        tgt = "numba target cpu=%s%s" % (
            config.CPU_NAME or llb.get_host_cpu_name(),
            _target_features_note(config.CPU_FEATURES),
        )
    except Exception:  # pragma: no cover
        nb, tgt = "numba ?", ""
    feats = host_features()
    interesting = [
        f
        for f in (
            "avx2",
            "fma",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512vnni",
            "avx512bf16",
            "amx-tile",
            "amx-int8",
            "amx-bf16",
        )
        if f in feats
    ]
    lines = ["kernels: host=%s; %s; %s" % (llb.get_host_cpu_name(), tgt, nb), "features: " + " ".join(interesting)]
    try:
        t = check_tier(tier, feats) if tier else requested_tier(feats)
        lines.append(
            "tier: %s (best %s%s)"
            % (t, best_tier(feats), ", forced by $%s" % ENV_VAR if os.environ.get(ENV_VAR) and not tier else "")
        )
        for m in MODES:
            lines.append("  " + str(select(m, t, feats)))
    except ValueError as e:
        lines.append("tier: ERROR %s" % e)
    return "\n".join(lines)


COMPUTE_TO_MODE = {"float32": "f32", "int8": "int8", "bfloat16": "bf16"}


def describe_tier(tier, compute):
    """What ``model.engine_info`` reports of the kernels: the tier, the algorithm of the compute mode,
    the instructions it uses and its register tile."""
    choice = select(COMPUTE_TO_MODE[compute], tier)
    return {"kernels": choice.tier, "algorithm": choice.algorithm, "instructions": list(choice.features_used),
            "tile": choice.tile}  # fmt: skip
