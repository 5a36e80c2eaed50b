"""Does the bench tell a contended number from a clean one? Rerun a built tree's bench rows into a folder, quiet
or beside a CPU hog, and compare two such folders row by row.

On a tree the default has built (`snakemake --cores 2 results/summary.md`), from the repository root:

    python benchmarks/contention_study.py run --out docs/measured/cpu/quiet
    python benchmarks/contention_study.py run --out docs/measured/cpu/contended --hog 2
    python benchmarks/contention_study.py compare docs/measured/cpu/quiet docs/measured/cpu/contended
    python benchmarks/contention_study.py sweep --out /tmp/sweep --rows yolo-demo/onnxruntime_fp32_b1
    python benchmarks/contention_study.py calibrate /tmp/sweep docs/measured/cpu/quiet docs/measured/cpu/contended
    python benchmarks/contention_study.py reference bench_run1 bench_run2

`run` calls the bench step once per planned bench row of the target (the plan's own rows, artifacts and
settings: what the `bench` rule runs, Snakemake's outputs under results/ left untouched) and writes
<out>/<model>/<backend>_<precision>_b<batch>.json, a log per row and <out>/study.json (command, date, machine,
hog). `--hog N` runs N busy processes beside every row (stress-ng's cpu stressor where it is installed, else
Python spin loops); `--hog-on/--hog-off` make it intermittent (seconds busy, seconds idle).

`compare A B` prints, per row, p50 in A and B, B/A, both verdicts and other processes' CPUs during the reported
loop, and checks that every row is within `--tolerance` (15 %) of A or flagged (`stable: false`) in either run;
it exits 1 when a row is neither.

`sweep` times rows with contention never flagged (max_other_cpus huge, one attempt) beside hogs of increasing
size, to see how far other processes' CPU time moves p50; `calibrate` reads every timed loop of the given
folders (each attempt of each row), takes each row's lowest p50 of a loop with the machine nearly idle as its
reference, and prints, per share of the usable CPUs other processes took, how far p50 moved: the largest share
under which every loop stays within the tolerance is where `bench.stability.max_other_cpus` can sit.
`reference` asks the same of the reference kernel (core/reference.py): among loops other processes left alone,
how many the kernel flagged and how many were slow (p50 more than the tolerance above the row's fastest loop).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from workflow_scripts.core.envinfo import cpu_name, cpu_vector_instructions, git_commit  # noqa: E402
from workflow_scripts.core.io import PlanforgeError, write_json  # noqa: E402


# -- the rows ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Row:
    model: str
    backend: str
    precision: str
    batch: int

    @property
    def name(self) -> str:
        return f"{self.model}/{self.backend}_{self.precision}_b{self.batch}"


def planned_rows(configfile: Path, target: str) -> tuple[object, list[Row]]:
    """The plan of `configfile` and the bench rows it times on `target` (the `bench` rule's jobs)."""
    from workflow_scripts import config as pfconfig
    from workflow_scripts.plan.jobs import Plan

    plan = Plan(pfconfig.load(configfile))
    if target not in plan.targets:
        raise PlanforgeError(f"--target {target!r}: not one of {sorted(plan.targets)} in {configfile}")
    rows = [Row(m, b, p, int(n)) for m, b, p in plan.runs(target) for n in plan.targets[target]["batch_sizes"]]
    return plan, rows


def bench_command(plan, target: str, row: Row, out: Path, settings_json: str) -> list[str]:
    """The bench rule's shell line for one row, writing to `out`."""
    artifact = plan.model_artifact(target, row.model, row.backend, row.precision, str(row.batch))
    if not Path(artifact).exists():
        raise PlanforgeError(f"{artifact}: missing; build the tree first (snakemake --cores 2 results/summary.md)")
    cmd = [sys.executable, "-m", "workflow_scripts.bench", "--model", row.model, "--family", plan.family(row.model)]
    cmd += ["--artifact", artifact, "--backend", row.backend, "--precision", row.precision]
    cmd += ["--batch", str(row.batch), "--dataset", plan.dataset_dir(row.model), "--target", target]
    cmd += ["--settings", settings_json, "--out", str(out)]
    trtexec = plan.bench_trtexec(target, row.backend)
    return cmd + (["--trtexec", trtexec] if trtexec else [])


def _select(rows: list[Row], patterns: list[str] | None) -> list[Row]:
    if not patterns:
        return rows
    chosen = [r for r in rows if any(p in r.name for p in patterns)]
    if not chosen:
        raise PlanforgeError(f"--rows {patterns}: no planned row matches; rows: {[r.name for r in rows]}")
    return chosen


# -- the hog ---------------------------------------------------------------------------------------------------
SPIN = """
import sys, time
on, off = float(sys.argv[1]), float(sys.argv[2])
while True:
    t = time.perf_counter()
    while time.perf_counter() - t < on:
        pass
    if off > 0:
        time.sleep(off)
"""


class Hog:
    """N busy processes (stress-ng's cpu stressor if installed and the hog is continuous, else Python spin loops),
    each busy `on` s then idle `off` s (off 0: always busy). Stopped by its own process ids."""

    def __init__(self, n: int, on: float = 1.0, off: float = 0.0) -> None:
        self.n, self.on, self.off = n, on, off
        self.procs: list[subprocess.Popen] = []
        self.kind = "none"

    def start(self) -> Hog:
        if self.n <= 0:
            return self
        stress = shutil.which("stress-ng")
        if stress and self.off == 0:
            self.kind = f"stress-ng --cpu {self.n} (cpu stressor, all methods)"
            self.procs = [subprocess.Popen([stress, "--cpu", str(self.n), "--quiet"], start_new_session=True)]
        else:
            duty = "always busy" if self.off == 0 else f"busy {self.on:g} s, idle {self.off:g} s"
            self.kind = f"{self.n} Python spin loop{'s' * (self.n != 1)} ({duty})"
            self.procs = [
                subprocess.Popen([sys.executable, "-c", SPIN, str(self.on), str(self.off)], start_new_session=True)
                for _ in range(self.n)
            ]
        time.sleep(0.5)  # let them start before the first row
        return self

    def stop(self) -> None:
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)  # its own session: stress-ng's workers too
            except ProcessLookupError:
                pass
            p.wait()
        self.procs = []


