"""Sphinx configuration of the cybatchnorm site (Markdown pages via MyST).

Figures are never drawn by hand: before an HTML build, the scripts in
docs/scripts/ regenerate everything under docs/_generated/ from the package
itself (the graph from cybatchnorm.graph.NODES, the training curves from a run
that uses cybatchnorm.BatchNorm).
"""
import os
import sys

import cybatchnorm

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "scripts"))

project = "cybatchnorm"
author = "the cybatchnorm developers"
copyright = "2026, the cybatchnorm developers"
release = cybatchnorm.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",   # bundles MathJax into _static: math renders offline
    "sphinx_design",            # dropdowns: the collapsible solutions of the exercises
    "sphinx_copybutton",        # a copy button on every code block
]

# the button copies what a reader would type: prompts (>>> , ... , $ ) stripped and
# the doctests' expected output left out
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True
copybutton_only_copy_prompt_lines = True

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
source_suffix = {".md": "markdown"}
# _generated/ holds figures and the Markdown the pages {include}: never pages of their own
exclude_patterns = ["_build", "scripts", "README.md", "_generated"]
templates_path = []

# Furo: a maintained theme made for long reading (one quiet column, a sidebar of
# chapters, a per-page table of contents, dark mode), whose assets all ship in
# the package (system fonts, no CDN), so the built site reads offline. It wraps
# every table and display formula in a box of its own that scrolls sideways,
# so a wide table never widens the page. custom.css widens the reading column
# so that the doctests fit without scrolling.
html_theme = "furo"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_title = "cybatchnorm"
html_theme_options = {"navigation_with_keys": True}

# autodoc / numpydoc-style docstrings through napoleon
autodoc_member_order = "bysource"
autodoc_typehints = "none"
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False

# nitpicky: every cross-reference must resolve, except the plain-words types
# of numpydoc "Parameters" sections
nitpicky = True
nitpick_ignore_regex = [
    (r"py:class", r"(array_like|ndarray|array|optional|callable|file-like|"
                  r"int|float|str|bool|dict|tuple|object|None|default.*|"
                  r"shape.*|float32|float64|numpy\..*|keyword-only|iterable.*|"
                  r"of|or|in|x|C|N|D|R|M|P|G|spatial.*|float in.*|\(C,\)|\(N, .*|\(R.*|\(P,\)|"
                  r"batch.*|normalized_shape.*|\d.*|\[0|1\])"),
]

# every doctest on the site and in the docstrings starts from these names
doctest_global_setup = f"""
import numpy as np
import cybatchnorm as bn
from cybatchnorm import graph, nodes, staged
np.set_printoptions(precision=4, suppress=True)
GENERATED = {os.path.join(HERE, "_generated")!r}   # what docs/scripts/ computed for this build
"""
doctest_test_doctest_blocks = "default"


def generate_all(out=None):
    """Everything the pages include, computed by the package: figures, tables,
    results, and last the chapters as notebooks (which embed some of them).
    Returns ``out``. Each script is deterministic and takes seconds."""
    out = os.path.join(HERE, "_generated") if out is None else out
    os.makedirs(out, exist_ok=True)
    import chapter_figures
    import check_table
    import cost_table
    import digits_experiment
    import draw_circuit
    import draw_graph
    import make_notebooks
    import perf_report
    draw_graph.main(out)
    draw_circuit.main(out)
    check_table.main(out)
    chapter_figures.main(out)
    cost_table.main(out)
    digits_experiment.main(out)
    perf_report.main(os.path.join(HERE, "data", "bench.json"), out)
    make_notebooks.main(os.path.join(out, "notebooks"))
    return out


def _generate_figures(app):
    # every builder needs them (a missing image is a warning, and warnings are errors)
    generate_all()


def _notebook_link(app, docname, source):
    # under each chapter's title: the link to the chapter as a notebook
    path = os.path.join(HERE, "_generated", "notebooks", docname + ".ipynb")
    if not os.path.exists(path):
        return
    title, _, rest = source[0].partition("\n")
    source[0] = (f"{title}\n\n{{download}}`Download this chapter as a notebook "
                 f"<_generated/notebooks/{docname}.ipynb>` (every example a code cell, "
                 f"ready to run and change)\n{rest}")


def setup(app):
    app.connect("builder-inited", _generate_figures)
    app.connect("source-read", _notebook_link)
