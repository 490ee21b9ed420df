"""refimpl.engines.fast.kernels.attention against a float64 NumPy reference, torch, today's BLAS path; determinism."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from refimpl.engines.fast.kernels import attention as A
from refimpl.engines.fast.kernels.attention import attention
from tests.baseline.packed import attention_loop

# Inputs: q, k ~ N(0, 3) so that scores have std ~3 (peaked softmax rows, like trained models),
# v ~ N(0, 1). Tolerance: float32 rounding of scores up to ~15 in magnitude (ulp ~1e-6), which the
# exp turns into relative errors of the probabilities; today's BLAS path lands at 1e-6..6e-6 on
# the same inputs (printed next to ours), torch's float32 likewise (test_not_worse_than_...).
ATOL = 1e-5


def reference(q, k, v, cu, nh, scale):
    """float64 truth: per sequence, per head, max-shifted softmax."""
    N, H = q.shape
    d = H // nh
    out = np.zeros((N, H))
    probs = []
    for b in range(len(cu) - 1):
        s, e = cu[b], cu[b + 1]
        P_all = np.zeros((nh, e - s, e - s))
        for h in range(nh):
            cols = slice(h * d, (h + 1) * d)
            Q, K, V = (x[s:e, cols].astype(np.float64) for x in (q, k, v))
            S = Q @ K.T * float(scale)
            S -= S.max(1, keepdims=True) if e > s else 0
            P = np.exp(S)
            P /= P.sum(1, keepdims=True)
            out[s:e, cols] = P @ V
            P_all[h] = P
        probs.append(P_all)
    return out, probs


def make(lengths, nh, d, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    N, H = int(cu[-1]), nh * d
    q = (rng.standard_normal((N, H)) * 3**0.5).astype(dtype)
    k = (rng.standard_normal((N, H)) * 3**0.5).astype(dtype)
    v = rng.standard_normal((N, H)).astype(dtype)
    return q, k, v, cu


def check_attention(fn, lengths, nh, d, atol=ATOL, seed=0):
    """fn(q, k, v, cu, nh, scale) -> out: max |out - float64 truth| <= atol; returns it."""
    q, k, v, cu = make(lengths, nh, d, seed)
    scale = np.float32(d**-0.5)
    ref, _ = reference(q, k, v, cu, nh, scale)
    out = fn(q, k, v, cu, nh, scale)
    err = float(np.abs(out - ref).max()) if out.size else 0.0
    blas = attention_loop(q, k, v, cu, nh, scale, np.zeros_like(q))
    blas_err = float(np.abs(blas - ref).max()) if out.size else 0.0
    print(f"L={lengths} heads={nh} d={d}: max |x - float64|: fused {err:.3g}, BLAS path {blas_err:.3g}")
    assert out.dtype == q.dtype
    assert err <= atol, f"max difference {err:.3g} > {atol:g}"
    return err


@pytest.mark.parametrize("L", [1, 2, 3, 17, 64, 129, 512])
@pytest.mark.parametrize("nh,d", [(12, 64), (2, 8), (1, 64), (2, 64), (12, 8), (3, 12)])
def test_against_float64_reference(L, nh, d):
    if L == 512 and (nh, d) in ((12, 8), (3, 12)):
        pytest.skip("covered by the other 512 cases")
    check_attention(lambda *a: attention(*a), [L], nh, d)


def test_packed_batch_with_ragged_lengths_and_empty_sequences():
    lengths = [3, 0, 17, 1, 64, 0, 129, 2, 40]
    for parallel in (False, True):
        check_attention(lambda *a, parallel=parallel: attention(*a, parallel=parallel), lengths, 12, 64)


def test_not_worse_than_blas_path_or_torch():
    torch = pytest.importorskip("torch")
    lengths = [17, 64, 129, 300]
    q, k, v, cu = make(lengths, 12, 64, seed=3)
    scale = np.float32(0.125)
    ref, _ = reference(q, k, v, cu, 12, scale)
    ours = np.abs(attention(q, k, v, cu, 12, scale) - ref).max()
    blas = np.abs(attention_loop(q, k, v, cu, 12, scale, np.empty_like(q)) - ref).max()
    t = []
    for b in range(len(lengths)):
        s, e = cu[b], cu[b + 1]
        Q, K, V = (torch.from_numpy(x[s:e]).reshape(e - s, 12, 64).transpose(0, 1) for x in (q, k, v))
        o = torch.softmax(Q @ K.transpose(1, 2) * float(scale), -1) @ V
        t.append(np.abs(o.transpose(0, 1).reshape(e - s, 768).numpy() - ref[s:e]).max())
    print(f"max |x - float64|: fused {ours:.3g}, BLAS path {blas:.3g}, torch float32 {max(t):.3g}")
    assert ours <= 1.5 * max(blas, max(t))


def test_probabilities():
    lengths = [1, 5, 17, 129]
    q, k, v, cu = make(lengths, 12, 64, seed=1)
    scale = np.float32(0.125)
    ref, ref_p = reference(q, k, v, cu, 12, scale)
    out0 = attention(q, k, v, cu, 12, scale)
    out, probs = attention(q, k, v, cu, 12, scale, probabilities=True)
    assert np.array_equal(out, out0), "asking for probabilities must not change the output"
    assert [p.shape for p in probs] == [(12, L, L) for L in lengths]
    for p, rp in zip(probs, ref_p):
        err = np.abs(p - rp).max()
        print(f"probabilities L={p.shape[1]}: max diff {err:.3g}")
        assert err < 2e-6
        assert np.abs(p.sum(-1) - 1).max() < 1e-5


def test_float64():
    q, k, v, cu = make([1, 17, 70], 12, 64, seed=2, dtype=np.float64)
    ref, _ = reference(q, k, v, cu, 12, 0.125)
    out = attention(q, k, v, cu, 12, 0.125)
    assert out.dtype == np.float64
    assert np.abs(out - ref).max() < 1e-12


def _threads(n):
    old = numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    return old


def test_bit_identical_across_batch_threads_and_drivers():
    """A sequence's output depends only on that sequence: not on its neighbours in the pack, its
    position, the thread count, serial vs parallel driver, or whether probabilities are kept."""
    target = [129]
    q1, k1, v1, cu1 = make(target, 12, 64, seed=7)
    alone = attention(q1, k1, v1, cu1, 12, np.float32(0.125), parallel=False)
    rng = np.random.default_rng(8)
    for trial in range(3):
        others = rng.integers(1, 300, size=rng.integers(1, 6)).tolist()
        pos = rng.integers(0, len(others) + 1)
        lengths = others[:pos] + target + others[pos:]
        q, k, v, cu = make(lengths, 12, 64, seed=100 + trial)
        s = int(cu[pos])
        for x, x1 in ((q, q1), (k, k1), (v, v1)):
            x[s : s + 129] = x1
        for threads in (1, 2):
            old = _threads(threads)
            try:
                for parallel in (False, True):
                    out = attention(q, k, v, cu, 12, np.float32(0.125), parallel=parallel)
                    assert np.array_equal(out[s : s + 129], alone), (trial, threads, parallel)
                    out, _ = attention(q, k, v, cu, 12, np.float32(0.125), parallel=parallel, probabilities=True)
                    assert np.array_equal(out[s : s + 129], alone), (trial, threads, parallel, "probabilities")
            finally:
                numba.set_num_threads(old)


def test_tile_shapes_do_not_change_results():
    """The wide (4-row, zmm) and narrow (2-row, ymm) tilings give the same bits (run both here:
    the narrow one is what an AVX2 host runs)."""
    q, k, v, cu = make([1, 3, 17, 64, 129, 200], 12, 64, seed=9)
    outs = []
    for wide in (False, True):
        out = np.empty_like(q)
        H = q.shape[1]
        flat = (q.reshape(-1), k.reshape(-1), v.reshape(-1))
        A._serial(
            *flat,
            H,
            0,
            0,
            0,
            cu,
            12,
            np.float32(0.125),
            out,
            wide,
            np.empty(0, np.float32),
            np.zeros(1, np.int64),
            False,
        )
        outs.append(out)
    assert np.array_equal(outs[0], outs[1])


@pytest.mark.parametrize("parallel", [False, True])
def test_q_k_v_side_by_side_give_the_same_bits(parallel):
    """attention_qkv reads Q, K and V from one [N, 3H] array (one product with the three weights
    stacked): the same results, probabilities included, as attention on the three parts."""
    from refimpl.engines.fast.kernels.attention import attention_qkv

    q, k, v, cu = make([1, 3, 17, 64, 129, 200], 12, 64, seed=4)
    qkv = np.ascontiguousarray(np.concatenate([q, k, v], axis=1))
    expected, expected_p = attention(q, k, v, cu, 12, np.float32(0.125), parallel=parallel, probabilities=True)
    out, p = attention_qkv(qkv, cu, 12, np.float32(0.125), parallel=parallel, probabilities=True)
    assert np.array_equal(out, expected) and all(np.array_equal(a, b) for a, b in zip(p, expected_p))
    assert np.array_equal(attention_qkv(qkv, cu, 12, 0.125, parallel=parallel), expected)
    swapped = np.ascontiguousarray(np.concatenate([k, q, v], axis=1))  # the layout is read, not assumed
    assert not np.array_equal(attention_qkv(swapped, cu, 12, 0.125, parallel=parallel), expected)
    with pytest.raises(ValueError, match=r"qkv must be \[N, 3H\]"):
        attention_qkv(qkv[:, :-1], cu, 12, 0.125)


# ---- the checker catches wrong implementations -------------------------------------------------


def _no_max_shift(q, k, v, cu, nh, scale):  # overflow-prone softmax (inf/nan on peaked rows)
    out = np.empty_like(q)
    d = q.shape[1] // nh
    with np.errstate(all="ignore"):
        for b in range(len(cu) - 1):
            s, e = cu[b], cu[b + 1]
            for h in range(nh):
                c = slice(h * d, (h + 1) * d)
                S = np.exp((q[s:e, c] @ k[s:e, c].T) * scale * np.float32(12))  # also too sharp
                out[s:e, c] = (S / S.sum(1, keepdims=True)) @ v[s:e, c]
    return out


def _heads_swapped(q, k, v, cu, nh, scale):
    out = attention(q, k, v, cu, nh, scale)
    d = q.shape[1] // nh
    if nh > 1:
        out[:, :d], out[:, d : 2 * d] = out[:, d : 2 * d].copy(), out[:, :d].copy()
    return out


def _across_sequences(q, k, v, cu, nh, scale):  # attends over the whole pack (ignores cu_seqlens)
    return attention(q, k, v, np.array([0, q.shape[0]], np.int64), nh, scale)


def _bf16_like(q, k, v, cu, nh, scale):  # right algorithm, too little precision
    out = attention(q, k, v, cu, nh, scale)
    return (out.view(np.int32) & np.int32(-65536)).view(np.float32)


@pytest.mark.parametrize("wrong", [_no_max_shift, _heads_swapped, _across_sequences, _bf16_like])
def test_checker_catches_wrong_implementation(wrong):
    with pytest.raises(AssertionError):
        check_attention(wrong, [17, 64, 3], 12, 64)


def test_rejects_bad_arguments():
    q, k, v, cu = make([4, 5], 2, 8)
    with pytest.raises(ValueError):
        attention(q, k, v, np.array([0, 4, 8]), 2, 0.3)  # does not end at N
    with pytest.raises(ValueError):
        attention(q, k, v, np.array([0, 6, 4, 9]), 2, 0.3)  # decreasing
    with pytest.raises(ValueError):
        attention(q, k, v, cu, 3, 0.3)  # 16 columns, 3 heads
    with pytest.raises(ValueError):
        attention(np.asfortranarray(q), k, v, cu, 2, 0.3)
    for bad in ([1, 4, 9], [], [[0, 4, 9]], np.array([0, 4, 9], np.int32)[:0]):  # not from 0, empty, 2-D
        with pytest.raises(ValueError, match="cu_seqlens must be"):
            attention(q, k, v, bad, 2, 0.3)
    np.testing.assert_array_equal(attention(q, k, v, [0, 4, 9], 2, 0.3), attention(q, k, v, cu, 2, 0.3))  # a list


def test_policy_picks_the_driver(monkeypatch):
    from refimpl.engines.fast.kernels import policy

    q, k, v, cu = make([129] * 4, 12, 64)
    calls = []
    real_serial, real_parallel = A._serial, A._parallel
    monkeypatch.setattr(A, "_serial", lambda *a: (calls.append("serial"), real_serial(*a)))
    monkeypatch.setattr(A, "_parallel", lambda *a: (calls.append("parallel"), real_parallel(*a)))
    for auto, want in ((False, "serial"), (True, "parallel" if numba.get_num_threads() > 1 else "serial")):
        monkeypatch.setattr(policy, "AUTO_PARALLEL", auto)
        attention(q, k, v, cu, 12, 0.125)
        assert calls[-1] == want
    monkeypatch.setattr(policy, "AUTO_PARALLEL", True)
    q1, k1, v1, cu1 = make([17], 12, 64)
    attention(q1, k1, v1, cu1, 12, 0.125)  # below SERIAL_BELOW
    assert calls[-1] == "serial"
    monkeypatch.setattr(policy, "AUTO_PARALLEL", None)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(numba.config, "THREADING_LAYER", "default")
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    attention(q, k, v, cu, 12, 0.125)
    assert calls[-1] == "serial", "default GNU-OpenMP layer spins: no automatic parallel region"
    monkeypatch.setenv("GOMP_SPINCOUNT", "300000")
    attention(q, k, v, cu, 12, 0.125)
    assert calls[-1] == "serial", "a long spin count is as bad as the default"
    monkeypatch.setenv("GOMP_SPINCOUNT", "1000")  # the fewest threads.ensure_configured sets
    attention(q, k, v, cu, 12, 0.125)
    assert calls[-1] == ("parallel" if numba.get_num_threads() > 1 else "serial"), "short spins: parallel"


def test_no_short_spin_parallelism_beside_blas_products(monkeypatch):
    """With the products on OpenBLAS (its threads spin after each product), GNU OpenMP's short spins do
    not make attention's parallel driver safe: the encoder marks such passes (policy.products_on_blas)."""
    from refimpl.engines.fast import encoder
    from refimpl.engines.fast.kernels import policy

    monkeypatch.setattr(policy, "AUTO_PARALLEL", None)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(numba.config, "THREADING_LAYER", "omp")
    monkeypatch.setenv("GOMP_SPINCOUNT", "1000")
    if numba.get_num_threads() < 2:
        pytest.skip("one thread: nothing to run in parallel")
    assert policy.use_parallel(1e9, 1.0)
    with policy.products_on_blas():
        assert not policy.use_parallel(1e9, 1.0)
    assert policy.use_parallel(1e9, 1.0)
    assert encoder._products_on_blas(None) and encoder._products_on_blas([{}])


