"""Issue 11 §5: a SQLite writer SIGSTOPped while it holds the writer lock hangs nobody.

Real processes and a real flock: the holder is stopped in the middle of a write
transaction; another store gets a clear error after its lock timeout instead of
waiting for ever, reads go on, and the retry succeeds once the holder is gone.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from flannel_ext._stores.sqlite import SqliteStore, WriterLockTimeout

HOLDER = textwrap.dedent("""
    import sys, time
    from flannel_ext._stores.sqlite import SqliteStore
    store = SqliteStore(sys.argv[1])
    with store._write(store._conn) as conn:
        store._put(conn, "10.50.9.0-24", '{"PublicIP":"192.168.77.9"}', None)
        print("held", flush=True)
        time.sleep(120)
""")
VALUE = '{"PublicIP":"192.168.77.3","BackendType":"extension"}'


@pytest.fixture
def stopped_holder(tmp_path):
    path = tmp_path / "leases.db"
    SqliteStore(path).close()
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    os.kill(proc.pid, signal.SIGSTOP)
    yield path, proc
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        os.kill(proc.pid, signal.SIGCONT)
    proc.wait()
    proc.stdout.close()


def test_stopped_writer_gives_a_clear_error_then_the_retry_works(stopped_holder):
    path, holder = stopped_holder
    store = SqliteStore(path, lock_timeout=1.0)
    with pytest.raises(WriterLockTimeout) as info:
        store.put_raw("10.50.3.0-24", VALUE)
    message = str(info.value)
    assert f"{path}-lock" in message and "stayed taken for 1s" in message and "retry" in message
    # Readers never wait for the writer lock.
    assert [lease.key for lease in store.list().leases] == []
    os.kill(holder.pid, signal.SIGKILL)   # the holder dies: the kernel drops its flock
    os.kill(holder.pid, signal.SIGCONT)
    holder.wait()
    store.put_raw("10.50.3.0-24", VALUE)  # the retry
    assert [lease.key for lease in store.list().leases] == ["10.50.3.0-24"]
    store.close()


def test_a_released_lock_wakes_a_waiter(tmp_path):
    """The timeout does not slow the common case: a waiter wakes when the holder lets go."""
    path = tmp_path / "leases.db"
    store = SqliteStore(path, lock_timeout=60.0)
    with subprocess.Popen([sys.executable, "-c", HOLDER.replace("time.sleep(120)", "input()"), str(path)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout.readline().strip() == "held"
        proc.stdin.write("\n")
        proc.stdin.flush()                     # the holder commits and exits while we wait
        store.put_raw("10.50.3.0-24", VALUE)
        assert proc.wait(30) == 0
    assert sorted(lease.key for lease in store.list().leases) == ["10.50.3.0-24", "10.50.9.0-24"]
    store.close()