def _machine() -> dict:
    return {
        "cpu": cpu_name(),
        "cpu_vector_instructions": cpu_vector_instructions(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


# -- run -------------------------------------------------------------------------------------------------------
def run(a: argparse.Namespace, stability: dict | None = None) -> dict:
    plan, rows = planned_rows(a.configfile, a.target)
    rows = _select(rows, a.rows)
    out = Path(a.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    # a TERM (or an INT, which a background shell ignores) stops the hog and the row in hand, not only this process
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    hog = Hog(a.hog, a.hog_on, a.hog_off).start()
    done = []
    try:
        for repeat in range(1, a.repeat + 1):
            for row in rows:
                settings = plan.bench_settings(a.target, row.model, row.backend)
                widened = {k: v for k, v in (("iterations", a.iterations), ("min_seconds", a.min_seconds)) if v}
                settings = dataclasses.replace(settings, **widened)  # a wider loop than the config's, to compare
                if stability:
                    settings = dataclasses.replace(
                        settings, stability=dataclasses.replace(settings.stability, **stability)
                    )
                suffix = f".r{repeat}" if a.repeat > 1 else ""
                path = out / f"{row.name}{suffix}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                log = out / "logs" / f"{row.name.replace('/', '__')}{suffix}.log"
                t0 = time.perf_counter()
                with open(log, "w") as f:
                    proc = subprocess.run(
                        bench_command(plan, a.target, row, path, settings.to_json()),
                        cwd=REPO,
                        stdout=f,
                        stderr=subprocess.STDOUT,
                        env={**os.environ, "PYTHONPATH": str(REPO)},
                    )
                seconds = round(time.perf_counter() - t0, 1)
                status = "ok" if proc.returncode == 0 else f"failed (rc {proc.returncode}, see {log})"
                done.append({"row": row.name, "repeat": repeat, "seconds": seconds, "status": status})
                last = log.read_text().strip().splitlines()[-1:] or [""]
                print(f"[{len(done)}/{len(rows) * a.repeat}] {row.name}{suffix}: {seconds} s, {last[0][-160:]}")
    finally:
        hog.stop()
    record = {
        "what": "bench rows of a built tree timed again by benchmarks/contention_study.py",
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "started": started,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "configfile": str(a.configfile),
        "target": a.target,
        "hog": {"processes": a.hog, "kind": hog.kind, "on_s": a.hog_on, "off_s": a.hog_off},
        "stability_override": stability,
        "loop_override": {"iterations": a.iterations, "min_seconds": a.min_seconds},
        "machine": _machine(),
        "rows": done,
    }
    write_json(out / "study.json", record)
    return record


def sweep(a: argparse.Namespace) -> None:
    """Each row beside hogs of growing size, contention never flagged: the raw (other CPUs, p50) pairs."""
    levels = [(0, 1.0, 0.0), (1, 0.25, 0.75), (1, 0.5, 0.5), (1, 1.0, 0.0), (2, 1.0, 0.0)]
    base = Path(a.out)
    for n, on, off in levels:
        a.out = str(base / f"hog{n}_on{on:g}_off{off:g}")
        a.hog, a.hog_on, a.hog_off = n, on, off
        print(f"-- hog: {n} process(es), busy {on:g} s / idle {off:g} s -> {a.out}")
        run(
            a,
            stability={
                "max_other_cpus": 1000.0,
                "attempts": 1,
                "quiet_wait_s": 0,
                "max_reference_slowdown": None,
                "max_change_from_last_run": None,
            },
        )


# -- compare and calibrate -----------------------------------------------------------------------------------
def read_rows(folder: Path) -> dict[str, dict]:
    """{row name (model/backend_precision_bN, .rK for repeats): bench JSON} of one study folder."""
    out = {}
    for f in sorted(folder.rglob("*.json")):
        if f.name == "study.json" or "logs" in f.parts:
            continue
        r = json.loads(f.read_text())
        if "latency_ms" in r:
            out[f.relative_to(folder).with_suffix("").as_posix()] = r
    return out


def _verdict(r: dict) -> str:
    if r.get("stable", True):
        return "stable"
    s = r.get("stability") or {}
    return "† " + (s.get("reported_reason") or s.get("reason") or "unstable")


def compare(a_dir: Path, b_dir: Path, tolerance: float) -> tuple[list[str], bool]:
    """The row-by-row table of two study folders and whether every row is within `tolerance` or flagged."""
    a, b = read_rows(a_dir), read_rows(b_dir)
    common = sorted(set(a) & set(b))
    lines = [
        f"{a_dir} (A) vs {b_dir} (B): p50 of the reported loop; other = CPUs other processes kept busy during it; "
        "ref = the reference kernel beside it against the machine's best (core/reference.py; - where not read)",
        "",
        "| row | p50 A ms | p50 B ms | B/A | A verdict | B verdict | other A | other B | ref A | ref B | check |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    counts = {"within": 0, "flagged": 0, "FAIL": 0}
    for name in common:
        ra, rb = a[name], b[name]
        pa, pb = ra["latency_ms"]["p50"], rb["latency_ms"]["p50"]
        ratio = pb / pa if pa else float("inf")
        flagged = not ra.get("stable", True) or not rb.get("stable", True)
        if abs(ratio - 1) <= tolerance:
            check = "within"
        elif flagged:
            check = "flagged"
        else:
            check = "FAIL"
        counts[check] += 1
        oa, ob = ((r.get("load") or {}).get("other_cpus_busy") for r in (ra, rb))
        refa, refb = (((r.get("load") or {}).get("reference") or {}).get("slowdown", "-") for r in (ra, rb))
        lines.append(
            f"| {name} | {pa:.2f} | {pb:.2f} | {ratio:.2f} | {_verdict(ra)} | {_verdict(rb)} | {oa} | {ob} "
            f"| {refa} | {refb} | {check} |"
        )
    missing = sorted(set(a) ^ set(b))
    lines += [
        "",
        f"{len(common)} rows: {counts['within']} within {tolerance:.0%} of A, {counts['flagged']} off by more but "
        f"flagged († in A or B), {counts['FAIL']} off by more and not flagged (FAIL)."
        + (f" Only in one folder: {', '.join(missing)}." if missing else ""),
    ]
    return lines, counts["FAIL"] == 0 and bool(common)


def loops(folders: list[Path]) -> list[dict]:
    """Every timed loop (attempt) of every row in the folders: row, p50, other CPUs' share of the usable CPUs."""
    out = []
    for folder in folders:
        for name, r in read_rows(folder).items():
            row = name.split(".r")[0]
            for at in (r.get("stability") or {}).get("attempts") or []:
                load = at.get("load") or {}
                other, cpus = load.get("other_cpus_busy"), load.get("cpus_usable") or load.get("cpus")
                if other is None or not cpus:
                    continue
                out.append(
                    {
                        "folder": str(folder),
                        "row": row,
                        "p50_ms": at["latency_ms"]["p50"],
                        "other_cpus_busy": other,
                        "share": other / cpus,
                        "cpus": cpus,
                        "cv": (at.get("dispersion") or {}).get("cv"),
                        "slowdown": (load.get("reference") or {}).get("slowdown"),
                    }
                )
    return out


def calibrate(folders: list[Path], tolerance: float, idle_share: float) -> list[str]:
    """Per share of the usable CPUs other processes took during a loop: how far p50 moved from the row's reference
    (its lowest p50 among loops with at most `idle_share`); the largest share under which all loops stay within
    `tolerance`."""
    data = loops(folders)
    refs: dict[str, float] = {}
    for d in data:
        if d["share"] <= idle_share:
            refs[d["row"]] = min(refs.get(d["row"], float("inf")), d["p50_ms"])
    scored = [{**d, "ratio": d["p50_ms"] / refs[d["row"]]} for d in data if d["row"] in refs]
    if not scored:
        return [f"no loop with other processes at most {idle_share:.0%} of the CPUs: no reference p50"]
    scored.sort(key=lambda d: d["share"])
    bins = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, float("inf")]
    lines = [
        f"{len(scored)} timed loops of {len(refs)} rows; reference: each row's lowest p50 among loops with other "
        f"processes at most {idle_share:.0%} of the usable CPUs",
        "",
        "| share of usable CPUs other processes used | loops | median p50 / reference | max p50 / reference | "
        f"loops beyond {tolerance:.0%} |",
        "| --- | --- | --- | --- | --- |",
    ]
    for lo, hi in zip(bins, bins[1:]):
        group = [d["ratio"] for d in scored if lo < d["share"] <= hi or (lo == 0 and d["share"] == 0)]
        if not group:
            continue
        group.sort()
        beyond = sum(r > 1 + tolerance for r in group)
        lines.append(
            f"| {lo:.2f}–{hi:.2f} | {len(group)} | {group[len(group) // 2]:.2f} | {group[-1]:.2f} | {beyond} |"
        )
    safe = 0.0
    for d in scored:  # ascending share: the last share before the first loop beyond the tolerance
        if d["ratio"] > 1 + tolerance:
            break
        safe = d["share"]
    first_bad = next((d for d in scored if d["ratio"] > 1 + tolerance), None)
    lines += [
        "",
        f"Every loop with other processes at or below {safe:.3f} of the usable CPUs stayed within {tolerance:.0%} of "
        "its reference"
        + (
            f"; the first beyond: {first_bad['row']} at {first_bad['share']:.3f} ({first_bad['ratio']:.2f}×)."
            if first_bad
            else "; none went beyond."
        ),
    ]
    return lines


def reference_check(folders: list[Path], tolerance: float, max_share: float) -> list[str]:
    """Does the reference kernel tell the loops a busy host slowed? Over every timed loop with a reference reading
    and other processes at most `max_share` of the CPUs (what /proc/stat cannot tell apart): each row's fastest
    loop is its reference p50; a loop is slow when its p50 is more than `tolerance` above it, and flagged when the
    kernel beside it ran more than `tolerance` slower than the machine's best. The table counts the four cases."""
    data = [d for d in loops(folders) if d["slowdown"] is not None and d["share"] <= max_share]
    fastest: dict[str, float] = {}
    for d in data:
        fastest[d["row"]] = min(fastest.get(d["row"], float("inf")), d["p50_ms"])
    cases = {(s, f): 0 for s in (True, False) for f in (True, False)}
    missed = []
    for d in data:
        slow = d["p50_ms"] > (1 + tolerance) * fastest[d["row"]]
        flagged = d["slowdown"] > 1 + tolerance
        cases[(slow, flagged)] += 1
        if slow and not flagged:
            missed.append(f"{d['row']} ({d['p50_ms'] / fastest[d['row']]:.2f}×, kernel {d['slowdown']:.2f}×)")
    lines = [
        f"{len(data)} timed loops of {len(fastest)} rows with a reference reading and other processes at most "
        f"{max_share:.3f} of the CPUs; slow = p50 more than {tolerance:.0%} above the row's fastest loop; flagged = "
        f"the kernel beside it more than {tolerance:.0%} slower than the machine's best",
        "",
        "| | flagged | not flagged |",
        "| --- | --- | --- |",
        f"| slow | {cases[(True, True)]} | {cases[(True, False)]} |",
        f"| not slow | {cases[(False, True)]} | {cases[(False, False)]} |",
    ]
    if missed:
        lines += ["", "Slow and not flagged: " + "; ".join(missed) + "."]
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("run", "sweep"):
        s = sub.add_parser(name)
        s.add_argument("--out", required=True, help="folder for the bench JSONs (made if missing)")
        s.add_argument("--configfile", type=Path, default=REPO / "config" / "config.yaml")
        s.add_argument("--target", default="cpu")
        s.add_argument("--rows", nargs="*", help="only rows whose model/backend_precision_bN contains one of these")
        s.add_argument("--repeat", type=int, default=1, help="time each row this many times (files .rK)")
        s.add_argument("--iterations", type=int, help="timed calls per loop instead of bench.iterations")
        s.add_argument("--min-seconds", type=float, help="seconds per timed loop instead of bench.min_seconds")
        if name == "run":
            s.add_argument("--hog", type=int, default=0, help="busy processes beside every row (0: none)")
            s.add_argument("--hog-on", type=float, default=1.0, help="seconds busy per cycle")
            s.add_argument("--hog-off", type=float, default=0.0, help="seconds idle per cycle (0: always busy)")
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    c.add_argument("--tolerance", type=float, default=0.15)
    k = sub.add_parser("calibrate")
    k.add_argument("folders", type=Path, nargs="+")
    k.add_argument("--tolerance", type=float, default=0.15)
    k.add_argument("--idle-share", type=float, default=0.05, help="loops this quiet give each row's reference p50")
    r = sub.add_parser("reference", help="how well the reference kernel's verdict tells slowed loops")
    r.add_argument("folders", type=Path, nargs="+")
    r.add_argument("--tolerance", type=float, default=0.15)
    r.add_argument("--max-share", type=float, default=0.075, help="only loops with others at most this CPU share")
    a = p.parse_args(argv)
    os.chdir(REPO)
    try:
        if a.cmd == "run":
            run(a)
        elif a.cmd == "sweep":
            sweep(a)
        elif a.cmd == "compare":
            lines, ok = compare(a.a, a.b, a.tolerance)
            print("\n".join(lines))
            raise SystemExit(0 if ok else 1)
        elif a.cmd == "reference":
            print("\n".join(reference_check(a.folders, a.tolerance, a.max_share)))
        else:
            print("\n".join(calibrate(a.folders, a.tolerance, a.idle_share)))
    except PlanforgeError as exc:
        raise SystemExit(f"planforge error: {exc}") from None


if __name__ == "__main__":
    main()
