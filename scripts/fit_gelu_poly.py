"""Regenerates the polynomial of csrc/cuda/gelu_math.h (not run by CI; needs numpy and scipy).

P(t) ~ log2(2 Phi(-t)) on [0, T] (Phi the standard normal CDF), degree N,
P(0) = 0: a minimax fit of the error relative to max(|log2(2 Phi(-t))|,
1e-3) (iteratively reweighted least squares on Chebyshev nodes), the
coefficients rounded to float32 one at a time from the highest, each time
refitting the lower ones.  Prints them as C hex-float literals, highest
first (Horner order), and the float32-evaluated maximum error.

    python scripts/fit_gelu_poly.py            # T = 5.6, N = 10: the header's coefficients
"""
from __future__ import annotations

import argparse

import numpy as np
from scipy.special import log_ndtr


def target(t):
    return log_ndtr(-t) / np.log(2.0) + 1.0


def _fit_rest(n, T, fixed_hi):
    m = n - len(fixed_hi)
    x = np.cos(np.pi * (np.arange(8000) + 0.5) / 8000) * T / 2 + T / 2
    y = target(x) - sum(fc * x ** (n - i) for i, fc in enumerate(fixed_hi))
    scale = 1.0 / np.maximum(np.abs(target(x)), 1e-3)
    V = np.vander(x / T, m + 1, increasing=True)[:, 1:]  # P(0) = 0: no constant term
    w = scale.copy()
    for _ in range(80):
        cs, *_ = np.linalg.lstsq(V * w[:, None], y * w, rcond=None)
        r = (V @ cs - y) * scale
        w = w * (1 + 2 * np.abs(r) / np.abs(r).max())
        w /= w.max()
    return cs / T ** np.arange(1, m + 1)


def fit(n=10, T=5.6):
    """float32 coefficients c1..cn (c0 = 0), lowest first."""
    fixed = []
    for _ in range(n):
        fixed.append(float(np.float32(_fit_rest(n, T, fixed)[-1])))
    return [np.float32(c) for c in reversed(fixed)]


def horner32(c, t):
    r = np.full(t.shape, c[-1], dtype=np.float32)
    for ck in list(reversed(c))[1:]:
        r = (r.astype(np.float64) * t + np.float64(ck)).astype(np.float32)  # fmaf (exact product in float64)
    return (r * t).astype(np.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--range", type=float, default=5.6)
    ap.add_argument("--degree", type=int, default=10)
    a = ap.parse_args()
    c = fit(a.degree, a.range)
    for k in reversed(range(len(c))):
        print(f"c{k + 1} = {float(c[k]).hex().replace('0000000p', 'p')}f  // {float(c[k]):.9g}")
    t = np.linspace(0, a.range, 400001).astype(np.float32)
    err = np.abs(horner32(c, t).astype(np.float64) - target(t.astype(np.float64)))
    print(f"max |P - log2(2 Phi(-t))| on [0, {a.range}] in float32: {err.max():.3g}")


if __name__ == "__main__":
    main()
