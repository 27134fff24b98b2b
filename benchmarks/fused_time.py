"""Time forward (minimal cache, out=) + fused backward (dx=) for every benchmark case.

    python benchmarks/fused_time.py OUT.json

Used to compare two builds (say the portable default and one built with
CYBATCHNORM_NATIVE=1, each installed in its own venv): run it in each and
compare the JSON files. Medians of 9 runs after a warm-up.
"""
import json
import sys

import numpy as np

import cybatchnorm as bn
from cybatchnorm.bench import CASES, EPS, parse_case, round_robin

res = {}
for case in CASES:
    shape = parse_case(case)
    for dt in (np.float32, np.float64):
        rng = np.random.default_rng(0)
        x = rng.normal(1, 2, shape).astype(dt)
        C = shape[1]
        g = rng.uniform(0.5, 2, C).astype(dt)
        b = rng.normal(size=C).astype(dt)
        d = rng.normal(size=shape).astype(dt)
        o, dx = np.empty_like(x), np.empty_like(x)
        _, c = bn.batchnorm_forward(x, g, b, cache="minimal")
        def both(x=x, g=g, b=b, o=o, d=d, dx=dx):
            _, cc = bn.batchnorm_forward(x, g, b, EPS, cache="minimal", out=o)
            bn.batchnorm_backward_fused(d, cc, dx=dx)
        res[f"{case} {np.dtype(dt).name}"] = round_robin({"t": both}, 9)["t"]
json.dump(res, open(sys.argv[1], "w"))
