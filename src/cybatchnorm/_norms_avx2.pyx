# The kernels of _norms.pyx compiled a second time with AVX2 (see setup.py);
# cybatchnorm._engine picks this module at import time when the CPU has AVX2.
include "_norms.pyx"
