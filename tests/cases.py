"""The shapes and dtypes the tests share (imported by the test modules; the
fixtures and pytest hooks live in conftest.py, the numpy reference in
reference.py)."""
import numpy as np

#: (N, D) and (N, C, spatial...) batches: odd sizes, one channel, N = 2
SHAPES = [(16, 5), (7, 3, 4, 5), (9, 4, 6), (2, 1), (33, 65)]
#: the dtypes the kernels compute in
DTYPES = [np.float64, np.float32]
