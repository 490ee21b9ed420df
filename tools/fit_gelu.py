"""Offline generator of the erf coefficients used in gelu.py (not imported at
run time).  Needs mpmath.  Run:  python -m fastmm.gelu_fit

Region A, |x| < 1:       erf(x) = x * PA(u),  u = 2 x^2 - 1         (t = x^2 in [0,1])
Region B, 1 <= |x| < XSAT: erf(x) = PB(v),    v = (2|x| - (1+XB)) / (XB-1), XB = 3.92
|x| >= XSAT:               erf(x) = +-1  (erf rounds to 1.0f from there on)

Coefficients: least squares at Chebyshev nodes against 40-digit mpmath erf
(close to minimax), Chebyshev -> monomial in u/v, rounded to float64, Horner
in float64 with separate multiply and add (no FMA, so NumPy can reproduce it
bit for bit).
"""

import mpmath as mp

mp.mp.dps = 40
XB = mp.mpf("3.92")  # fit interval end; switch point is XSAT below
XSAT = 3.919205904006958  # smallest float32 with erfc(x) <= 2^-25, i.e. erf(x) rounds to 1.0f
DEG_A = 8
DEG_B = 17


def _fit(f, deg, npts=400):
    # least squares in the Chebyshev basis on [-1, 1], f given on u
    nodes = [mp.cos(mp.pi * (i + mp.mpf(1) / 2) / npts) for i in range(npts)]
    V = mp.matrix(npts, deg + 1)
    y = mp.matrix(npts, 1)
    for i, u in enumerate(nodes):
        for j in range(deg + 1):
            V[i, j] = mp.chebyt(j, u)
        y[i] = f(u)
    c = mp.lu_solve(V.T * V, V.T * y)
    # chebyshev -> monomial
    mono = [mp.mpf(0)] * (deg + 1)
    for j in range(deg + 1):
        tj = mp.taylor(lambda z, j=j: mp.chebyt(j, z), 0, j)
        for p, a in enumerate(tj):
            mono[p] += c[j] * a
    return [float(m) for m in mono]  # ascending powers


def fa(u):
    t = (u + 1) / 2
    if t == 0:
        return 2 / mp.sqrt(mp.pi)
    x = mp.sqrt(t)
    return mp.erf(x) / x


def fb(v):
    x = (v * (XB - 1) + (1 + XB)) / 2
    return mp.erf(x)


def main():
    A = _fit(fa, DEG_A)
    B = _fit(fb, DEG_B)
    print("XB = %r\nXSAT = %r" % (float(XB), XSAT))
    print("PA = (%s)" % ", ".join(repr(c) for c in reversed(A)))  # highest first
    print("PB = (%s)" % ", ".join(repr(c) for c in reversed(B)))
    # quick check in float64 Horner
    import numpy as np

    def horner(c, u):
        r = np.float64(c[0])
        for a in c[1:]:
            r = r * u + a
        return r

    err_a = max(
        abs(float(mp.erf(x)) - x * horner(list(reversed(A)), 2 * x * x - 1)) / max(abs(float(mp.erf(x))), 1e-300)
        for x in np.linspace(1e-6, 1, 20001)
    )
    err_b = max(
        abs(float(mp.erf(x)) - horner(list(reversed(B)), (2 * x - (1 + float(XB))) / (float(XB) - 1)))
        for x in np.linspace(1, float(XB), 20001)
    )
    print("# float64 approx error: region A max rel %.3g, region B max abs %.3g" % (err_a, err_b))


if __name__ == "__main__":
    main()
