"""A stop that reaches a worker in its first moments, before its loop handles signals, is a clean drain: a forked
worker keeps the stop signals blocked from the fork until its loop handles them; a fresh interpreter
(FASTMESH_ZYGOTE=0), which blocks them only once its main() runs, gets the supervisor's stop once it is ready."""
from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

from fastmesh._testbase.net import free_port
from fastmesh._testbase.run import Run

WAIT = 15.0         # seconds any one expected event may take before the test fails


def config(workers: int) -> str:
    backends = ", ".join(f'"127.0.0.1:{free_port()}"' for _ in range(2))
    return f"""
workers = {workers}
drain_timeout = "1s"
[admin]
listen = "127.0.0.1:{free_port()}"
[[listeners]]
name = "front"
listen = "127.0.0.1:{free_port()}"
cluster = "demo"
[clusters.demo]
endpoints = [{backends}]
[demo]
backends = [{backends}]
"""


def wait_started(run: Run, workers: int) -> None:
    """Poll the log closely until every worker slot has been started (forked): it is then still starting up."""
    deadline = time.monotonic() + WAIT
    while len(re.findall(r"w\d+ started \(pid \d+\)", run.log())) < workers:
        assert run.proc.poll() is None and time.monotonic() < deadline, run.log()
        time.sleep(0.001)


@pytest.mark.parametrize(("zygote", "loop"), [("1", "reactor"), ("1", "uvloop"), ("0", "reactor")])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_right_after_the_workers_start_drains_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        signum: signal.Signals, zygote: str, loop: str) -> None:
    # The supervisor stops each worker while the workers are still loading their config and building the data
    # plane: each must take it as its stop (exit 0), never die of the default action.
    monkeypatch.setenv("FASTMESH_LOOP", loop)
    monkeypatch.setenv("FASTMESH_ZYGOTE", zygote)     # "1": forked from the supervisor; "0": fresh interpreters
    workers = 4
    for attempt in range(3):
        where = tmp_path / f"{signum.name}-{zygote}-{loop}-{attempt}"
        where.mkdir()
        run = Run(where, config(workers), WAIT)
        try:
            wait_started(run, workers)
            run.proc.send_signal(signum)
            assert run.proc.wait(WAIT) == 0, run.log()
            log = run.log()
            assert "killed by signal" not in log and "exited unexpectedly" not in log, log
            assert len(re.findall(r"w\d+ \(pid \d+\) stopped: exit code 0", log)) == workers, log
        finally:
            run.stop()
