"""A real single-node Slurm cluster on 127.0.0.1 for the tests: munged, slurmctld and slurmd started
directly (no systemd) with a generated slurm.conf under a temporary directory, and always stopped.

Debian 12's `slurm-wlm` (22.05) and `munge`: `apt-get install slurm-wlm munge` (`.ci/run` does it).
Without slurmdbd, `sacct` has no accounting database; the cluster writes the job completion log
(`JobCompType=jobcomp/filetxt`) that `sacct --completion` reads: job id, name, state, partition, time
limit, start and end, node and the resources (TRES) each job was given.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "sacct", "scancel", "scontrol", "sinfo")
SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


class ClusterUnavailable(RuntimeError):
    """The binaries are missing or the daemons cannot start here: the caller skips with this reason."""


def which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))


def missing_binaries() -> list[str]:
    return [b for b in (*DAEMONS, *CLIENTS) if which(b) is None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_facts() -> tuple[str, int, int]:
    """The node's name (this host's short name), its CPUs and its memory in MB as slurmd sees them."""
    host = socket.gethostname().split(".")[0]
    out = subprocess.run([which("slurmd"), "-C"], capture_output=True, text=True, timeout=30).stdout
    facts = dict(kv.split("=", 1) for kv in out.split() if "=" in kv)
    cpus = int(facts.get("CPUs", os.cpu_count() or 1))
    mem = int(facts.get("RealMemory", 1024))
    return host, cpus, mem


SLURM_CONF = """\
ClusterName=planforge-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser={user}
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CryptoType=crypto/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/log/jobcomp.txt
GresTypes=gpu
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
MinJobAge=600
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
KillWait=5
MpiDefault=none
{overrides}NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem} Gres=gpu:{gpus} State=UNKNOWN
{partitions}"""


class Cluster:
    def __init__(
        self,
        root: Path,
        partitions: tuple[str, ...] = ("debug",),
        gpus: int = 1,
        min_mem_mb: int = 0,
        base_env: dict[str, str] | None = None,
    ):
        """`partitions`: one per name, all on the one node, the first the default. Memory is recorded, not
        consumed (CR_Core): jobs share the node's cores; a node with less memory than `min_mem_mb` is
        declared with that much (slurmd's config_overrides) so a profile's --mem requests fit. `base_env`: the
        environment the daemons and clients start from (default: this process's, as it is at each call)."""
        self.root = root
        self.base_env = base_env
        self.partitions = partitions
        self.min_mem_mb = min_mem_mb
        self.gpus = gpus
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.conf = root / "etc" / "slurm.conf"
        self.munge_socket = root / "munge" / "munge.socket"
        self.host, self.cpus, self.mem = node_facts()

    @property
    def env(self) -> dict[str, str]:
        """The environment every Slurm client (sbatch, sacct, ..., and the snakemake plugin) must run with."""
        base = os.environ if self.base_env is None else self.base_env
        path = f"{self.root / 'bin'}{os.pathsep}{base.get('PATH', '')}"
        return {**base, "SLURM_CONF": str(self.conf), "PATH": path}

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)}: {proc.returncode}: {proc.stdout}{proc.stderr}")
        return proc

    def _spawn(self, name: str, *args: str) -> None:
        log = open(self.root / "log" / f"{name}.out", "w")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(
            [which(name), *args], stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        self.procs.append((name, proc))

    def _wait(self, what: str, ok, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs:
                if proc.poll() is not None:
                    raise ClusterUnavailable(f"{name} exited ({proc.returncode}) while starting: {self.tail(name)}")
            if ok():
                return
            time.sleep(0.5)
        raise ClusterUnavailable(f"{what} did not come up within {timeout:.0f} s: {self.tail('slurmctld')}")

    def tail(self, name: str, lines: int = 5) -> str:
        text = ""
        for f in (self.root / "log" / f"{name}.out", self.root / "log" / f"{name}.log"):
            if f.is_file():
                text += f.read_text(errors="replace")
        return " | ".join(text.strip().splitlines()[-lines:])

    def start(self) -> None:
        missing = missing_binaries()
        if missing:
            raise ClusterUnavailable(
                f"Slurm binaries not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge"
            )
        if os.geteuid() != 0:
            raise ClusterUnavailable("starting slurmd needs root (it runs jobs as their users)")
        for d in ("etc", "state", "spool", "run", "log", "munge", "bin"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        # snakemake-executor-plugin-slurm-jobstep runs each job's `srun` with every SLURM_* variable removed,
        # SLURM_CONF included: a cluster must keep its config where srun finds it without one
        # (/etc/slurm/slurm.conf, or configless). This one lives in a temporary directory, so its srun is
        # told where on PATH instead of writing into /etc.
        srun = self.root / "bin" / "srun"
        srun.write_text(f'#!/bin/sh\nSLURM_CONF={self.conf} exec {which("srun")} "$@"\n')
        srun.chmod(0o755)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        gres = self.root / "etc" / "gres.conf"
        # Stand-in GPU device files: enough for Slurm to schedule and account GRES requests.
        (self.root / "dev").mkdir(exist_ok=True)
        for i in range(self.gpus):
            (self.root / "dev" / f"gpu{i}").touch()
        files = f"{self.root}/dev/gpu[0-{self.gpus - 1}]" if self.gpus > 1 else f"{self.root}/dev/gpu0"
        gres.write_text(f"NodeName={self.host} Name=gpu File={files}\n")
        self.conf.write_text(
            SLURM_CONF.format(
                host=self.host,
                ctld_port=free_port(),
                slurmd_port=free_port(),
                user="root",
                munge_socket=self.munge_socket,
                root=self.root,
                cpus=self.cpus,
                mem=max(self.mem, self.min_mem_mb),
                overrides="SlurmdParameters=config_overrides\n" if self.mem < self.min_mem_mb else "",
                gpus=self.gpus,
                partitions="".join(
                    f"PartitionName={p} Nodes={self.host} Default={'YES' if i == 0 else 'NO'} MaxTime=INFINITE State=UP\n"
                    for i, p in enumerate(self.partitions)
                ),
            )
        )
        self._spawn(
            "munged",
            "--foreground",
            "--force",
            f"--key-file={key}",
            f"--socket={self.munge_socket}",
            f"--pid-file={self.root / 'munge' / 'munged.pid'}",
            f"--log-file={self.root / 'log' / 'munged.log'}",
            f"--seed-file={self.root / 'munge' / 'munged.seed'}",
        )
        self._wait("munged", self.munge_socket.exists, timeout=15)
        self._spawn("slurmctld", "-D", "-i", "-f", str(self.conf))
        self._wait("slurmctld", lambda: self.run("scontrol", "ping", check=False).returncode == 0)
        self._spawn("slurmd", "-D", "-f", str(self.conf), "-N", self.host)

        def node_idle() -> bool:
            out = self.run("sinfo", "-h", "-o", "%t", check=False).stdout.strip()
            return out in ("idle", "mix")

        self._wait("slurmd (node idle)", node_idle, timeout=60)

    def stop(self) -> None:
        """Stop every daemon this cluster started (jobs first), newest first, whatever happened."""
        if any(n == "slurmctld" and p.poll() is None for n, p in self.procs):
            self.run("scancel", "--full", "-u", str(os.geteuid()), check=False, timeout=20)
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
        self.procs.clear()

    def jobs(self) -> dict[str, dict[str, str]]:
        """Every job slurmctld still holds (MinJobAge=600 keeps finished ones): `scontrol show job -o`, by id."""
        out = self.run("scontrol", "show", "job", "-o", check=False).stdout
        jobs = {}
        for line in out.strip().splitlines():
            fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
            if "JobId" in fields:
                jobs[fields["JobId"]] = fields
        return jobs

    def completed_jobs(self) -> list[dict[str, str]]:
        """`sacct --completion` rows (the job completion log), one dict per finished job."""
        fields = "jobid,jobname,state,partition,timelimit,start,end,nodelist,alloctres,exitcode"
        out = self.run("sacct", "--completion", "--parsable2", "--format", fields).stdout
        lines = out.strip().splitlines()
        header = lines[0].lower().split("|") if lines else []
        return [dict(zip(header, line.split("|"))) for line in lines[1:]]


@contextmanager
def slurm_cluster(root: Path, **kwargs):
    cluster = Cluster(root, **kwargs)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
