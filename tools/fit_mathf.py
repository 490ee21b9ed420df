"""Fit the polynomial coefficients of refimpl/engines/fast/kernels/mathf.py (minimax by linear programming).

    python tools/fit_mathf.py          # prints float32 coefficient sets and their fit error

Each fit minimises the maximum weighted error on a dense grid (scipy's HiGHS LP), the targets
computed with mpmath at 40 digits; the coefficients are then rounded to float32 one at a time
(highest degree first), refitting the remaining ones after each rounding so that the rounding
errors are absorbed. The final float32 error is measured by tests/test_mathf.py and
tools/ulp_sweep.py, not here (this script reports the float64 fit error only).
"""

from __future__ import annotations

import sys

import mpmath as mp
import numpy as np
from scipy.optimize import linprog

mp.mp.dps = 40


def minimax(basis, target, weight, fixed=None):
    """minimax_once, with the weights rescaled so that the optimum is ~1 (HiGHS's tolerances
    are ~1e-7 absolute, coarser than the 1e-8..1e-10 errors sought)."""
    coef, err = minimax_once(basis, target, weight, fixed)
    for _ in range(2):
        scale = 1.0 / max(err, 1e-14)
        coef2, err2 = minimax_once(basis, target, weight * scale, fixed)
        if coef2 is None:
            break
        coef, err = coef2, err2 / scale
    return coef, err


def minimax_once(basis, target, weight, fixed=None):
    """min_c max_i |weight_i * (basis_i . c - target_i)|; ``fixed``: {index: value}."""
    fixed = fixed or {}
    free = [k for k in range(basis.shape[1]) if k not in fixed]
    rhs = target - (basis[:, list(fixed)] @ np.array(list(fixed.values())) if fixed else 0.0)
    A = basis[:, free] * weight[:, None]
    b = rhs * weight
    n = len(free)
    # variables [c_free..., z]; A c - z <= b ; -A c - z <= -b
    ones = np.ones((A.shape[0], 1))
    A_ub = np.block([[A, -ones], [-A, -ones]])
    b_ub = np.concatenate([b, -b])
    cost = np.zeros(n + 1)
    cost[-1] = 1
    res = linprog(cost, A_ub=A_ub, b_ub=b_ub, bounds=[(None, None)] * n + [(0, None)], method="highs")
    if res.x is None:
        return None, None
    coef = np.zeros(basis.shape[1])
    coef[free] = res.x[:n]
    for k, v in fixed.items():
        coef[k] = v
    return coef, res.x[-1]


def fit_rounded(basis, target, weight, fixed=None):
    fixed = dict(fixed or {})
    order = [k for k in range(basis.shape[1])[::-1] if k not in fixed]
    for k in order:
        coef, _ = minimax(basis, target, weight, fixed)
        fixed[k] = float(np.float32(coef[k]))
    coef, err = minimax(basis, target, weight, fixed)
    return np.float32(coef), float(np.max(np.abs(weight * (basis @ np.float64(np.float32(coef)) - target))))


def fmt(name, coef):
    return f"{name} = (" + ", ".join(f"{float(c):.9e}" for c in coef) + ")"


def fit_exp(degree=6, half_width=0.3466 * 1.002):
    # exp(r) = 1 + r + r^2 P(r), P of degree (degree - 2); relative error of exp(r)
    r = np.cos(np.linspace(0, np.pi, 4001)) * half_width
    r = r[np.abs(r) > 1e-6]
    target = np.array([float((mp.exp(mp.mpf(x)) - 1 - mp.mpf(x)) / mp.mpf(x) ** 2) for x in r])
    weight = np.array([float(mp.mpf(x) ** 2 / mp.exp(mp.mpf(x))) for x in r])
    basis = np.stack([r**k for k in range(degree - 1)], axis=1)
    return fit_rounded(basis, target, weight, fixed={0: 0.5})


def fit_erf_small(degree, c):
    # erf(x) = x + x R(x^2); relative error of erf
    x = np.cos(np.linspace(0, np.pi, 4001)) * c / 2 + c / 2
    x = x[x > 1e-5]
    erf = np.array([float(mp.erf(mp.mpf(v))) for v in x])
    target = np.array([float(mp.erf(mp.mpf(v)) / mp.mpf(v) - 1) for v in x])
    weight = x / erf
    basis = np.stack([(x * x) ** k for k in range(degree + 1)], axis=1)
    return fit_rounded(basis, target, weight)


def fit_log_erfc(degree, lo, hi, center):
    # erfc(t) = exp(Q(t - center)), Q = log erfc; error of Q = relative error of erfc; weighted
    # by 1/|Q| since the float32 evaluation of Q cannot do better than ulp(Q)
    t = np.cos(np.linspace(0, np.pi, 4001)) * (hi - lo) / 2 + (hi + lo) / 2
    target = np.array([float(mp.log(mp.erfc(mp.mpf(v)))) for v in t])
    weight = 1 / np.abs(target)  # error in units of |Q|: what float32 evaluation of Q can reach
    z = t - center
    basis = np.stack([z**k for k in range(degree + 1)], axis=1)
    return fit_rounded(basis, target, weight)


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    if what in ("exp", "all"):
        for deg in (5, 6, 7):
            c, e = fit_exp(deg)
            print(f"exp degree {deg}: max rel err {e:.3g}\n  " + fmt("EXP_P", c))
    if what in ("erf", "all"):
        for c_ in (0.875, 1.0, 1.125):
            for deg in (5, 6, 7):
                c, e = fit_erf_small(deg, c_)
                print(f"erf small |x|<={c_} degree {deg} in x^2: max rel err {e:.3g}\n  " + fmt("ERF_R", c))
    if what in ("erfc", "all"):
        for lo in (0.875, 1.0):
            for hi in (4.0, 6.0):
                for deg in (7, 8, 9, 10, 11):
                    for center in (0.0, {4.0: 2.5, 6.0: 3.5}[hi]):
                        c, e = fit_log_erfc(deg, lo, hi, center)
                        print(
                            f"log erfc(t) on [{lo}, {hi}] degree {deg} in t - {center}: max err/|Q| {e:.3g}\n  "
                            + fmt("ERFC_Q", c)
                        )
