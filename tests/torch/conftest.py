"""The PyTorch drop-in's tests. Each module skips (with the reason) without
PyTorch, except in `tox -e torch`, which sets CYBATCHNORM_REQUIRE_TORCH: there
a missing torch fails the run."""
import os

if os.environ.get("CYBATCHNORM_REQUIRE_TORCH"):
    import torch   # noqa: F401  (an ImportError here fails the torch env loudly)
