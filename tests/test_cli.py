"""The command line as a newcomer meets it: every command the README shows works with the install
that README command 1 makes, and piping into a reader that stops early is quiet."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions

import pytest
from packaging.requirements import Requirement


def _install_closure(name: str) -> set[str]:
    """Normalised names of the distributions ``pip install NAME`` brings in (no extras of NAME),
    following each requirement's own extras: what README command 1 installs."""
    norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()  # noqa: E731
    seen: set[str] = set()
    todo = [(name, frozenset())]
    while todo:
        dist_name, extras = todo.pop()
        key = (norm(dist_name), extras)
        if key[0] in seen and not extras:
            continue
        seen.add(key[0])
        try:
            reqs = distribution(dist_name).requires or []
        except PackageNotFoundError:
            continue
        for line in reqs:
            req = Requirement(line)
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((req.name, frozenset(req.extras)))
    return seen


BLOCKER = textwrap.dedent("""
    import importlib.abc, runpy, sys
    allowed, top = {allowed!r}, {top!r}

    class Block(importlib.abc.MetaPathFinder):
        # a module of an installed distribution that README command 1 would not install is missing
        def find_spec(self, name, path=None, target=None):
            if blocked(name):
                raise ModuleNotFoundError(f"No module named {{name!r}} (not installed by README command 1)")
            return None

    def blocked(name):
        dists = top.get(name.split(".")[0])
        return bool(dists) and not any(d in allowed for d in dists)

    sys.meta_path.insert(0, Block())
    # plugin discovery lists installed modules by name: hide the blocked ones there too
    import pkgutil
    _iter = pkgutil.iter_modules
    pkgutil.iter_modules = lambda *a, **k: (m for m in _iter(*a, **k) if not blocked(m.name))
    sys.argv = ["snakemake", *sys.argv[1:]]
    runpy.run_module("snakemake", run_name="__main__")
""")

SNAKEFILE = textwrap.dedent("""
    rule all:
        output: report("out.txt", caption="caption.rst", category="C")
        shell: "echo hi > {output}"
""")


@pytest.mark.slow
def test_snakemake_report_works_with_the_readme_install(tmp_path):
    """README: `snakemake --report report.html` after command 1 (`pip install -e .`). Snakemake's
    report needs pygments, which only its `reports` extra installs."""
    norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()  # noqa: E731
    allowed = _install_closure("disttgl")
    assert "snakemake" in allowed and "torch" in allowed
    top = {mod: [norm(d) for d in dists] for mod, dists in packages_distributions().items()}
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    (tmp_path / "caption.rst").write_text("A caption.\n")
    run = lambda *a: subprocess.run([sys.executable, "-c", BLOCKER.format(allowed=allowed, top=top), *a],  # noqa: E731
                                    cwd=tmp_path, capture_output=True, text=True, timeout=300)
    built = run("--cores", "1")
    assert built.returncode == 0, built.stderr[-2000:]
    rep = run("--report", "report.html")
    assert rep.returncode == 0, rep.stderr[-2000:]
    assert (tmp_path / "report.html").stat().st_size > 1000


def test_output_into_a_closed_pipe_exits_quietly(tmp_path):
    g = tmp_path / "g.h5"
    subprocess.run([sys.executable, "-m", "disttgl", "synth", "--out", str(g), "--events", "500", "--nodes", "20"],
                   check=True, capture_output=True)
    # `disttgl info g.h5 | head -0`: the reader is gone before the first line is written
    p = subprocess.Popen([sys.executable, "-m", "disttgl", "info", str(g)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 141  # 128 + SIGPIPE, as a Unix tool killed by it reports in a shell
    assert err == "", err
