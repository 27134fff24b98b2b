"""Resident memory stays flat over many calls, on the success and the error paths."""
import os

import numpy as np
import pytest

import cybatchnorm as bn

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")


def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def growth(fn, n, warm=2000):
    for _ in range(warm):
        fn()
    before = rss()
    for _ in range(n):
        fn()
    return rss() - before


def test_small_calls_do_not_leak():
    rng = np.random.default_rng(0)
    x, dout = rng.normal(size=(8, 4)), rng.normal(size=(8, 4))
    g, b = np.ones(4), np.zeros(4)

    def call():
        out, cache = bn.batchnorm_forward(x, g, b)
        bn.batchnorm_backward(dout, cache)
        bn.batchnorm_backward_fused(dout, cache)
    assert growth(call, 100_000) < 1 << 20


def test_large_calls_do_not_leak():
    rng = np.random.default_rng(1)
    x, dout = rng.normal(size=(512, 256)), rng.normal(size=(512, 256))
    g, b = np.ones(256), np.zeros(256)

    def call():
        out, cache = bn.batchnorm_forward(x, g, b, cache="minimal")
        bn.batchnorm_backward_fused(dout, cache)
        bn.batchnorm_backward(dout, cache)
    assert growth(call, 1_000, warm=50) < 1 << 20


def test_error_paths_do_not_leak():
    x = np.ones((8, 4)) * np.arange(8)[:, None]

    def call():
        for bad in (dict(gamma=np.ones(3)), dict(eps=-1.0), dict(num_threads=0)):
            try:
                bn.batchnorm_forward(x, bad.pop("gamma", np.ones(4)), np.zeros(4), **bad)
            except (TypeError, ValueError):
                pass
    assert growth(call, 30_000) < 1 << 20
