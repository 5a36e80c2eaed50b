"""A real `tritonserver` for the length of a `with` block: 127.0.0.1, free ports, readiness, always stopped.

The server runs in its own process group and dies with its parent (PR_SET_PDEATHSIG), and the
`with` block stops it on success, failure, Ctrl-C and SIGTERM (Snakemake's way of cancelling a
job). Its output goes to a log file that the caller keeps; a server that does not come up fails
with the last lines of that log.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from workflow_scripts.core.deps import ROOT
from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.serving.env import TritonEnv

HOST = "127.0.0.1"
LOG_TAIL = 15


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def check_port_free(port: int, what: str) -> None:
    """One clear line if `port` cannot be bound on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            raise PlanforgeError(
                f"{what}: port {HOST}:{port} is already in use; stop what holds it, or set serving.port: null "
                "to let planforge pick a free port"
            ) from None


def log_tail(path: Path, lines: int = LOG_TAIL) -> str:
    """The server's error lines (why a model did not load), then its last lines."""
    try:
        text = [ln for ln in path.read_text(errors="replace").strip().splitlines() if not ln.startswith(("|", "+"))]
    except OSError:
        return "(no server log)"
    errors = [ln for ln in text if ln.startswith("E") and "CudaDriverHelper" not in ln and "CUDA driver" not in ln]
    tail = [ln for ln in text[-lines:] if ln not in errors[:8]]
    return "\n".join([*errors[:8], *tail[-(lines - min(len(errors), 8)) :]]) or "(server log is empty)"


def session_processes(sid: int) -> list[int]:
    """Pids of the live processes of session `sid` (zombies left out: they run nothing and hold no port)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # exited while read
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(int(proc.name))
    return found


def _die_with_parent() -> None:
    # runs in the child before exec: SIGTERM it if the workflow process dies, even by SIGKILL
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class TritonServer:
    """One running server: its ports, log and process."""

    proc: subprocess.Popen
    http_port: int
    grpc_port: int
    log: Path
    exit_timeout: float = 5.0  # tritonserver --exit-timeout-secs: how long it waits for in-flight requests on stop

    @property
    def http_url(self) -> str:
        return f"{HOST}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    def url(self, protocol: str) -> str:
        return self.grpc_url if protocol == "grpc" else self.http_url

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, grace: float = 10.0) -> None:
        """Stop the server and everything it started; never an error (the job's result is already measured).

        SIGTERM to its process group; tritonserver then waits up to `exit_timeout` s for requests in flight and
        exits (with code 1 and "Exit timeout expired" where clients still held some: not a failure of ours).
        After `exit_timeout` + `grace` s, SIGKILL to the group; then to any process left in its session (python
        backend stubs outlive a server that was killed), until none is left."""
        sid = self.proc.pid  # started with start_new_session: the server leads its own session and group
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(sid, signal.SIGTERM)
            try:
                self.proc.wait(self.exit_timeout + grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(sid, signal.SIGKILL)
                self.proc.wait()
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(sid, signal.SIGKILL)
            left = session_processes(sid)
            if not left or time.monotonic() > deadline:
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)

    def failure(self, what: str) -> PlanforgeError:
        """An error naming the log, with its last lines (why the server stopped or never came up)."""
        try:
            failed = sorted(set(re.findall(r"failed to load '([^']+)'", self.log.read_text(errors="replace"))))
        except OSError:
            failed = []
        if failed:
            what += f": model {', '.join(failed)} failed to load"
        return PlanforgeError(f"{what}; last lines of {self.log}:\n{log_tail(self.log)}")


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit inside the block, so `finally` stops the server."""

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def fresh_log(log: Path) -> Path:
    """A job's server log, emptied (its folder made): every server the job starts then appends to it."""
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    return log


@contextlib.contextmanager
def serve(
    env: TritonEnv,
    repository: Path,
    log: Path,
    http_port: int | None = None,
    grpc_port: int | None = None,
    timeout: float = 120.0,
    project: Path = ROOT,
    models: list[str] | None = None,
    exit_timeout: float = 5.0,
) -> Iterator[TritonServer]:
    """Start tritonserver on `repository`, wait until it is ready, yield it, and always stop it.

    `exit_timeout`: how long a stop waits for requests still in flight (tritonserver's --exit-timeout-secs,
    30 s by default) before the server and what it started are killed (TritonServer.stop).

    `models`: load only these (explicit model control; a job measuring one model does not start the others'
    python stubs, e.g. the Pi0 stub's torch); None loads the whole repository.
    """
    repository = Path(repository).resolve()
    if not (repository / "planforge.json").is_file() and not any(repository.glob("*/config.pbtxt")):
        raise PlanforgeError(f"{repository}: not a model repository (no */config.pbtxt); rerun the triton rule")
    for port, what in ((http_port, "serving.http_port"), (grpc_port, "serving.grpc_port")):
        if port:
            check_port_free(port, what)
    http_port = http_port or free_port()
    grpc_port = grpc_port or free_port()
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(env.tritonserver),
        f"--model-repository={repository}",
        f"--backend-directory={env.backend_dir}",
        f"--cache-directory={env.pytriton / 'caches'}",
        "--backend-config=python,shm-default-byte-size=4194304",
        f"--http-address={HOST}",
        f"--http-port={http_port}",
        f"--grpc-address={HOST}",
        f"--grpc-port={grpc_port}",
        "--allow-metrics=false",
        "--exit-on-error=true",
        "--strict-readiness=true",
        "--log-verbose=0",
        f"--exit-timeout-secs={max(0, math.ceil(exit_timeout))}",
    ]
    if models is not None:
        cmd += ["--model-control-mode=explicit", *(f"--load-model={m}" for m in models)]
    with _sigterm_as_exit(), open(log, "ab") as log_fh:
        log_fh.write(f"$ {' '.join(cmd)}\n".encode())
        log_fh.flush()
        proc = subprocess.Popen(
            cmd,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env.server_env(project),
            cwd=repository,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        server = TritonServer(proc, http_port, grpc_port, log, exit_timeout)
        try:
            deadline = time.monotonic() + timeout
            while not server.ready():
                if not server.alive():
                    text = log_tail(log)
                    if "Address already in use" in text or "address already in use" in text.lower():
                        raise PlanforgeError(
                            f"tritonserver: port {HOST}:{http_port} or {grpc_port} is already in use; stop what "
                            "holds it, or leave serving ports unset to pick free ones"
                        )
                    raise server.failure(f"tritonserver exited with code {proc.returncode} before it was ready")
                if time.monotonic() > deadline:
                    raise server.failure(f"tritonserver was not ready after {timeout:g} s")
                time.sleep(0.2)
            yield server
        finally:
            server.stop()
