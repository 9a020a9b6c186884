"""Multi-host: two local processes train with the same losses as one process; SIGTERM saves and exits."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from gato_jax.train.checkpoint import Checkpointer

WORKER = os.path.join(os.path.dirname(__file__), "train_worker.py")
REPO = os.path.dirname(os.path.dirname(__file__))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    return {**os.environ, "PYTHONPATH": REPO}


def test_two_processes_match_one_process(tmp_path):
    steps = 4
    single = tmp_path / "single"
    subprocess.run([sys.executable, WORKER, str(single), str(steps)], check=True, env=_env(), timeout=300)
    multi = tmp_path / "multi"
    address = f"127.0.0.1:{_free_port()}"
    procs = [subprocess.Popen([sys.executable, WORKER, str(multi), str(steps), address, str(i), "2"], env=_env())
             for i in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    expected = json.loads((single / "losses_0.json").read_text())
    for i in range(2):
        np.testing.assert_allclose(json.loads((multi / f"losses_{i}.json").read_text()), expected, rtol=1e-5)
    assert Checkpointer(str(multi)).latest_step() == steps


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(tmp_path):
    proc = subprocess.Popen([sys.executable, WORKER, str(tmp_path), "100000"], env=_env())
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    saved = Checkpointer(str(tmp_path)).latest_step()
    assert saved is not None and saved >= 3
