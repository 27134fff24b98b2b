import subprocess
import sys

import numpy as np
import pytest

from cybatchnorm.__main__ import main
from cybatchnorm import graph


def run(*args):
    return subprocess.run([sys.executable, "-m", "cybatchnorm", *args],
                          capture_output=True, text=True, timeout=120)


def test_demo_default():
    r = run()
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for n in graph.NODES:   # every node with its shape and its gradient
        row = next(l for l in lines if l.startswith(n.name + " "))
        assert f"d{n.name} " in row
        assert n.op in row
    assert "AGREE" in r.stdout and "PASS" in r.stdout
    assert "dxmu = dxmu1 + dxmu2" in r.stdout and "dx = dx1 + dx2" in r.stdout


def test_demo_options(capsys):
    assert main(["--n", "12", "--d", "5", "--dtype", "float32", "--seed", "3", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "(12, 5) float32" in out and "1 thread" in out


def test_demo_is_seeded(capsys):
    main(["--seed", "4"])
    a = capsys.readouterr().out
    main(["--seed", "4"])
    assert capsys.readouterr().out == a
    main(["--seed", "5"])
    assert capsys.readouterr().out != a


def test_demo_input_file(tmp_path, capsys):
    f = tmp_path / "x.npy"
    np.save(f, np.random.default_rng(0).normal(1, 2, (6, 3, 4, 4)))
    assert main(["--input", str(f)]) == 0
    assert "(6, 3, 4, 4)" in capsys.readouterr().out


@pytest.mark.parametrize("args, needle", [
    (["--n", "0"], "--n"),
    (["--d", "x"], "--d"),
    (["--dtype", "int8"], "--dtype"),
    (["--input", "does-not-exist.npy"], "--input"),
    (["--n", "1"], "x: expected more than 1 value"),
])
def test_errors_are_one_line(args, needle):
    r = run(*args)
    assert r.returncode != 0
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and needle in err[0], r.stderr
    assert "Traceback" not in r.stderr


def test_bad_input_file_contents(tmp_path):
    f = tmp_path / "s.npy"
    np.save(f, np.array(["a", "b"]))
    r = run("--input", str(f))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_help():
    r = run("--help")
    assert r.returncode == 0
    for opt in ("--n", "--d", "--dtype", "--seed", "--threads", "--input"):
        assert opt in r.stdout


def test_failed_check_exits_nonzero(monkeypatch, capsys):
    import cybatchnorm.__main__ as cli
    monkeypatch.setattr(cli, "GRADCHECK_TOL", 0.0)
    assert main([]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_bench_smoke(tmp_path):
    # tiny cases so the command cannot rot; timings are printed, never asserted
    out = tmp_path / "b.json"
    r = run("bench", "--cases", "16x8,4x3x2x2", "--dtype", "float32", "--threads", "1,all",
            "--repeats", "1", "--json", str(out))
    assert r.returncode == 0, r.stderr
    assert "16x8" in r.stdout and "/5S" in r.stdout and "/8S" in r.stdout
    assert "targets" in r.stdout and "layer f+b / torch.nn module f+b" in r.stdout
    import json
    data = json.loads(out.read_text())
    assert len(data["results"]) >= 2
    for res in data["results"]:
        for key in ("alloc_total", "passed_total", "staged_bwd", "bound", "bound5", "layer",
                    "numpy_staged_bwd", "peak_alloc", "peak_passed"):
            assert res[key] > 0
        assert res["bound5"] == 2.5 * res["copy"] and res["bound"] == 4 * res["copy"]
        for name, runs in res["samples"].items():      # raw samples, and their spread
            assert len(runs) == 1
            assert res["spread"][name]["min"] == res[name] == res["spread"][name]["max"]
    env = data["meta"]["environment"]
    for key in ("python", "numpy", "simd", "openmp", "openmp_runtime", "threads", "cpu",
                "caches"):
        assert key in env
    assert env["simd"] in ("baseline", "avx2", "avx512")


@pytest.mark.parametrize("args, needle", [
    (["bench", "--cases", "16"], "--cases"),
    (["bench", "--dtype", "float16"], "--dtype"),
    (["bench", "--threads", "0"], "--threads"),
])
def test_bench_errors(args, needle):
    r = run(*args)
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1
