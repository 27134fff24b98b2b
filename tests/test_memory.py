"""The pool of output buffers (cybatchnorm.memory, _pool.pyx)."""
import threading
import tracemalloc

import numpy as np
import pytest

import cybatchnorm as bn
from cybatchnorm import _engine

SHAPE = (512, 1024)            # 2 MiB in float32: pooled


def data(shape=SHAPE, dtype=np.float32):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype(dtype)
    return x, np.ones(shape[1], dtype), np.zeros(shape[1], dtype)


def test_a_dead_output_is_reused_by_the_next_call_of_its_size(pool):
    x, g, b = data()
    out, _ = bn.batchnorm_forward(x, g, b, cache="minimal")
    addr, expected = out.ctypes.data, out.copy()
    del out
    assert bn.pool_info()["held"] == x.nbytes
    before = bn.pool_info()["reused"]
    out, _ = bn.batchnorm_forward(x, g, b, cache="minimal")
    assert out.ctypes.data == addr and bn.pool_info()["reused"] == before + 1
    np.testing.assert_array_equal(out, expected)
    assert bn.pool_info()["held"] == 0


def test_a_buffer_stays_with_its_views(pool):
    x, g, b = data()
    out, _ = bn.batchnorm_forward(x, g, b, cache="minimal")
    view, expected = out[::2, 3:], out[::2, 3:].copy()
    addr = out.ctypes.data
    del out
    assert bn.pool_info()["held"] == 0              # the view still holds the buffer
    other, _ = bn.batchnorm_forward(2 * x, g, b, cache="minimal")
    assert other.ctypes.data != addr
    np.testing.assert_array_equal(view, expected)


def test_pooled_arrays_are_ordinary_outputs(pool):
    a = _engine.empty((300, 1000), np.float64)
    assert a.flags.c_contiguous and a.flags.writeable and a.ctypes.data % 64 == 0
    assert a.dtype == np.float64 and a.shape == (300, 1000)
    small = _engine.empty((3, 4), np.float32)       # under MIN_BYTES: plain numpy
    assert small.base is None


def test_limit_and_release(pool):
    x, g, b = data()
    assert bn.set_pool_limit(x.nbytes - 1) == 256 << 20
    out, _ = bn.batchnorm_forward(x, g, b, cache="minimal")
    del out
    assert bn.pool_info()["held"] == 0              # larger than the limit: freed
    bn.set_pool_limit(3 * x.nbytes)
    outs = [bn.batchnorm_forward(x, g, b, cache="minimal")[0] for _ in range(4)]
    del outs
    info = bn.pool_info()
    assert info["held"] == 3 * x.nbytes and info["buffers"] == 3     # the oldest was freed
    bn.set_pool_limit(x.nbytes)
    assert bn.pool_info()["held"] == x.nbytes       # trimmed to the new limit at once
    assert bn.release_pool() == x.nbytes
    assert bn.pool_info()["held"] == 0 and bn.release_pool() == 0


def test_tracemalloc_sees_pooled_buffers_in_use(pool):
    tracemalloc.start()
    try:
        a = _engine.empty(SHAPE, np.float32)
        assert tracemalloc.get_traced_memory()[0] >= a.nbytes
        del a
        assert tracemalloc.get_traced_memory()[0] < SHAPE[0] * SHAPE[1] * 4
    finally:
        tracemalloc.stop()


def test_threads_share_the_pool_safely(pool):
    x, g, b = data((256, 2048))
    expected = bn.batchnorm_forward(x, g, b, num_threads=1)[0]
    bad = []

    def work():
        for _ in range(30):
            out, cache = bn.batchnorm_forward(x, g, b, num_threads=1)
            if not np.array_equal(out, expected):
                bad.append(1)
            bn.batchnorm_backward_fused(x, cache, num_threads=1)
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad
    assert bn.pool_info()["buffers"] <= 64


@pytest.mark.parametrize("value, exc", [(-1, ValueError), ("1", TypeError), (1.5, TypeError),
                                        (True, TypeError)])
def test_bad_limit_is_refused_by_name(value, exc):
    with pytest.raises(exc, match="^nbytes"):
        bn.set_pool_limit(value)


def test_the_layers_copy_of_x_comes_from_the_pool(pool):
    x, _, _ = data()
    layer = bn.BatchNorm(SHAPE[1], dtype=np.float32)     # fused: keeps its own copy of x
    layer.forward(x)
    kept = layer._cache.x
    assert not np.shares_memory(kept, x)
    np.testing.assert_array_equal(kept, x)
    before = bn.pool_info()
    del kept
    layer._cache = None                 # the copy dies with the cache ...
    assert bn.pool_info()["held"] == before["held"] + x.nbytes   # ... into the pool
    layer.forward(x)
    assert bn.pool_info()["reused"] > before["reused"]
