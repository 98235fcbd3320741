"""Test-session hygiene: temporary files go under pytest's own temporary folder (removed when every test passed,
``tmp_path_retention_policy = "failed"`` in pyproject.toml), and a test that leaves anything new in the repository
makes the session fail, naming the paths."""

from __future__ import annotations

import os
import subprocess
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARMLESS = ("__pycache__/", ".pytest_cache/", ".egg-info/")  # bytecode (numba's too), pytest's cache, the install


def _untracked_in_repo() -> set[str] | None:
    """Untracked and ignored paths of the checkout (``git status``), bytecode and caches left out; None outside git."""
    try:
        res = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--ignored"], capture_output=True, text=True,
                             timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0:
        return None
    paths = {line[3:] for line in res.stdout.splitlines() if line[:2] in ("??", "!!")}
    return {p for p in paths if not any(h in p for h in HARMLESS)}


@pytest.fixture(scope="session", autouse=True)
def session_temp_dir(tmp_path_factory):
    """TMPDIR (and ``tempfile``) point into pytest's temporary folder for the session, subprocesses and servers
    included, so nothing that a test or the code under test puts into the temp folder outlives a passing run."""
    path = str(tmp_path_factory.mktemp("tmp", numbered=False))
    saved = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = tempfile.tempdir = path
    yield path
    if saved[0] is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = saved[0]
    tempfile.tempdir = saved[1]


@pytest.fixture(scope="session", autouse=True)
def pytorch_backend_unless_a_test_chooses():
    """Bundle runs, registrations, the pyfunc and MONAI Label score with PyTorch here (``SCRD_BACKEND=torch``, inherited
    by servers), so that each test does not spend ~10 s exporting its own model to ONNX; the compiled backends are
    tested where they are chosen explicitly (test_backends, test_consistency, test_registry's REST test), and CI runs
    the README's main command, before the tests, with the default ``auto``."""
    saved = os.environ.get("SCRD_BACKEND")
    os.environ["SCRD_BACKEND"] = saved or "torch"
    yield
    if saved is None:
        os.environ.pop("SCRD_BACKEND", None)


@pytest.fixture(scope="session", autouse=True)
def nothing_written_into_repository():
    before = _untracked_in_repo()
    yield
    after = _untracked_in_repo()
    if before is not None and after is not None and after - before:
        pytest.fail(f"tests wrote into the repository {REPO}: {sorted(after - before)} (use tmp_path, and MLflow "
                    "tracking URIs under it)", pytrace=False)
