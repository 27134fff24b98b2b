"""Run part of the test suite under valgrind memcheck; run by `tox -e memcheck`.

    python tests/drivers/memcheck.py OUTDIR

valgrind reports a handful of errors inside CPython and glibc on any Python
program (the dynamic loader's strncmp, AVX2 memcmp over-reads, values CPython
reads before valgrind sees them written). Rather than a suppressions file
that could also hide ours, every error is classified by its stack: an error
with a frame in cybatchnorm's compiled modules counts; the others are listed
by where they come from and ignored. Blocks still allocated at exit are not
errors here (memory growth is tested in tests/test_leaks.py). The run fails when any error touches
cybatchnorm, or when the tests fail.
"""
import collections
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

from external import missing

TESTS = ["tests/test_api.py", "tests/test_graph.py", "tests/test_validation_api.py",
         "tests/test_validation_layer.py", "tests/test_validation_nodes.py",
         "tests/test_validation_walks.py",
         "tests/test_layer.py", "tests/test_gradcheck.py", "tests/test_threads.py",
         "tests/test_kernels.py", "tests/test_config.py", "tests/test_norms.py",
         "tests/test_norm_layers.py"]


def main(outdir):
    if shutil.which("valgrind") is None:
        return missing("memcheck", "valgrind", "valgrind")
    os.makedirs(outdir, exist_ok=True)
    xml = os.path.join(outdir, "memcheck.xml")
    env = dict(os.environ, PYTHONMALLOC="malloc", CYBATCHNORM_UNDER_VALGRIND="1")
    cmd = ["valgrind", "--tool=memcheck", "--xml=yes", f"--xml-file={xml}",
           "--leak-check=no", "--errors-for-leak-kinds=none",
           sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS]
    rc = subprocess.run(cmd, env=env).returncode
    ours, others, leaks = [], collections.Counter(), 0
    for err in ET.parse(xml).getroot().iter("error"):
        kind = err.findtext("kind")
        if kind.startswith("Leak_"):
            # memory still held at exit (module objects, interned strings);
            # leaks are tested by RSS growth in tests/test_leaks.py
            leaks += 1
            continue
        objs = [f.findtext("obj") or "" for f in err.iter("frame")]
        fns = [f.findtext("fn") or "" for f in err.iter("frame")]
        if any("cybatchnorm" in o for o in objs) or any(fn.startswith("__pyx") for fn in fns):
            ours.append((kind, fns[:6]))
        else:
            top = next((os.path.basename(o) for o in objs if o), "?")
            others[(kind, top)] += 1
    print(f"memcheck: {len(ours)} error(s) in cybatchnorm's compiled code")
    for kind, fns in ours:
        print(f"  {kind}: {' <- '.join(fns)}")
    print(f"memcheck: {sum(others.values())} error(s) elsewhere (CPython, glibc, numpy), ignored:")
    for (kind, top), n in others.most_common():
        print(f"  {n:4} {kind} in {top}")
    print(f"memcheck: {leaks} leak record(s) at exit not counted (see tests/test_leaks.py)")
    if rc != 0:
        print(f"memcheck: the tests under valgrind exited with {rc}")
    return 1 if ours or rc != 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
