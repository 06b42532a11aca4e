"""The repository's shape: the stdlib `platform` stays importable, the library imports no job code."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest


def test_platform_is_the_stdlib_module_from_the_repo_root(repo):
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import platform, sysconfig; print(platform.__file__); print(sysconfig.get_path('stdlib'))",
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    module, stdlib = out.stdout.split()
    assert module.startswith(stdlib), module
    assert not (repo / "platform" / "__init__.py").exists()


def test_vidrip_imports_from_the_source_root(repo):
    import vidrip

    assert (repo / "platform" / "vidrip") in Path(vidrip.__file__).resolve().parents


def _imported_modules(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_library_never_imports_jobs_serve_apps_or_tests(repo):
    offenders = [
        (str(p.relative_to(repo)), m)
        for p in (repo / "platform" / "vidrip").rglob("*.py")
        for m in _imported_modules(p)
        if m.split(".")[0] in {"jobs", "serve_apps", "tests", "conftest"}
    ]
    assert offenders == []


@pytest.mark.parametrize("folder", ["platform/vidrip", "jobs"])
def test_every_module_has_a_docstring(repo, folder):
    missing = [
        str(p.relative_to(repo))
        for p in (repo / folder).rglob("*.py")
        if ast.get_docstring(ast.parse(p.read_text())) is None
    ]
    assert missing == []


def test_every_job_says_how_to_run_it(repo):
    jobs = sorted((repo / "jobs").glob("*.py"))
    assert jobs
    for job in jobs:
        doc = ast.get_docstring(ast.parse(job.read_text()))
        assert "Run as" in doc and f"jobs/{job.name}" in doc, job.name


def test_pip_check_is_clean():
    out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_research_use_notice_in_readme(repo):
    text = (repo / "README.md").read_text()
    assert "research use only" in text.lower()
    assert "make demo" in text and "make test" in text
