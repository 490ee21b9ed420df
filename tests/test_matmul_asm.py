"""The hot k-loops are register-only: loads/broadcasts + FMA/dot, no spills.

Kernels are recompiled here without the cache (cached code cannot be
inspected).  ``test_avx2_only_target`` recompiles the AVX2 tier for a
Haswell target (16 ymm registers, no AVX-512) in a subprocess: it must
compile, use no zmm/EVEX-only registers, not spill, and give bit-identical
results to the host build.
"""

import json
import os
import re
import subprocess
import sys

import numba
import numpy as np
import pytest

from refimpl.engines.fast.kernels import asmcheck, avx2, avx512
from refimpl.engines.fast.kernels import matmul as api
from tests.matmul_helpers import ROOT, make_data, require_features, require_tier


def modname(mod):
    return mod.__name__.rsplit(".", 1)[1]


def _compiled_asm(mod, mode):
    x, W, b = make_data(17, 100, 64)
    packed = api.pack(W, mode)
    p = packed.arrays
    out = np.empty((17, 100), np.float32)
    g = numba.njit(parallel=True)(getattr(mod, "gemm_" + mode).py_func)
    buf = np.empty(api.activation_bytes(packed, 17, modname(mod)), np.uint8)  # the driver prepares x into it
    if mode == "f32":
        args = (x, p["w"], b, False, out)
    elif mode == "int8":
        args = (x, buf, True, p["w"], p["scale"], p["colsum"], b, False, out)
    else:
        args = (x, buf, True, p["w"], b, False, out)
    args += (mod.MB,)  # the drivers take their rows per work item as an argument
    if mode == "bf16":
        args += (None,)  # a plain product (not rounding its output for the next)
    g(*args)
    return g.inspect_asm(g.signatures[0])


CASES = [
    # module, mode, hot-loop instruction, extra required instructions, register class
    ("avx512", "f32", r"vfmadd\d+ps", [], "zmm"),
    ("avx512", "int8", r"vpdpbusd", [], "zmm"),
    ("avx512", "bf16", r"vdpbf16ps", [], "zmm"),
    ("avx2", "f32", r"vfmadd\d+ps", [], "ymm"),
    (
        "avx2",
        "int8",
        r"vpmaddubsw",
        [r"vpsignb", r"vpmaddwd|vpdpwssd"],
        "ymm",
    ),  # LLVM fuses pmaddwd+paddd into AVX-VNNI vpdpwssd when the host has it
    ("avx2", "bf16", r"vfmadd\d+ps", [r"vpslld", r"vpblendw|v\w*and"], "ymm"),
]
FEATS = {("avx512", "int8"): ("avx512vnni",), ("avx512", "bf16"): ("avx512bf16",)}


