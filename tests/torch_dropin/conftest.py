"""The PyTorch drop-in's tests (not in a folder named ``torch``: with tests/
on sys.path, that would be a namespace package shadowing a missing torch). Each
module skips (with the reason) without
PyTorch, except in `tox -e torch`, which sets CYBATCHNORM_REQUIRE_TORCH: there
a missing torch (or expecttest, which torch's test utilities need) fails the run."""
import os

if os.environ.get("CYBATCHNORM_REQUIRE_TORCH"):
    import expecttest  # noqa: F401  (torch's module_db needs it)
    import torch  # noqa: F401  (an ImportError here fails the torch env loudly)
