"""Packaging check, run by `tox -e packaging`.

Builds the sdist (``python -m build --sdist``) and checks it carries the Cython
sources, the stubs and what the tox envs need (docs/, tests/), and no build
output. ``tox -e wheel`` builds the wheel from it and tests that in a venv with
neither Cython nor a compiler.
"""
import glob
import os
import subprocess
import sys
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCES = ["_nodes.pyx", "_fused.pyx", "_split.pyx", "_norms.pyx", "_pool.pyx", "_openmp.pyx",
           "_openmp.pxd",
           "_common.pxd"]
SDIST_PATHS = ["docs/conf.py", "docs/index.md", "docs/scripts/perf_report.py",
               "docs/data/bench.json",
               "tox.ini", "src/cybatchnorm/py.typed", "src/cybatchnorm/_fused.pyi",
               "tests/typing_user.py", "tests/drivers/wheel_check.py", "LICENSE"]


def main(tmp):
    dist = os.path.join(tmp, "dist")
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir", dist, ROOT], check=True)
    (sdist,) = glob.glob(os.path.join(dist, "*.tar.gz"))
    with tarfile.open(sdist) as tf:
        members = tf.getnames()
    names = {os.path.basename(n) for n in members}
    missing = [s for s in SOURCES if s not in names]
    # the site's sources, the stubs and the tox envs' scripts: every env runs from the sdist
    paths = {n.split("/", 1)[1] for n in members if "/" in n}
    missing += [p for p in SDIST_PATHS if p not in paths]
    stray = [p for p in paths if p.endswith((".so", ".c", ".pyc")) or p.startswith("docs/_build/")]
    if missing or stray:
        sys.exit(f"sdist lacks {missing}"
                 + (f", and holds build output {stray[:5]}" if stray else ""))
    print("sdist carries", ", ".join(SOURCES + SDIST_PATHS))


if __name__ == "__main__":
    main(sys.argv[1])
