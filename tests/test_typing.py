"""The package ships its types: py.typed, stubs for the compiled modules, and
a user script that mypy --strict accepts (``tox -e typing``) also runs."""
import importlib.util
import os
import subprocess
import sys

import cybatchnorm

HERE = os.path.dirname(os.path.abspath(__file__))
PKG = os.path.dirname(cybatchnorm.__file__)


def test_py_typed_and_stubs_ship_with_the_package():
    assert os.path.exists(os.path.join(PKG, "py.typed"))
    for mod in ("_nodes", "_fused", "_split", "_norms", "_pool", "_openmp"):
        assert os.path.exists(os.path.join(PKG, mod + ".pyi")), mod


def _stub_names(mod):
    import ast
    with open(os.path.join(PKG, mod + ".pyi")) as fh:
        tree = ast.parse(fh.read())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign):
            names.add(node.target.id)
    return names


def test_stubs_match_the_compiled_modules():
    # every public name a compiled module has is in its stub, and no stub
    # names something the module lacks
    for mod in ("_nodes", "_fused", "_split", "_norms", "_pool", "_openmp"):
        m = importlib.import_module(f"cybatchnorm.{mod}")
        have = {n for n in vars(m)
                if not n.startswith("_") and not isinstance(getattr(m, n), type(os))}
        have -= {"np", "cython"}
        assert have == _stub_names(mod), mod


def test_stub_signatures_match_the_compiled_functions():
    import ast
    import inspect
    for mod in ("_nodes", "_fused", "_split", "_norms"):
        m = importlib.import_module(f"cybatchnorm.{mod}")
        with open(os.path.join(PKG, mod + ".pyi")) as fh:
            tree = ast.parse(fh.read())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                stub = [a.arg for a in node.args.args]
                real = list(inspect.signature(getattr(m, node.name)).parameters)
                assert stub == real, (mod, node.name)


def test_the_user_script_runs():
    r = subprocess.run([sys.executable, os.path.join(HERE, "typing_user.py")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
