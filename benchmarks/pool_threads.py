"""The output pool under concurrency: two Python threads each running
full-cache ``batchnorm_forward`` calls (``num_threads=1``) on a (2**20, 16)
float64 batch, against one thread alone, with the default pool limit, a
2 GiB limit and the pool off.

    python benchmarks/pool_threads.py

Prints the wall time of 1 and 2 threads (min of 3 runs, 6 calls per thread)
and their ratio per limit. Two threads on two cores ideally take as long as
one; the ratio is 2 when they serialize.
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


def run(threads, n=6):
    ts = [threading.Thread(target=work, args=(n,)) for _ in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return time.perf_counter() - t0


def main():
    default = bn.set_pool_limit(256 << 20)
    try:
        for limit in (default, 2 << 30, 0):
            bn.set_pool_limit(limit)
            bn.release_pool()
            work(2)
            one = min(run(1) for _ in range(3))
            two = min(run(2) for _ in range(3))
            print(f"pool limit {limit >> 20:5d} MiB: 1 thread {one:.2f} s, 2 threads {two:.2f} s, "
                  f"ratio {two / one:.2f}")
    finally:
        bn.set_pool_limit(default)


if __name__ == "__main__":
    main()
