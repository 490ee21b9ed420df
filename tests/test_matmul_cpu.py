import os
import subprocess
import sys

import pytest

from refimpl.engines.fast.kernels import cpu
from tests.matmul_helpers import ROOT

AVX2_ONLY = frozenset({"avx", "avx2", "fma", "sse4.2"})
NONE = frozenset({"sse2"})


def test_host_features_nonempty():
    f = cpu.host_features()
    assert isinstance(f, frozenset)
    print(sorted(x for x in f if x.startswith(("avx", "fma"))))


def test_best_tier_from_feature_sets():
    full = AVX2_ONLY | {"avx512f", "avx512bw", "avx512vl"}
    assert cpu.best_tier(full) == "avx512"
    assert cpu.best_tier(AVX2_ONLY) == "avx2"
    assert cpu.best_tier(NONE) == "blas"
    assert cpu.best_tier(AVX2_ONLY | {"avx512f"}) == "avx2"  # no bw/vl


def test_forcing_missing_tier_names_feature():
    with pytest.raises(ValueError, match="avx512f"):
        cpu.check_tier("avx512", AVX2_ONLY)
    with pytest.raises(ValueError, match="avx2"):
        cpu.check_tier("avx2", NONE)
    with pytest.raises(ValueError, match="unknown kernel tier"):
        cpu.check_tier("sse9", AVX2_ONLY)
    assert cpu.check_tier("blas", NONE) == "blas"


def test_select_descriptor_and_fallbacks():
    full = AVX2_ONLY | {"avx512f", "avx512bw", "avx512vl"}
    c = cpu.select("int8", "avx512", full)  # no VNNI -> AVX2 algorithm
    assert c.tier == "avx512" and c.module.endswith(".avx2")
    c = cpu.select("bf16", "avx512", full)  # no BF16 -> emulation
    assert c.module.endswith(".avx2") and "emulation" in c.algorithm
    c = cpu.select("int8", "avx512", full | {"avx512vnni"})
    assert c.module.endswith(".avx512") and "avx512vnni" in c.features_used
    c = cpu.select("bf16", "avx512", full | {"avx512bf16"})
    assert c.module.endswith(".avx512") and "avx512bf16" in c.features_used
    c = cpu.select("f32", "blas", NONE)
    assert c.module.endswith(".blas")
    with pytest.raises(ValueError):
        cpu.select("f16", "blas", NONE)


def test_amx_tier_needs_the_features_and_linux_permission(monkeypatch):
    """amx is usable only with amx-tile and amx-int8 *and* the tile state granted: without the grant
    an AMX instruction kills the process, so a refused grant is a missing feature, named, and the
    best tier is then avx512. bf16 runs on the tiles only with amx-bf16."""
    amx = AVX2_ONLY | {"avx512f", "avx512bw", "avx512vl", "avx512vnni", "avx512bf16", "amx-tile", "amx-int8"}
    monkeypatch.setattr(cpu, "_AMX_PERMITTED", True)
    assert cpu.check_tier("amx", amx) == "amx" and cpu.best_tier(amx) == "amx"
    c = cpu.select("int8", "amx", amx)
    assert c.tier == "amx" and c.module.endswith(".amx") and "amx-int8" in c.features_used
    for mode, algorithm in (("f32", "fma f32 zmm"), ("bf16", "vdpbf16ps")):  # the avx512 tier's kernels
        c = cpu.select(mode, "amx", amx)
        assert c.tier == "amx" and c.module.endswith(".avx512") and c.algorithm == algorithm
    c = cpu.select("bf16", "amx", amx | {"amx-bf16"})
    assert c.module.endswith(".amx") and c.algorithm == "tdpbf16ps tiles" and "amx-bf16" in c.features_used
    monkeypatch.setattr(cpu, "_AMX_PERMITTED", False)
    assert cpu.best_tier(amx) == "avx512"
    with pytest.raises(ValueError, match="arch_prctl ARCH_REQ_XCOMP_PERM"):
        cpu.check_tier("amx", amx)
    with pytest.raises(ValueError, match="amx-int8"):
        cpu.check_tier("amx", amx - {"amx-int8"})


def test_describe():
    s = cpu.describe()
    print(s)
    assert "tier:" in s and "f32" in s and "int8" in s and "bf16" in s


REFUSAL = (
    "from refimpl.engines.fast.kernels import cpu\ntry:\n cpu.select('f32')\nexcept ValueError as e:\n print('ERR', e)"
)


def _run(env_extra, code):
    env = dict(os.environ)
    env.update(env_extra)
    env["PYTHONPATH"] = ROOT
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_env_var_forces_lower_tier():
    r = _run(
        {"REFIMPL_KERNELS": "blas"},
        "from refimpl.engines.fast.kernels import cpu; print(cpu.requested_tier(), cpu.select('f32').tier)",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["blas", "blas"]


def test_env_var_missing_tier_raises():
    # pretend numba targets an AVX2-only CPU: forcing avx512 must be refused
    r = _run(
        {"REFIMPL_KERNELS": "avx512", "NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": "+avx,+avx2,+fma,+sse4.2"},
        REFUSAL,
    )
    assert r.returncode == 0, r.stderr
    assert "ERR" in r.stdout and "avx512f" in r.stdout, r.stdout


def test_env_var_amx_without_amx_raises():
    """Forcing the amx tier where numba's target has no AMX is refused, naming the feature (never a SIGILL)."""
    feats = "+avx,+avx2,+fma,+sse4.2,+avx512f,+avx512bw,+avx512vl,+avx512vnni"
    r = _run({"REFIMPL_KERNELS": "amx", "NUMBA_CPU_NAME": "skylake-avx512", "NUMBA_CPU_FEATURES": feats}, REFUSAL)
    assert r.returncode == 0, r.stderr
    assert "ERR" in r.stdout and "amx-tile" in r.stdout, r.stdout
