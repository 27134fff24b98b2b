"""Gradient checking by centred finite differences."""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from ._typing import AnyArray, ArrayLike
from ._validation import DEFAULT_EPS, check_eps, check_step, feature, full
from .api import batchnorm_backward, batchnorm_forward

__all__ = ["GradientCheck", "check_gradients", "relative_error"]


class GradientCheck(NamedTuple):
    """Relative errors of the analytic gradients against finite differences."""

    dx: float
    dgamma: float
    dbeta: float

    def passed(self, tol: float = 1e-6) -> bool:
        """True when every relative error is at most ``tol``."""
        return max(self) <= tol


def relative_error(a: ArrayLike, b: ArrayLike) -> float:
    """``||a - b|| / (||a|| + ||b||)``, 0 when both are zero."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    den = np.linalg.norm(a64) + np.linalg.norm(b64)
    return 0.0 if den == 0 else float(np.linalg.norm(a64 - b64) / den)


def _numeric(f: Callable[[], float], p: AnyArray, h: float) -> AnyArray:
    """Centred differences of scalar ``f()`` with respect to every entry of
    ``p`` (perturbed in place, then restored exactly)."""
    grad = np.empty_like(p)
    flat, gflat = p.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        fp = f()
        flat[i] = old - h
        fm = f()
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * h)
    return grad


def check_gradients(x: ArrayLike, gamma: ArrayLike, beta: ArrayLike, dout: ArrayLike | None = None,
                    h: float = 1e-5, *, eps: float = DEFAULT_EPS,
                    num_threads: int | None = None) -> GradientCheck:
    """Compare the staged backward's dx, dgamma, dbeta with centred differences.

    The loss is ``sum(out * dout)``, whose gradient with respect to ``out`` is
    ``dout``. Every entry of x, gamma and beta is moved by ``+h`` and ``-h``
    and ``(L(+h) - L(-h)) / (2h)`` is compared with the analytic gradient.
    Everything is computed in float64 on copies; the inputs are untouched.

    Parameters
    ----------
    x : array_like, shape (N, D) or (N, C, spatial...)
    gamma, beta : array_like, shape (C,)
    dout : array_like, shape of x, optional
        Upstream gradient; by default a fixed random one (seed 0).
    h : float, default 1e-5
        Finite-difference step, > 0.
    eps : float, keyword-only
        The batch-norm epsilon.
    num_threads : int or None, keyword-only

    Returns
    -------
    GradientCheck
        ``(dx, dgamma, dbeta)`` relative errors, each
        ``||analytic - numeric|| / (||analytic|| + ||numeric||)``.

    Examples
    --------
    >>> import numpy as np, cybatchnorm as bn
    >>> x = np.random.default_rng(1).normal(3.0, 2.0, size=(6, 4))
    >>> err = bn.check_gradients(x, np.full(4, 1.5), np.zeros(4))
    >>> err.passed(1e-7)
    True
    """
    xa = full("x", x, np.float64)[0].reshape(np.shape(x)).copy()
    C = xa.shape[1]
    ga = feature("gamma", gamma, C, np.float64).copy()
    ba = feature("beta", beta, C, np.float64).copy()
    if dout is None:
        dout = np.random.default_rng(0).standard_normal(xa.shape)
    da = full("dout", dout, np.float64, xa.shape)[0].reshape(xa.shape)
    e = check_eps(eps)
    step = check_step(h)

    def loss() -> float:
        out, _ = batchnorm_forward(xa, ga, ba, e, num_threads=num_threads)
        return float(np.sum(out * da))

    _, cache = batchnorm_forward(xa, ga, ba, e, num_threads=num_threads)
    dx, dgamma, dbeta = batchnorm_backward(da, cache, num_threads=num_threads)
    return GradientCheck(
        relative_error(dx, _numeric(loss, xa, step)),
        relative_error(dgamma, _numeric(loss, ga, step)),
        relative_error(dbeta, _numeric(loss, ba, step)),
    )
