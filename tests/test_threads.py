"""Thread counts: validation, OMP_NUM_THREADS/threadpoolctl, bitwise invariance."""
import os
import subprocess
import sys

from cases import DTYPES
import numpy as np
import pytest

import cybatchnorm as bn
from cybatchnorm import _openmp
from cybatchnorm._validation import check_num_threads


@pytest.mark.parametrize("shape", [(64, 37), (5, 3), (16, 7, 9, 4), (3, 1000), (50, 1),
                                   (16, 512), (4, 16, 20, 20)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_results_bitwise_identical_for_any_thread_count(rng, shape, dtype):
    x = rng.normal(4, 3, shape).astype(dtype)
    g, b = rng.uniform(size=shape[1]).astype(dtype), rng.normal(size=shape[1]).astype(dtype)
    dout = rng.normal(size=shape).astype(dtype)
    results = []
    for nt in (1, 2, 3, 4, 7):
        out, cache = bn.batchnorm_forward(x, g, b, num_threads=nt)
        staged = bn.batchnorm_backward(dout, cache, num_threads=nt)
        fused = bn.batchnorm_backward_fused(dout, cache, num_threads=nt)
        results.append([out, cache.mu, cache.var, *staged, *fused])
    for other in results[1:]:
        for a, b_ in zip(results[0], other):
            assert a.tobytes() == b_.tobytes()


def test_num_threads_validation():
    assert check_num_threads(3) == 3
    assert check_num_threads(np.int64(2)) == 2
    assert check_num_threads(None) >= 1
    for bad in (0, -1):
        with pytest.raises(ValueError, match="num_threads"):
            check_num_threads(bad)
    for bad in (1.5, "2", True):
        with pytest.raises(TypeError, match="num_threads"):
            check_num_threads(bad)


@pytest.mark.skipif(not _openmp.openmp_enabled(), reason="build without OpenMP")
def test_omp_num_threads_is_honoured():
    code = "from cybatchnorm._validation import check_num_threads as e; print(e(None))"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "1"


@pytest.mark.skipif(not _openmp.openmp_enabled(), reason="build without OpenMP")
def test_threadpoolctl_limit_is_honoured():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = check_num_threads(None)
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert check_num_threads(None) == 1
    assert check_num_threads(None) == before


def test_small_work_runs_on_one_thread_unless_asked():
    from cybatchnorm._threads import GRAIN
    assert check_num_threads(None, size=GRAIN - 1) == 1
    assert check_num_threads(None, size=100 * GRAIN) == check_num_threads(None)
    assert check_num_threads(3, size=10) == 3          # an explicit count is honoured


# ---------------------------------------------------------------- cgroup quotas

def _tree(tmp_path, proc, files):
    """A fake cgroup file system under tmp_path/cg and a fake /proc/self/cgroup."""
    root = tmp_path / "cg"
    for rel, text in files.items():
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text + "\n")
    (tmp_path / "proc_cgroup").write_text(proc)
    return str(root), str(tmp_path / "proc_cgroup")


@pytest.mark.parametrize("proc, files, want", [
    # cgroup v2, as in a container: the process's cgroup is the root
    ("0::/\n", {"cpu.max": "200000 100000"}, 2),
    ("0::/\n", {"cpu.max": "150000 100000"}, 2),          # 1.5 CPUs: rounded up
    ("0::/\n", {"cpu.max": "50000 100000"}, 1),
    ("0::/\n", {"cpu.max": "max 100000"}, None),          # no quota
    ("0::/\n", {}, None),                                 # no cpu controller
    # v2 on a host: the tightest quota of the cgroup and its ancestors binds
    ("0::/a/b\n", {"a/b/cpu.max": "max 100000", "a/cpu.max": "300000 100000",
                   "cpu.max": "800000 100000"}, 3),
    ("0::/a/b\n", {"a/b/cpu.max": "100000 100000", "a/cpu.max": "300000 100000"}, 1),
    # cgroup v1, hierarchy mounted per controller, the cgroup below it (a host)
    ("4:cpu,cpuacct:/docker/abc\n0::/\n",
     {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "400000",
      "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000"}, 4),
    # v1 in a container: its own cgroup mounted at the controller's root
    ("1:cpu:/docker/abc\n2:cpuacct:/docker/abc\n",
     {"cpu/cpu.cfs_quota_us": "250000", "cpu/cpu.cfs_period_us": "100000"}, 3),
    ("1:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),
    ("garbage\n", {"cpu.max": "200000 100000"}, None),
])
def test_cgroup_quota(tmp_path, proc, files, want):
    from cybatchnorm._threads import cgroup_cpu_limit
    root, proc_file = _tree(tmp_path, proc, files)
    assert cgroup_cpu_limit(root, proc_file) == want


def test_no_cgroup_files_means_no_quota(tmp_path):
    from cybatchnorm._threads import cgroup_cpu_limit
    assert cgroup_cpu_limit(str(tmp_path / "none"), str(tmp_path / "none")) is None


def test_default_thread_count_honours_the_quota(monkeypatch, tmp_path):
    from cybatchnorm import _threads
    root, proc_file = _tree(tmp_path, "0::/\n", {"cpu.max": "100000 100000"})
    monkeypatch.setattr(_threads, "cpu_quota", lambda: _threads.cgroup_cpu_limit(root, proc_file))
    assert _threads.usable_cpus() == 1
    assert check_num_threads(None) == 1
    assert check_num_threads(4) == 4           # an explicit count is still honoured


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2
                    or not _openmp.openmp_enabled(),
                    reason="needs CPU affinity control, two usable cores and OpenMP")
def test_default_thread_count_honours_cpu_affinity():
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from cybatchnorm._validation import check_num_threads as c; print(c(None))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=dict(os.environ, OMP_NUM_THREADS="8")).stdout
    assert out.strip() == "1"