def test_a_forward_pass_reads_the_environment_once(monkeypatch):
    """policy.forward_pass snapshots the variables the kernels' choices read: inside a pass a change is
    not seen (it would be read ~300 times per pass otherwise), after it, it is; the BLAS mark holds."""
    from refimpl.engines.fast.kernels import cpu, policy

    monkeypatch.setattr(policy, "AUTO_PARALLEL", None)
    monkeypatch.setattr(policy, "LOAD_ADAPTATION", "off")  # a busy machine would take a thread (test_load_adaptation)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(numba.config, "THREADING_LAYER", "omp")
    monkeypatch.setenv("GOMP_SPINCOUNT", "1000")
    monkeypatch.setenv(cpu.ENV_VAR, "avx2")
    if numba.get_num_threads() < 2:
        pytest.skip("one thread: nothing to run in parallel")
    with policy.forward_pass():
        monkeypatch.setenv("GOMP_SPINCOUNT", "300000")
        monkeypatch.setenv(cpu.ENV_VAR, "blas")
        assert policy.use_parallel(1e9, 1.0) and policy.getenv(cpu.ENV_VAR) == "avx2"
        with policy.forward_pass():  # a nested pass takes its own snapshot, and gives the outer one back
            assert not policy.use_parallel(1e9, 1.0) and policy.getenv(cpu.ENV_VAR) == "blas"
        assert policy.use_parallel(1e9, 1.0) and policy.getenv("GOMP_SPINCOUNT") == "1000"
    assert not policy.use_parallel(1e9, 1.0) and policy.getenv(cpu.ENV_VAR) == "blas"
    monkeypatch.setenv("GOMP_SPINCOUNT", "1000")
    with policy.forward_pass(on_blas=True):
        assert not policy.use_parallel(1e9, 1.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_key_transpose_against_numpy(dtype):
    """tiles.transpose8, the 8 x 8 blocks of K_h^T: rows past ``rows`` are zeros and not read (the
    block may end at the array's end), every other element lands transposed; a wrong network fails."""
    from refimpl.engines.fast.kernels.tiles import transpose8

    @numba.njit
    def run(a, a_off, lda, rows, out, d_off, ldd):
        transpose8(a, a_off, lda, rows, out, d_off, ldd)

    a = np.random.default_rng(0).standard_normal(7 + 7 * 30 + 8).astype(dtype)  # row 7 ends at the end
    for rows in range(10):
        out = np.full(8 * 16 + 3, np.nan, dtype)
        run(a, 7, 30, rows, out, 3, 16)
        block = np.zeros((8, 8), dtype)
        for r in range(min(rows, 8)):
            block[r] = a[7 + r * 30 : 7 + r * 30 + 8]
        written = np.stack([out[3 + c * 16 : 3 + c * 16 + 8] for c in range(8)])
        assert np.array_equal(written, block.T), f"rows {rows}"
        assert not np.array_equal(written, block) or rows == 0  # a plain copy would not pass
    out = np.zeros(64, dtype)
    run(a[-8:].copy(), 0, 10**9, 1, out, 0, 8)  # rows 1-7 would lie far outside: never touched
    assert np.array_equal(out.reshape(8, 8)[:, 0], a[-8:]) and not out.reshape(8, 8)[:, 1:].any()
