"""The output pools under concurrency: two Python threads each running
full-cache ``batchnorm_forward`` calls (``num_threads=1``) on a (2**20, 16)
float64 batch, against one thread alone, with the default pool limit, a
2 GiB limit and the pool off; then the same for the PyTorch drop-in's pool
(``cybatchnorm.torch.BatchNorm1d`` training steps, forward and backward, on
the same batch), when torch is installed.

    python benchmarks/pool_threads.py

Prints the wall time of 1 and 2 threads (min of 3 runs, 6 calls per thread),
their ratio per limit, and the 2-thread time against the pool turned off
(the promise: concurrent callers never pay more than with the pool off).
Two threads on two cores ideally take as long as one; the ratio is 2 when
they serialize.
"""
import threading
import time

import numpy as np

import cybatchnorm as bn

X = np.random.default_rng(0).normal(size=(2**20, 16))
G, B = np.ones(16), np.zeros(16)


def work(n):
    for _ in range(n):
        out, cache = bn.batchnorm_forward(X, G, B, num_threads=1)
        del out, cache


def torch_work(n):
    import torch

    import cybatchnorm.torch as cbt
    m = cbt.BatchNorm1d(16, dtype=torch.float64, num_threads=1)
    x = torch.from_numpy(X).requires_grad_(True)
    g = torch.ones_like(x)
    for _ in range(n):
        m(x).backward(g)
        x.grad = None


def run(threads, n=6, fn=work):
    ts = [threading.Thread(target=fn, args=(n,)) for _ in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return time.perf_counter() - t0


def main():
    default = bn.set_pool_limit(256 << 20)
    contenders = [("numpy batchnorm_forward", work)]
    try:
        import torch
        torch.set_num_threads(1)
        contenders.append(("drop-in training step", torch_work))
    except ImportError:
        print("torch not importable: the drop-in's pool is not measured")
    try:
        for name, fn in contenders:
            rows = {}
            for limit in (default, 2 << 30, 0):
                bn.set_pool_limit(limit)
                bn.release_pool()
                fn(2)
                one = min(run(1, fn=fn) for _ in range(3))
                two = min(run(2, fn=fn) for _ in range(3))
                rows[limit] = (one, two)
            off = rows[0][1]
            for limit, (one, two) in rows.items():
                print(f"{name}, pool limit {limit >> 20:5d} MiB: 1 thread {one:.2f} s, 2 threads "
                      f"{two:.2f} s, ratio {two / one:.2f}; 2 threads / 2 threads pool off "
                      f"{two / off:.2f}")
    finally:
        bn.set_pool_limit(default)


if __name__ == "__main__":
    main()
