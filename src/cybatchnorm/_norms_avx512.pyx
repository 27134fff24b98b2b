# The kernels of _norms.pyx compiled a third time with AVX-512 (F, BW, DQ, VL; see
# setup.py); cybatchnorm._engine picks this module at import time when the CPU
# has those extensions.
include "_norms.pyx"
