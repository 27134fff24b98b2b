"""Tox envs that need a Debian package: a loud skip on a workstation, a
failure under ``CI=true`` (where ``.ci/run`` installs the package)."""
import os

BAR = "!" * 78


def in_ci():
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def missing(env, what, install):
    """Report that ``what`` is missing for ``tox -e env``; return the exit status."""
    msg = f"tox -e {env}: {what} is not installed (Debian: apt-get install {install})"
    if in_ci():
        print(f"{msg}; CI is set, so this is a failure", flush=True)
        return 1
    print(f"{BAR}\n{msg}\nSKIPPED: nothing was checked; install it and run tox -e {env} "
          f"again\n{BAR}",
          flush=True)
    return 0
