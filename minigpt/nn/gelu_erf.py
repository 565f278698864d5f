"""GELU, exact (`activation = "gelu"`): gelu(x) = x * Phi(x), Phi the standard normal CDF.

Forward:

    Phi(x) = 0.5 (1 + erf(x / sqrt(2))),      gelu(x) = x Phi(x)

Backward, the product rule, with Phi' = phi the normal density:

    gelu'(x) = Phi(x) + x phi(x),             phi(x) = exp(-x^2 / 2) / sqrt(2 pi)

NumPy has no erf (and scipy is not a dependency), so `erf` below evaluates
Cephes' rational approximations (S. L. Moshier's ndtr.c, public domain; the ones
scipy compiles), relative error about 1e-16 in float64:

    |x| < 1:   erf(x)  = x T(x^2) / U(x^2)
    |x| >= 1:  erfc(|x|) = exp(-x^2) P(|x|) / Q(|x|),   erf(x) = sign(x) (1 - erfc(|x|))

(Cephes switches to a third pair R/S beyond |x| = 8, where erfc < 1e-28 and
erf is 1 to float64 precision; |x| is clipped at 8 instead, which gives the same
erf.) tests/test_variants.py compares it with math.erf. The cache keeps Phi(x)
beside x, so that the backward does not evaluate erf again. The same xp code
runs on NumPy and CuPy (minigpt/fast/gelu_erf.py: the same in place).
"""

import math

from minigpt.backend import array_module

SQRT_HALF = math.sqrt(0.5)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

# highest power first; U, Q have an implicit leading 1
_T = (9.60497373987051638749E0, 9.00260197203842689217E1, 2.23200534594684319226E3,
      7.00332514112805075473E3, 5.55923013010394962768E4)
_U = (1.0, 3.35617141647503099647E1, 5.21357949780152679795E2, 4.59432382970980127987E3,
      2.26290000613890934246E4, 4.92673942608635921086E4)
_P = (2.46196981473530512524E-10, 5.64189564831068821977E-1, 7.46321056442269912687E0,
      4.86371970985681366614E1, 1.96520832956077098242E2, 5.26445194995477358631E2,
      9.34528527171957607540E2, 1.02755188689515710272E3, 5.57535335369399327526E2)
_Q = (1.0, 1.32281951154744992508E1, 8.67072140885989742329E1, 3.54937778887819891062E2,
      9.75708501743205489753E2, 1.82390916687909736289E3, 2.24633760818710981792E3,
      1.65666309194161350182E3, 5.57535340817727675546E2)


def _poly(coefficients, z):
    """Horner's rule: c0 z^n + c1 z^(n-1) + ... + cn."""
    result = coefficients[0] + 0.0 * z
    for c in coefficients[1:]:
        result *= z
        result += c
    return result


def erf(x):
    """erf of every element of x (float32 or float64), to about float64 precision."""
    xp = array_module(x)
    a = xp.minimum(xp.abs(x), 8.0)
    z = xp.minimum(a, 1.0)
    z *= z  # x^2 for |x| < 1, where `inner` is used; 1 elsewhere (no overflow)
    inner = x * _poly(_T, z) / _poly(_U, z)  # |x| < 1
    outer = 1.0 - xp.exp(-a * a) * _poly(_P, a) / _poly(_Q, a)  # |x| >= 1, for |x|
    return xp.where(a < 1.0, inner, xp.copysign(outer, x)).astype(x.dtype, copy=False)


def forward(x):
    """x: any shape -> gelu(x), and the cache (x, Phi(x)): the backward reuses Phi, the costly part."""
    cdf = 0.5 * (1 + erf(x * SQRT_HALF))  # Phi(x)
    return x * cdf, (x, cdf)


def backward(dout, cache):
    """Returns dx = dout * (Phi(x) + x phi(x)) and {} (no parameters)."""
    x, cdf = cache
    pdf = INV_SQRT_2PI * array_module(x).exp(-0.5 * x * x)  # phi(x)
    return dout * (cdf + x * pdf), {}
