"""Every chapter of the site as a Jupyter notebook, generated from its page.

    python docs/scripts/make_notebooks.py OUTDIR

Writes OUTDIR/<page>.ipynb for every page of docs/ that has code. The prose
becomes Markdown cells; every doctest and testcode block becomes a code
cell (prompts stripped, the expected output left for the reader to see when
the cell runs); a block whose expected output is a traceback is tagged
``raises-exception`` (the error is the point of the example); a collapsed
solution becomes a bold "Solution" line followed by its cells; a generated
table the page includes is inlined; a figure is named by its caption. The
first cell is the doctest setup of the site (``conf.py``), so the notebook
runs on its own; a page that reads results the build computed
(``GENERATED``) carries those files inside its first cell.

``tests/drivers/notebook_check.py`` (``tox -e notebooks``) executes every notebook.
"""
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.dirname(HERE)

FENCE = re.compile(r"^(\s*)(`{3,})\{([\w-]+)\}\s*(.*)$")
PLAIN = re.compile(r"^(\s*)(`{3,})(\S*)\s*$")
LABEL = re.compile(r"^\s*\([\w-]+\)=\s*$")          # a MyST target line: nothing to show
# a doctest that imports the build's own scripts checks the build, not the reader's
# understanding, and a notebook has no docs/scripts: such cells are left out
SCRIPTS = sorted(f[:-3] for f in os.listdir(HERE) if f.endswith(".py"))
BUILD_CHECK = re.compile(r"^\s*(import|from)\s+(" + "|".join(SCRIPTS) + r")\b", re.M)

SETUP = """import numpy as np
import cybatchnorm as bn
from cybatchnorm import graph, nodes, staged
np.set_printoptions(precision=4, suppress=True)"""


def _close(lines, i, indent, ticks):
    # the index of the line closing the fence opened at lines[i]
    for j in range(i + 1, len(lines)):
        if lines[j].rstrip() == indent + ticks:
            return j
    raise ValueError(f"unclosed fence opened at line {i + 1}: {lines[i]!r}")


def _dedent(lines, indent):
    return [ln[len(indent):] if ln.startswith(indent) else ln.lstrip() for ln in lines]


def _doctest_cells(body):
    """[(source, raises), ...] for a doctest block: prompts stripped, the
    expected output dropped, and a new cell after every example that has
    output, so that running the notebook shows each result as the page does
    (a cell shows only its last expression)."""
    cells, code, raises, in_output = [], [], False, False

    def end():
        nonlocal code, raises
        if code:
            source = re.sub(r"\s*# doctest: [+-]\w+(, *[+-]\w+)*", "", "\n".join(code))
            cells.append((source.strip("\n"), raises))
        code, raises = [], False

    for ln in body:
        if ln.startswith(">>> ") or ln.rstrip() == ">>>":
            if in_output:
                end()
            code.append(ln[4:])
            in_output = False
        elif (ln.startswith("... ") or ln.rstrip() == "...") and not in_output:
            code.append(ln[4:])
        elif ln.strip():
            in_output = True
            raises = raises or ln.startswith("Traceback")
    end()
    return cells


def convert(lines):
    """Cells (dicts of nbformat 4) for the Markdown lines of a page."""
    cells, text = [], []

    def flush():
        body = "\n".join(text).strip("\n")
        if body.strip():
            cells.append({"cell_type": "markdown", "metadata": {}, "source": body})
        text.clear()

    def code(source, raises=False):
        flush()
        meta = {"tags": ["raises-exception"]} if raises else {}
        cells.append({"cell_type": "code", "metadata": meta, "source": source,
                      "execution_count": None, "outputs": []})

    i = 0
    while i < len(lines):
        ln = lines[i]
        m = FENCE.match(ln)
        if m is None:
            p = PLAIN.match(ln)
            if p is not None:           # a listing: kept as it is, in the prose
                j = _close(lines, i, p.group(1), p.group(2))
                text.extend(lines[i:j + 1])
                i = j + 1
                continue
            if not LABEL.match(ln):
                text.append(ln)
            i += 1
            continue
        indent, ticks, name, arg = m.groups()
        j = _close(lines, i, indent, ticks)
        body = _dedent(lines[i + 1:j], indent)
        opts = [b for b in body if b.startswith(":")]
        content = [b for b in body if not b.startswith(":")]
        if name == "doctest":
            for source, raises in _doctest_cells(content):
                if not BUILD_CHECK.search(source):
                    code(source, raises)
        elif name in ("testcode", "testsetup"):
            code("\n".join(content).strip("\n"))
        elif name == "dropdown":
            text.append(f"**{arg.strip()}**")
            flush()
            cells.extend(convert(content))
        elif name == "figure":
            caption = " ".join(c.strip() for c in content if c.strip())
            alt = next((o[len(":alt:"):].strip() for o in opts if o.startswith(":alt:")), "")
            text.append(f"*Figure* ({os.path.basename(arg)}, on the site): {caption or alt}")
        elif name == "include":
            with open(os.path.join(DOCS, arg.strip())) as fh:
                text.extend(fh.read().splitlines())
        elif name in ("eval-rst", "testoutput"):
            pass
        else:                           # math and the like: Markdown renders them
            text.extend(lines[i:j + 1])
        i = j + 1
    flush()
    return cells


def _setup_cell(page_text):
    # the site's doctest setup; the build's results a page reads, embedded
    files = sorted(set(re.findall(r'GENERATED, "([\w.-]+)"', page_text)))
    src = SETUP
    if files:
        data = {}
        for name in files:
            with open(os.path.join(DOCS, "_generated", name)) as fh:
                data[name] = fh.read()
        src += ("\n# what the build computed for this chapter, carried by the notebook\n"
                "import os, tempfile\nGENERATED = tempfile.mkdtemp()\n"
                f"for _name, _text in {data!r}.items():\n"
                "    with open(os.path.join(GENERATED, _name), 'w') as _f:\n"
                "        _f.write(_text)")
    return {"cell_type": "code", "metadata": {"tags": ["setup"]}, "source": src,
            "execution_count": None, "outputs": []}


def notebook(page):
    """The notebook of docs/<page>.md, or None when the page has no code."""
    with open(os.path.join(DOCS, page + ".md")) as fh:
        text = fh.read()
    cells = convert(text.splitlines())
    if not any(c["cell_type"] == "code" for c in cells):
        return None
    for c in cells:       # nbformat keeps sources as lists of lines
        c["source"] = c["source"].splitlines(keepends=True)
    setup = _setup_cell(text)
    setup["source"] = setup["source"].splitlines(keepends=True)
    return {"nbformat": 4, "nbformat_minor": 5, "cells": [setup] + cells,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                        "language": "python"},
                         "language_info": {"name": "python"}}}


def pages():
    """The pages that become notebooks: every chapter with code (not the API reference)."""
    names = sorted(f[:-3] for f in os.listdir(DOCS) if f.endswith(".md") and f != "README.md")
    return [n for n in names if n != "api"]


def main(outdir):
    os.makedirs(outdir, exist_ok=True)
    written = []
    for page in pages():
        nb = notebook(page)
        if nb is None:
            continue
        path = os.path.join(outdir, page + ".ipynb")
        # cell ids: stable, so that the same page gives the same bytes
        for k, c in enumerate(nb["cells"]):
            c["id"] = f"{page}-{k}"
        with open(path, "w") as fh:
            json.dump(nb, fh, indent=1, ensure_ascii=False)
            fh.write("\n")
        written.append(path)
    return written


if __name__ == "__main__":
    print("\n".join(main(sys.argv[1] if len(sys.argv) > 1 else ".")))