@pytest.mark.parametrize("modname,mode,pat,extra,reg", CASES)
def test_hot_loops_no_spills(modname, mode, pat, extra, reg):
    require_tier(modname)
    require_features(*FEATS.get((modname, mode), ()))
    asm = _compiled_asm({"avx512": avx512, "avx2": avx2}[modname], mode)
    loops = asmcheck.hot_loops(asm, pat)
    print("\n%s/%s:\n%s" % (modname, mode, asmcheck.summary(asm, pat)))
    assert loops, "no loop containing %s" % pat
    mr_max = {"avx512": avx512.MR, "avx2": {"f32": avx2.MR_F32, "int8": avx2.MR_I8, "bf16": avx2.MR_BF16}[mode]}[
        modname
    ]
    # the full-tile variant: MR rows x NR/W vectors per k step (LLVM may unroll it)
    nvec = (avx512.NR // 16) if modname == "avx512" else (avx2.NR // 8)
    full = mr_max * nvec
    assert any(lp["matches"] >= full and lp["matches"] % full == 0 for lp in loops)
    for lp in loops:
        assert not lp["spills"], "spill in %s: %s" % (lp["label"], lp["spills"])
        ins = lp["instructions"]
        assert asmcheck.count(ins, pat + r".*%" + reg) == lp["matches"]
        for e in extra:
            assert asmcheck.count(ins, e) > 0, e
        # only vector ops, loads, address arithmetic and the loop branch
        assert not any(i.startswith("call") for i in ins)
        if mode == "bf16" and modname == "avx2":
            assert asmcheck.count(ins, "ldmxcsr") == 0  # MXCSR set outside the loop
    if mode == "bf16" and modname == "avx2":
        assert asmcheck.count(asm.splitlines(), "ldmxcsr") >= 2
    if mode == "bf16" and modname == "avx512":  # the driver rounds its input 16 at a time
        assert asmcheck.count(asm.splitlines(), r"vcvtneps2bf16.*%zmm") > 0
    # the prefetching variants (the tile passes that stream in the next block of B) exist
    assert any(asmcheck.count(lp["instructions"], r"^prefetch") for lp in loops)
    assert any(not asmcheck.count(lp["instructions"], r"^prefetch") for lp in loops)


@pytest.mark.parametrize("mode,dot", (("int8", "tdpbusd"), ("bf16", "tdpbf16ps")))
def test_amx_hot_loop_is_tile_loads_and_tile_dots(mode, dot):
    """The AMX tier's k loop: per step one A and three B tile loads and three tdpbusd (tdpbf16ps),
    nothing spilled, no calls; the tiles are configured (ldtilecfg) and released (tilerelease) outside it."""
    require_tier("amx")
    from refimpl.engines.fast.kernels import amx, cpu

    if cpu.select(mode, "amx").module != amx.__name__:
        pytest.skip("CPU lacks amx-bf16: the amx tier runs bf16 on vdpbf16ps")
    asm = _compiled_asm(amx, mode)
    loops = asmcheck.hot_loops(asm, dot)
    print("\namx/%s:\n%s" % (mode, asmcheck.summary(asm, dot)))
    assert loops, "no loop containing " + dot
    for lp in loops:
        ins = lp["instructions"]
        steps = asmcheck.count(ins, "^" + dot)
        assert steps and steps % 3 == 0
        assert asmcheck.count(ins, r"^tileloadd") == steps // 3 * 4
        assert not lp["spills"] and not any(i.startswith("call") for i in ins)
        assert asmcheck.count(ins, r"^ldtilecfg") == 0
    lines = asm.splitlines()
    assert asmcheck.count(lines, r"ldtilecfg") >= 1 and asmcheck.count(lines, r"tilerelease") >= 1
    assert asmcheck.count(lines, r"prefetcht1") >= 1  # the next block of B, into L2


def test_epilogue_has_no_fma_contraction():
    """int8 dequantisation must be mul then add: no vfmadd in the store without GELU (GELU's own
    steps are explicit llvm.fma calls, and the store with GELU must contain them)."""
    from refimpl.engines.fast.kernels import common

    require_features("fma")  # without FMA, llvm.fma is a call to fmaf

    @numba.njit(inline="always")
    def store(T, out, bias, sx, sw, colsum, gelu):
        common.epi_i8(T, 48, 8, 48, out, 0, 0, bias, sx, sw, colsum, 128, gelu)

    @numba.njit
    def store_plain(T, out, bias, sx, sw, colsum):
        store(T, out, bias, sx, sw, colsum, False)

    @numba.njit
    def store_gelu(T, out, bias, sx, sw, colsum):
        store(T, out, bias, sx, sw, colsum, True)

    f32 = np.float32
    args = (np.zeros(8 * 48, np.int32), np.zeros((8, 48), f32), np.zeros(48, f32), np.ones(8, f32))
    args += (np.ones(48, f32), np.zeros(48, np.int32))
    asm = {}
    for name, k in (("plain", store_plain), ("gelu", store_gelu)):
        k(*args)
        asm[name] = k.inspect_asm(k.signatures[0])
    assert "vfmadd" not in asm["plain"] and "vfmsub" not in asm["plain"] and "vfnmadd" not in asm["plain"]
    assert re.search(r"vfn?madd\d+ps\s+%[yz]mm", asm["gelu"]), "the GELU store is not vectorised"


HASWELL = (
    "+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+crc32,+cx16,+cx8,+f16c,+fma,+fsgsbase,"
    "+fxsr,+invpcid,+lzcnt,+mmx,+movbe,+pclmul,+popcnt,+rdrnd,+sahf,+sse,+sse2,"
    "+sse3,+sse4.1,+sse4.2,+ssse3,+xsave,+xsaveopt"
)

_CHILD = r"""
import json, sys, numpy as np, numba
sys.path.insert(0, ROOT_)
sys.path.insert(0, TESTS_)
from refimpl.engines.fast.kernels import matmul as api, cpu, asmcheck
from tests.matmul_helpers import make_data
import tests.test_matmul_asm as test_asm
res = {"best": cpu.best_tier()}
try:
    cpu.check_tier("avx512"); res["avx512_refused"] = False
except ValueError as e:
    res["avx512_refused"] = "avx512f" in str(e)
for mode in ("f32", "int8", "bf16"):
    x, W, b = make_data(37, 200, 300, seed=3)
    y = api.linear(x, api.pack(W, mode), b, gelu=True)
    np.save(OUT_ + "/" + mode + ".npy", y)
    from refimpl.engines.fast.kernels import avx2
    asm = test_asm._compiled_asm(avx2, mode)
    pat = {"f32": "vfmadd", "int8": "vpmaddubsw", "bf16": "vfmadd"}[mode]
    lps = asmcheck.hot_loops(asm, pat)
    res[mode] = {"zmm": asm.count("%zmm"), "evex_regs": sum(asm.count("%ymm" + str(r)) for r in range(16, 32)),
                 "kregs": sum(asm.count("%k" + str(r)) for r in range(1, 8)),
                 "loops": len(lps), "spills": sum(len(lp["spills"]) for lp in lps),
                 "stack_loads": sum(len(lp["stack"]) for lp in lps),
                 "summary": asmcheck.summary(asm, pat)}
print("RESULT" + json.dumps(res))
"""


def test_avx2_only_target(tmp_path):
    """Simulated AVX2-only machine (numba target = Haswell)."""
    require_tier("avx2")
    env = dict(os.environ)
    env.update(NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES=HASWELL, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("REFIMPL_KERNELS", None)
    code = (
        "ROOT_, TESTS_, OUT_ = %r, %r, %r\n" % (ROOT, os.path.dirname(os.path.abspath(__file__)), str(tmp_path))
    ) + _CHILD
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.split("RESULT", 1)[1])
    print(json.dumps(res, indent=1))
    assert res["best"] == "avx2" and res["avx512_refused"]
    for mode in ("f32", "int8", "bf16"):
        info = res[mode]
        assert info["zmm"] == 0 and info["evex_regs"] == 0 and info["kregs"] == 0, info
        assert info["loops"] > 0 and info["spills"] == 0, info
        x, W, b = make_data(37, 200, 300, seed=3)
        host = api.linear(x, api.pack(W, mode), b, gelu=True, tier="avx2")
        hsw = np.load(tmp_path / (mode + ".npy"))
        np.testing.assert_array_equal(hsw.view(np.uint32), host.view(np.uint32))
