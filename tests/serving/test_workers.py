"""`bggen-serve --workers N`: N uvicorn worker processes on one port, each with a click journal
slot of its own (a flock held for the life of the process)."""
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from services import free_ports

from bggen_assets.serving.api import claim_journal


def locked(path: Path) -> bool:
    """Whether another open file description holds the flock of path."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_each_claim_takes_the_first_free_journal_slot(tmp_path):
    base = str(tmp_path / "serving" / "clicks.journal")
    assert claim_journal(base) == base + ".0"
    assert claim_journal(base) == base + ".1"  # .0 is held (by this process, on another descriptor)
    assert locked(Path(base + ".0.lock")) and locked(Path(base + ".1.lock"))


def test_bggen_serve_with_two_workers_serves_and_each_worker_holds_a_journal(tmp_path):
    port = free_ports(1)[0]
    journal = tmp_path / "clicks.journal"
    env = {**os.environ, "BGGEN_DATA_DIR": str(tmp_path / "data"), "BGGEN_CLICK_JOURNAL": str(journal)}
    proc = subprocess.Popen([sys.executable, "-m", "bggen_assets.serving.api", "--port", str(port), "--workers", "2"],
                            env=env, cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        slots = [journal.with_name(f"clicks.journal.{i}.lock") for i in range(2)]
        while not all(p.exists() and locked(p) for p in slots):
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "two workers did not start"
            time.sleep(0.2)
        url = f"http://127.0.0.1:{port}/health/live"
        answered = 0
        while answered < 8:  # whichever worker takes the connection answers
            try:
                r = httpx.get(url, timeout=10)
            except httpx.ConnectError:  # the workers build their apps before uvicorn serves
                assert proc.poll() is None and time.monotonic() < deadline, "bggen-serve did not answer"
                time.sleep(0.2)
                continue
            assert r.status_code == 200 and r.json() == {"status": "ok"}
            answered += 1
        assert not journal.with_name("clicks.journal.2.lock").exists()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    assert not any(locked(p) for p in slots)  # released with the processes
