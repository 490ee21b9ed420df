"""Fit the approximations the float32 kernels use instead of libm's scalar calls.

1. GELU's erf:  erf(x) ~= x * P(x^2) / Q(x^2)   for |x| <= CLAMP, and sign(x) beyond
2. softmax's exp:  exp(x) = 2^n * e^r with n = round(x log2 e) and r = x - n ln 2 in
   [-ln2/2, ln2/2] (ln 2 split in two constants so the reduction is exact in float32);
   e^r ~= polynomial of degree EXP_DEGREE; 2^n is added to the float's exponent bits.

exact `math.erf` is a scalar libm call that numba cannot vectorize without
SVML; a rational function of x^2 is a handful of fused multiply-adds and one
division, which LLVM vectorizes. The coefficients come from Loeb's linearised
least squares followed by Lawson reweighting towards the minimax fit, all in
float64, and the script prints the error of the fit in float64 and evaluated
in float32 the way the kernel evaluates it.

    python -m tools.fit_approximations     # prints coefficients to paste into refimpl/kernels.py
"""

from __future__ import annotations

import math

import numpy as np

CLAMP = 4.0  # erf(4) = 1 - 1.5e-8, which is 1.0 in float32
P_DEGREE = 5  # numerator degree in t = x^2
Q_DEGREE = 5


def fit(p_degree=P_DEGREE, q_degree=Q_DEGREE, iterations=60):
    x = np.cos(np.linspace(0, np.pi, 20001)) * 0.5 * CLAMP + 0.5 * CLAMP  # Chebyshev-spaced on [0, CLAMP]
    x = np.unique(np.concatenate([x, np.linspace(0, CLAMP, 20001)]))
    t = x * x
    f = np.array([math.erf(v) for v in x])
    P_basis = np.stack([x * t**k for k in range(p_degree + 1)], axis=1)
    Q_basis = np.stack([t**k for k in range(1, q_degree + 1)], axis=1)  # Q = 1 + sum q_k t^k
    weights = np.ones_like(x)
    q_values = np.ones_like(x)
    for _ in range(iterations):
        # minimise sum w (x P(t) - f (1 + sum q_k t^k))^2 / Q_prev^2   (Loeb), then reweight (Lawson)
        A = np.concatenate([P_basis, -f[:, None] * Q_basis], axis=1)
        scale = np.sqrt(weights) / np.abs(q_values)
        coef, *_ = np.linalg.lstsq(A * scale[:, None], f * scale, rcond=None)
        p, q = coef[: p_degree + 1], coef[p_degree + 1 :]
        q_values = 1 + Q_basis @ q
        error = np.abs(P_basis @ p / q_values - f)
        weights = weights * (error + 1e-300)
        weights /= weights.sum()
    return p, np.concatenate([[1.0], q])


def evaluate(x, p, q, dtype):
    x = np.asarray(x, dtype)
    t = np.clip(x, -CLAMP, CLAMP).astype(dtype) ** 2
    num = np.zeros_like(t)
    for c in p[::-1]:
        num = num * t + dtype(c)
    den = np.zeros_like(t)
    for c in q[::-1]:
        den = den * t + dtype(c)
    return np.where(np.abs(x) > CLAMP, np.sign(x), np.clip(x, -CLAMP, CLAMP) * num / den).astype(dtype)


EXP_DEGREE = 6
LN2_HI = 0.693359375  # ln 2 = LN2_HI + LN2_LO; LN2_HI has few bits, so n * LN2_HI is exact
LN2_LO = -2.12194440e-4


def fit_exp(degree=EXP_DEGREE, iterations=60):
    """Minimax-like polynomial for e^r on [-ln2/2, ln2/2], by Lawson-reweighted relative least squares."""
    half = np.log(2) / 2
    r = np.unique(np.concatenate([half * np.cos(np.linspace(0, np.pi, 20001)), np.linspace(-half, half, 20001)]))
    target = np.exp(r)
    basis = np.stack([r**k for k in range(degree + 1)], axis=1)
    weights = np.ones_like(r)
    for _ in range(iterations):
        scale = np.sqrt(weights) / target  # relative error
        coef, *_ = np.linalg.lstsq(basis * scale[:, None], target * scale, rcond=None)
        error = np.abs(basis @ coef / target - 1)
        weights = weights * (error + 1e-300)
        weights /= weights.sum()
    return coef


def exp_float32(x, coef):
    """The kernel's float32 exp, in NumPy: reduce, polynomial, then 2^n into the exponent bits."""
    f32 = np.float32
    x = np.maximum(np.asarray(x, f32), f32(-87.0))
    n = np.floor(x * f32(1.4426950408889634) + f32(0.5))
    r = (x - n * f32(LN2_HI)) - n * f32(LN2_LO)
    p = np.zeros_like(r)
    for c in coef[::-1]:
        p = p * r + f32(c)
    return (p.view(np.int32) + (n.astype(np.int32) << 23)).view(np.float32)


def main():
    coef = fit_exp()
    x = np.linspace(-87, 0, 1_000_001, dtype=np.float32)
    relative = np.abs(exp_float32(x, coef).astype(np.float64) / np.exp(x.astype(np.float64)) - 1)
    print(f"max relative exp error on [-87, 0], float32 evaluation: {relative.max():.2e}")
    print("EXP_P = (" + ", ".join(f"{c:.17e}" for c in coef) + ")")
    p, q = fit()
    grid = np.linspace(-6, 6, 2_000_001)
    exact = np.array([math.erf(v) for v in grid[::10]])
    err64 = np.abs(evaluate(grid[::10], p, q, np.float64) - exact).max()
    err32 = np.abs(evaluate(grid[::10], p, q, np.float32).astype(np.float64) - exact).max()
    print(f"max |erf error|: float64 evaluation {err64:.2e}, float32 evaluation {err32:.2e}")
    print("ERF_P = (" + ", ".join(f"{c:.17e}" for c in p) + ")")
    print("ERF_Q = (" + ", ".join(f"{c:.17e}" for c in q) + ")")


if __name__ == "__main__":
    main()
