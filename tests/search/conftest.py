"""Fixtures of the architecture-search tests: a PostgreSQL server, one torch thread."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL server on loopback (``.ci/postgres.sh``), stopped and deleted afterwards."""
    pytest.importorskip("psycopg", reason="no PostgreSQL driver (pip install 'convrnn[postgres]')")
    script = ROOT / ".ci" / "postgres.sh"
    # Not pytest's tmp_path: as root the server runs as the postgres user, which must reach the folder.
    folder = tempfile.mkdtemp(prefix="convrnn-pg-")
    port = _free_port()
    proc = subprocess.run([str(script), "start", folder, str(port)], capture_output=True, text=True, timeout=120)
    if proc.returncode == 3:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"no PostgreSQL server binaries ({proc.stderr.strip()}); .ci/run installs them")
    assert proc.returncode == 0, proc.stderr
    try:
        yield proc.stdout.strip()
    finally:
        subprocess.run([str(script), "stop", folder], capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def one_thread():
    """In-process training and models use one thread: the search's setting for parallel workers, and
    the tests share 2 busy cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
