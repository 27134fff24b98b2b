"""A user's script, checked by ``tox -e typing`` with ``mypy --strict``: the
public API must type-check without casts or ignores. ``tests/test_typing.py``
also runs it, so it stays a working program."""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

import cybatchnorm as bn
from cybatchnorm import graph
from cybatchnorm.gradcheck import GradientCheck


def train_step(layer: bn.BatchNorm, x: npt.NDArray[np.float64]) -> float:
    out = layer(x)
    dx = layer.backward(np.ones_like(out))
    return float(np.abs(dx).max())


def main() -> int:
    rng = np.random.default_rng(7)   # not check_gradients' own dout seed (0)
    x: npt.NDArray[np.float64] = rng.normal(3.0, 2.0, (32, 4))
    gamma, beta = np.ones(4), np.zeros(4)

    out, cache = bn.batchnorm_forward(x, gamma, beta, 1e-5, num_threads=1, cache="minimal")
    mu: npt.NDArray[np.float64] = cache.mu
    dx, dgamma, dbeta = bn.batchnorm_backward_fused(np.ones_like(out), cache)
    staged = bn.batchnorm_backward(np.ones_like(out), bn.batchnorm_forward(x, gamma, beta)[1])
    assert np.allclose(dx, staged[0]) and mu.shape == (4,)

    values = graph.forward(x, gamma, beta)
    grads = graph.backward(np.ones_like(out), cache)
    assert set(grads) >= {"dx", "dgamma", "dbeta"} and "xhat" in values

    count, mean, m2 = bn.batch_stats(x[:10])
    total, gmean, gvar = bn.merge_stats([count, 22], [mean, bn.batch_stats(x[10:])[1]],
                                        [m2, bn.batch_stats(x[10:])[2]])
    assert total == 32 and np.allclose(gmean, cache.mu)
    y = bn.normalize(x, gmean, bn.split.inverse_std(gvar, 1e-5), gamma, beta)
    assert np.allclose(y, out)

    layer = bn.BatchNorm(4, momentum=None, backward="staged")
    step = train_step(layer, x)
    err: GradientCheck = bn.check_gradients(x[:8], gamma, beta)
    ok: bool = err.passed(1e-6)

    config = bn.show_config(mode="dicts")
    assert config is not None
    threads: int = config["Runtime"]["threads (num_threads=None)"]
    old_limit: int = bn.set_pool_limit(1 << 20)
    bn.set_pool_limit(old_limit)
    freed: int = bn.release_pool()
    print(f"step {step:.1e}, gradcheck {'ok' if ok else 'FAILED'}, {threads} threads, "
          f"{freed} bytes freed, pool {bn.pool_info()['limit']}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
