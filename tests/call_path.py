"""Which of the package's files a call passes through on its way to a kernel
(imported by tests/test_call_paths.py and tests/torch_dropin/test_call_paths_torch.py)."""
import os
import sys

import cybatchnorm

PACKAGE = os.path.dirname(os.path.abspath(cybatchnorm.__file__))


def kernel_path(monkeypatch, module, name, call):
    """Run ``call()`` with the compiled function ``module.name`` wrapped; return
    the package's Python files on the stack at its first call, outermost
    first, relative to the package, consecutive frames of one file counted
    once."""
    seen = []
    kernel = getattr(module, name)

    def spy(*args, **kwargs):
        if not seen:
            frame, files = sys._getframe(1), []
            while frame is not None:
                path = os.path.abspath(frame.f_code.co_filename)
                if path.startswith(PACKAGE + os.sep):
                    rel = os.path.relpath(path, PACKAGE).replace(os.sep, "/")
                    if not files or files[-1] != rel:
                        files.append(rel)
                frame = frame.f_back
            seen.append(files[::-1])
        return kernel(*args, **kwargs)
    monkeypatch.setattr(module, name, spy)
    call()
    assert seen, f"{name} was not called"
    return seen[0]
