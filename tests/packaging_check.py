"""Packaging check, run by `tox -e packaging`.

Builds the sdist and, from it, the wheel (``python -m build``); checks the sdist
carries the Cython sources, the stubs and what the tox envs need (docs/, tests/); installs the wheel into a fresh venv that has no
Cython and runs a forward/backward there.
"""
import glob
import os
import subprocess
import sys
import tarfile
import venv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ["_nodes.pyx", "_fused.pyx", "_split.pyx", "_pool.pyx", "_openmp.pyx", "_openmp.pxd",
           "_common.pxd"]
SDIST_PATHS = ["docs/conf.py", "docs/index.md", "docs/scripts/perf_report.py", "docs/data/bench.json",
               "tox.ini", "src/cybatchnorm/py.typed", "src/cybatchnorm/_fused.pyi",
               "tests/typing_user.py", "tests/wheel_check.py", "LICENSE"]
SMOKE = """
import sys, numpy as np, cybatchnorm as bn
try:
    import Cython
    sys.exit("Cython is importable in the clean venv")
except ImportError:
    pass
x = np.random.default_rng(0).normal(3, 2, (32, 5))
out, cache = bn.batchnorm_forward(x, np.ones(5), np.zeros(5))
dx, dg, db = bn.batchnorm_backward(np.ones_like(x), cache)
assert abs(out.mean()) < 1e-12 and np.abs(dx).max() < 1e-12
count, mean, var = bn.merge_stats(*zip(bn.batch_stats(x[:7]), bn.batch_stats(x[7:])))
assert count == 32 and np.abs(mean - cache.mu).max() < 1e-12
print("wheel OK without Cython:", bn.__file__)
"""


def main(tmp):
    dist = os.path.join(tmp, "dist")
    subprocess.run([sys.executable, "-m", "build", "--outdir", dist, ROOT], check=True)
    (sdist,) = glob.glob(os.path.join(dist, "*.tar.gz"))
    (wheel,) = glob.glob(os.path.join(dist, "*.whl"))
    with tarfile.open(sdist) as tf:
        names = {os.path.basename(n) for n in tf.getnames()}
    missing = [s for s in SOURCES if s not in names]
    # the site's sources and the stubs: every tox env (docs, doctest, typing) runs from the sdist
    with tarfile.open(sdist) as tf:
        paths = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    missing += [p for p in SDIST_PATHS if p not in paths]
    if missing:
        sys.exit(f"sdist lacks {missing}")
    print("sdist carries", ", ".join(SOURCES))
    env_dir = os.path.join(tmp, "clean-venv")
    venv.create(env_dir, with_pip=True, clear=True)
    py = os.path.join(env_dir, "bin", "python")
    subprocess.run([py, "-m", "pip", "install", "--quiet", wheel], check=True)
    subprocess.run([py, "-c", SMOKE], check=True, cwd=tmp)


if __name__ == "__main__":
    main(sys.argv[1])
