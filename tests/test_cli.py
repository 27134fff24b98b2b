import subprocess
import sys

import numpy as np
import pytest

from cybatchnorm import graph
from cybatchnorm.__main__ import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "cybatchnorm", *args],
                          capture_output=True, text=True, timeout=120)


def test_demo_default():
    r = run()
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for n in graph.NODES:   # every node with its shape and its gradient
        row = next(ln for ln in lines if ln.startswith(n.name + " "))
        assert f"d{n.name} " in row
        assert n.op in row
    assert "AGREE" in r.stdout and "PASS" in r.stdout
    assert "dxmu = dxmu1 + dxmu2" in r.stdout and "dx = dx1 + dx2" in r.stdout


def test_demo_options(capsys):
    assert main(["--n", "12", "--d", "5", "--dtype", "float32", "--seed", "3",
                 "--threads", "1"]) == 0
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
            "--repeats", "1", "--json", str(out), "--wide")
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
    # the per-sweep table: every sweep of every case, timed, in units of a read of x
    assert "sweeps of the fused kernels" in r.stdout and "1 thr: fwd / torch fwd" in r.stdout
    assert [(s["shape"], s["dtype"]) for s in data["sweeps"]] == [([16, 8], "float32"),
                                                                  ([4, 3, 2, 2], "float32")]
    from cybatchnorm._engine import SWEEPS
    for row in data["sweeps"]:
        for key in SWEEPS:
            assert row[key] > 0, key
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


# ---------------------------------------------------------------- manners

def test_version():
    import cybatchnorm
    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"cybatchnorm {cybatchnorm.__version__}"


def test_closed_pipe_ends_quietly():
    # `python -m cybatchnorm | head -0`: the reader is gone
    import os
    r_fd, w_fd = os.pipe()
    p = subprocess.Popen([sys.executable, "-m", "cybatchnorm"], stdout=w_fd,
                         stderr=subprocess.PIPE, text=True)
    os.close(w_fd)
    os.close(r_fd)          # gone before the first write: every write fails with EPIPE
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert "Traceback" not in err and "Broken pipe" not in err


@pytest.mark.parametrize("args, needle", [
    (["bench", "--cases", ","], "--cases: expected comma-separated shapes"),
    (["bench", "--cases", ""], "--cases: expected"),
    (["bench", "--dtype", ","], "--dtype: expected"),
    (["bench", "--threads", ""], "--threads: expected"),
    (["bench", "--cases", "16x8,32"], "--cases"),                  # every case checked first
    (["--threads", "1", "bench"], "--threads is an option of the demo, not of bench"),
    (["--dtype", "float32", "bench"], "put it after 'bench'"),
    (["--n", "4", "bench"], "--n is an option of the demo"),
])
def test_bench_refuses_before_running(args, needle):
    r = run(*args)
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stdout == ""   # nothing was timed


@pytest.mark.parametrize("where", ["missing-dir/b.json", "."])
def test_bench_json_is_checked_before_the_run(tmp_path, where):
    r = run("bench", "--cases", "16x8", "--repeats", "1", "--json", str(tmp_path / where))
    assert r.returncode == 2 and "--json" in r.stderr and r.stdout == ""


def _width(text):
    return max(map(len, text.splitlines()))


def test_bench_report_fits_100_columns():
    r = run("bench", "--cases", "16x8", "--dtype", "float64", "--threads", "1", "--repeats", "1")
    assert r.returncode == 0, r.stderr
    assert _width(r.stdout) <= 100
    head = next(ln for ln in r.stdout.splitlines()
                if ln.lstrip().startswith("case") and " thr " in ln)
    assert "(--wide:" in r.stdout and " 5S " not in head and "min-max" not in head
    wide = run("bench", "--cases", "16x8", "--dtype", "float64", "--threads", "1",
               "--repeats", "1", "--wide")
    head = next(ln for ln in wide.stdout.splitlines() if ln.lstrip().startswith("case")
                and " thr " in ln)
    for col in ("MiB", "min-max", "5S", "/5S", "8S", "/8S"):
        assert f" {col} " in head + " "


def test_ctrl_c_in_bench_reports_what_was_measured(tmp_path):
    import json
    import signal
    out = tmp_path / "partial.json"
    p = subprocess.Popen([sys.executable, "-m", "cybatchnorm", "bench", "--cases",
                          "16x8," + ",".join(["2048x512"] * 1000), "--dtype", "float32",
                          "--threads", "1", "--repeats", "3", "--json", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         # a background job of a shell starts with SIGINT ignored, and
                         # Python then installs no handler: give the child the default
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    for line in p.stdout:            # wait until the first case is measured
        seen.append(line)
        if " thr: " in line:
            break
    p.send_signal(signal.SIGINT)
    rest, err = p.communicate(timeout=120)
    text = "".join(seen) + rest
    assert p.returncode == 130, (err, text[-3000:])
    assert "Traceback" not in err
    assert "interrupted:" in text and "of 1001 cases measured" in text
    assert "targets" in text                          # the table and the targets of those
    data = json.loads(out.read_text())
    assert data["meta"]["interrupted"] is True
    assert 1 <= len(data["results"]) < 1001 and data["results"][0]["shape"] == [16, 8]


def test_program_name():
    from cybatchnorm.__main__ import program_name
    assert program_name("/venv/lib/python3.11/site-packages/cybatchnorm/__main__.py") == \
        "python -m cybatchnorm"
    assert program_name("/venv/bin/cybatchnorm") == "cybatchnorm"


def test_console_script_names_itself():
    import os
    import shutil
    script = shutil.which("cybatchnorm", path=os.path.dirname(sys.executable))
    if script is None:
        if os.environ.get("CYBATCHNORM_EXPECT_OPENMP") is not None:   # set by tox: installed
            pytest.fail("the cybatchnorm console script is not installed beside python")
        pytest.skip("cybatchnorm is not installed (run from the source tree)")
    r = subprocess.run([script, "--n", "0"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("cybatchnorm: error: argument --n"), r.stderr
    r = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert r.stdout.startswith("usage: cybatchnorm ")
