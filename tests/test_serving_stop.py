"""Stopping a real tritonserver while clients hold connections: the stop succeeds, in bounded time, and leaves no
process of the server's session (its python backend stubs included).

The model repository is one python-backend model written here (a slow identity), so no workflow run is needed;
the serving environment is the one the workflow makes (PLANFORGE_TRITON_ENV, see tests/test_serving.py).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from workflow_scripts.serving.env import ensure
from workflow_scripts.serving.server import HOST, serve, session_processes

pytestmark = pytest.mark.workflow

CONFIG = """name: "slow"
backend: "python"
max_batch_size: 0
input [{ name: "X", data_type: TYPE_FP32, dims: [1] }]
output [{ name: "Y", data_type: TYPE_FP32, dims: [1] }]
instance_group [{ kind: KIND_CPU, count: 1 }]
"""
MODEL = """import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep(120)  # a request still in flight when the server is told to stop
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy())])
            for r in requests
        ]
"""


@pytest.fixture(scope="module")
def triton_env():
    from tests.test_serving import REPO

    path = os.environ.get("PLANFORGE_TRITON_ENV") or str(REPO / ".venv-triton")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLANFORGE_TRITON_ENV", path)
        yield ensure()


def _repository(root: Path) -> Path:
    (root / "slow" / "1").mkdir(parents=True)
    (root / "slow" / "config.pbtxt").write_text(CONFIG)
    (root / "slow" / "1" / "model.py").write_text(MODEL)
    return root


def _in_flight(port: int, done: list) -> None:
    """An inference request that the model holds for 2 minutes: the client waits on its open connection."""
    body = json.dumps({"inputs": [{"name": "X", "shape": [1], "datatype": "FP32", "data": [1.0]}]})
    conn = http.client.HTTPConnection(HOST, port, timeout=300)
    try:
        conn.request("POST", "/v2/models/slow/infer", body, {"Content-Type": "application/json"})
        done.append(conn.getresponse().status)
    except OSError as exc:  # the server went away under it: what a stop does to a waiting client
        done.append(exc.__class__.__name__)


def test_a_stop_with_open_client_connections_succeeds_and_leaves_no_process(tmp_path, triton_env):
    repo = _repository(tmp_path / "repo")
    with serve(triton_env, repo, tmp_path / "server.log", timeout=60, exit_timeout=3) as server:
        sid = os.getsid(server.proc.pid)
        assert sid == server.proc.pid  # the server leads its own session
        idle = socket.create_connection((HOST, server.http_port))  # a keep-alive client that sent one request
        idle.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
        assert b"200" in idle.recv(4096).split(b"\r\n", 1)[0]
        done: list = []
        client = threading.Thread(target=_in_flight, args=(server.http_port, done), daemon=True)
        client.start()
        time.sleep(2)  # the request reaches the model and waits there
        assert not done, done
        members = session_processes(sid)
        assert len(members) >= 2, members  # the server and its python backend stub
        started = time.monotonic()
    stopped_in = time.monotonic() - started  # the `with` block's exit stopped it, and raised nothing
    idle.close()
    client.join(30)
    assert not server.alive()
    assert session_processes(sid) == [], "processes of the server's session outlived the stop"
    # the server gave up on the request after its exit timeout and exited itself (1: "Exit timeout expired"),
    # well before the kill that would follow it (3 s + 10 s of grace)
    print(f"stop: {stopped_in:.1f} s, tritonserver exit code {server.proc.returncode}, client saw {done}")
    assert server.proc.returncode in (0, 1) and stopped_in < 3 + 5, (stopped_in, server.proc.returncode)
