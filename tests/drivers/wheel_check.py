"""``tox -e wheel``: the wheel a package index would take, checked end to end.

1. ``python -m build`` makes the sdist and, from it, the wheel (build isolation);
2. ``auditwheel repair --strip`` vendors libgomp and tags it manylinux into dist/;
3. the tag, the size (<= 3 MiB) and the vendored OpenMP runtime are checked;
4. a fresh venv installs the wheel with a PATH that has no compiler, and runs
   the test suite and the demo there; show_config must name the vendored runtime.
"""
import glob
import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# a guard against accidental bloat (debug symbols, build output): the stripped
# wheel was 2.53 MiB with the four kernel modules (batch norm's nodes, fused and
# split kernels, the per-sample norms' row and channels-last kernels), each built
# for three SIMD levels, and the vendored libgomp
MAX_BYTES = 3 * 2**20
COMPILERS = ("cc", "gcc", "clang", "c++", "g++", "x86_64-linux-gnu-gcc")
TEST_DEPS = ["pytest>=7", "hypothesis>=6", "threadpoolctl>=3"]


def sh(*cmd, **kw):
    print("wheel:", " ".join(map(str, cmd)), flush=True)
    return subprocess.run(list(map(str, cmd)), check=True, **kw)


def build(tmp):
    raw = os.path.join(tmp, "raw")
    shutil.rmtree(raw, ignore_errors=True)
    sh(sys.executable, "-m", "build", "--outdir", raw, ROOT)     # sdist, then a wheel from it
    (wheel,) = glob.glob(os.path.join(raw, "*.whl"))
    return wheel


def repair(wheel, dist):
    os.makedirs(dist, exist_ok=True)
    for old in glob.glob(os.path.join(dist, "cybatchnorm-*.whl")):
        os.remove(old)
    sh(sys.executable, "-m", "auditwheel", "show", wheel)
    sh(sys.executable, "-m", "auditwheel", "repair", "--strip", "--wheel-dir", dist, wheel)
    (fixed,) = glob.glob(os.path.join(dist, "cybatchnorm-*.whl"))
    sh(sys.executable, "-m", "auditwheel", "show", fixed)
    return fixed


def check(fixed):
    name = os.path.basename(fixed)
    problems = []
    if not re.search(r"-manylinux_2_\d+_[a-z0-9_]+\.whl$", name):
        problems.append(f"{name}: not a manylinux tag")
    size = os.path.getsize(fixed)
    if size > MAX_BYTES:
        problems.append(f"{name}: {size / 2**20:.2f} MiB, more than {MAX_BYTES / 2**20} MiB")
    with zipfile.ZipFile(fixed) as zf:
        names = zf.namelist()
    vendored = [n for n in names if re.match(r"cybatchnorm\.libs/libgomp[-.].*\.so", n)]
    if not vendored:
        problems.append(f"{name}: no libgomp in cybatchnorm.libs/")
    for want in ("cybatchnorm/py.typed", "cybatchnorm/_fused.pyi"):
        if want not in names:
            problems.append(f"{name}: lacks {want}")
    print(f"wheel: {name}, {size / 2**20:.2f} MiB, vendored {', '.join(vendored)}", flush=True)
    return problems


def run_installed(fixed, tmp):
    env_dir = os.path.join(tmp, "clean-venv")
    venv.create(env_dir, with_pip=True, clear=True)
    bindir = os.path.join(env_dir, "bin")
    py = os.path.join(bindir, "python")
    sh(py, "-m", "pip", "install", "--quiet", "--only-binary=:all:", fixed, *TEST_DEPS)
    # a PATH with the venv and a folder of the few tools the tests start, no compiler
    tools = os.path.join(tmp, "tools")
    os.makedirs(tools, exist_ok=True)
    path = os.pathsep.join([bindir, tools])
    found = [c for c in COMPILERS if shutil.which(c, path=path)]
    if found:
        sys.exit(f"wheel: the clean PATH still has {found}")
    env = {k: v for k, v in os.environ.items()
           if k not in ("CC", "CXX", "CFLAGS", "LDFLAGS", "CI", "PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=path, HYPOTHESIS_PROFILE="ci", CYBATCHNORM_EXPECT_OPENMP="1")
    work = os.path.join(tmp, "work")          # not the checkout: import the installed copy
    os.makedirs(work, exist_ok=True)
    where = subprocess.run([py, "-c", "import cybatchnorm, sys; print(cybatchnorm.__file__)"],
                           env=env, cwd=work, capture_output=True, text=True, check=True)
    if not where.stdout.startswith(env_dir):
        sys.exit(f"wheel: imported {where.stdout.strip()}, not the installed wheel")
    sh(py, "-c",
       "import importlib.util, sys; sys.exit(importlib.util.find_spec('Cython') is not None)",
       env=env, cwd=work)                  # nothing to compile with, nothing compiled
    sh(py, "-c", "import cybatchnorm as bn, sys;"
                 "rt = bn.show_config(mode='dicts')['Runtime']['openmp runtimes loaded'];"
                 "print(rt); sys.exit(not any('cybatchnorm.libs' in r['filepath'] for r in rt))",
       env=env, cwd=work)
    sh(py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", ROOT,
       os.path.join(ROOT, "tests"), "--ignore", os.path.join(ROOT, "tests", "site"),
       env=env, cwd=work)
    sh(os.path.join(bindir, "cybatchnorm"), env=env, cwd=work)          # the demo
    sh(py, "-m", "cybatchnorm", "--n", "64", "--d", "3", env=env, cwd=work)


def main(tmp, dist):
    os.makedirs(tmp, exist_ok=True)
    fixed = repair(build(tmp), dist)
    problems = check(fixed)
    if problems:
        sys.exit("wheel: " + "; ".join(problems))
    run_installed(fixed, tmp)
    print(f"wheel: OK {os.path.basename(fixed)}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
