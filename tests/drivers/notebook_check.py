"""Every chapter as a notebook, executed: run by `tox -e notebooks`.

Generates what the pages include and the notebooks made from them (the
docs' ``generate_all``, as a site build does), then runs every notebook from
its first cell to its last in a fresh Python kernel (nbclient), failing on
the first error: a cell whose example is an error (tagged
``raises-exception``) must raise one. Prints how many notebooks and code
cells ran.
"""
import glob
import os
import runpy
import sys

from nbclient import NotebookClient
import nbformat

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(workdir):
    conf = runpy.run_path(os.path.join(ROOT, "docs", "conf.py"))
    out = conf["generate_all"]()
    paths = sorted(glob.glob(os.path.join(out, "notebooks", "*.ipynb")))
    if len(paths) < 10:
        raise SystemExit(f"only {len(paths)} notebooks were generated: {paths}")
    os.makedirs(workdir, exist_ok=True)
    cells = 0
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": workdir}}).execute()
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            cells += 1
            errors = [o for o in cell.outputs if o.output_type == "error"]
            expected = "raises-exception" in cell.metadata.get("tags", [])
            if expected and not errors:
                raise SystemExit(f"{os.path.basename(path)}: a cell that should raise did not:\n"
                                 f"{cell.source}")
        print(f"  {os.path.basename(path):20s} ran, {sum(c.cell_type == 'code' for c in nb.cells)}"
              f" code cells")
    print(f"{len(paths)} notebooks, {cells} code cells: all ran")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
