"""Run to run: does a bench row's p50 agree with this machine's last measurement of the same row?

On the shared 2-core CI VM the same row, stable in both of two passes (no other process beyond Snakemake's own),
came out up to 2.4× apart: 17.40 then 7.38 ms (docs/measured/cpu/run_to_run/).
Nothing inside one run tells such a row: its loop was steady, the VM's counters quiet, and a reference kernel
beside it ran at the machine's usual speed (core/reference.py). Only the next measurement of the same thing does.
So the bench remembers each row's last clean p50 (`rows.json` beside the reference history, or
PLANFORGE_ROWS_FILE) and flags a row more than `max_change` away from it: "not reproducible here".

The same row: this machine (host, CPU model), the target, model, backend, precision and batch, the bench
settings' hash, the runner's library versions, and the artifact's content (`fingerprint`: an ONNX graph without
its metadata, a checkpoint's tensors, else the bytes), so a changed model or library starts a new history
rather than raising a false alarm. Only rows the other checks passed are remembered, and only for WINDOW_S.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from pathlib import Path

from workflow_scripts.core.envinfo import cpu_name
from workflow_scripts.core.history import History, cache_file

WINDOW_S = 7 * 24 * 3600.0
_BIG = 512 * 2**20  # files larger than this: their size, head and tail


def _file_digest(path: Path, h) -> None:
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as f:
        if size <= _BIG:
            for chunk in iter(lambda: f.read(2**20), b""):
                h.update(chunk)
        else:
            h.update(f.read(8 * 2**20))
            f.seek(-8 * 2**20, 2)
            h.update(f.read())


def _tensor_digest(obj, h) -> bool:
    """Hash every tensor in a loaded checkpoint (dicts, lists, modules' state dicts), in order; False: none."""
    import torch

    found = False
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return True
    if isinstance(obj, dict):
        for k in sorted(obj, key=str):
            h.update(str(k).encode())
            found |= _tensor_digest(obj[k], h)
    elif isinstance(obj, list | tuple):
        for v in obj:
            found |= _tensor_digest(v, h)
    return found


def fingerprint(path: Path) -> str:
    """What the artifact computes, not when it was written: an ONNX file's graph and opsets (ultralytics writes
    the export date into the metadata), a torch checkpoint's tensors (its pickled extras may differ run to run) or,
    where it holds none, its contents, a folder's files, else the file's bytes. 16 hex digits."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f.relative_to(path).as_posix().encode())
            _file_digest(f, h)
    elif path.suffix == ".onnx":
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        h.update(model.graph.SerializeToString())
        h.update(str([(o.domain, o.version) for o in model.opset_import]).encode())
    elif path.suffix in (".pt", ".pth") and path.stat().st_size <= _BIG:
        import torch

        tensors, obj = hashlib.sha256(), None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
            found = _tensor_digest(obj, tensors)
        except Exception:  # noqa: BLE001 - a checkpoint torch cannot read or walk: its bytes identify it instead
            found = False
        if found:
            h.update(tensors.digest())
        elif isinstance(obj, dict):  # a spec without tensors (pi0-tiny: architecture, config, seed)
            h.update(json.dumps(obj, sort_keys=True, default=repr).encode())
        else:
            _file_digest(path, h)
    else:
        _file_digest(path, h)
    return h.hexdigest()[:16]


def row_key(record: dict, artifact_fingerprint: str) -> str:
    versions = hashlib.sha256(json.dumps(record.get("runner"), sort_keys=True, default=str).encode()).hexdigest()
    return "|".join(
        [
            platform.node(),
            cpu_name(),
            f"{record['target']}/{record['model']}/{record['backend']}_{record['precision']}_b{record['batch']}",
            f"settings={record.get('config_hash')}",
            f"runner={versions[:12]}",
            f"artifact={artifact_fingerprint}",
        ]
    )


def rows_history(key: str) -> History:
    return History(key, cache_file("rows.json", "PLANFORGE_ROWS_FILE"), WINDOW_S)


def check(record: dict, artifact: Path, max_change: float | None) -> dict | None:
    """Compare the record's p50 with this machine's last clean measurement of the same row, remember this one when
    the other checks passed, and return {"previous_p50_ms", "previous_at", "ratio", "limit", "reproduced",
    "reason", "history"} (None when `max_change` is None: not checked). No previous measurement: reproduced None."""
    if max_change is None:
        return None
    history = rows_history(row_key(record, fingerprint(artifact)))
    past = history.entries()
    p50 = record["latency_ms"]["p50"]
    out = {"previous_p50_ms": None, "previous_at": None, "ratio": None, "limit": max_change, "reproduced": None}
    out.update(reason=None, history=str(history.path))
    if past:
        at, prev = past[-1]
        ratio = p50 / prev if prev else float("inf")
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at))
        out.update(previous_p50_ms=prev, previous_at=when, ratio=round(ratio, 4))
        out["reproduced"] = abs(ratio - 1) <= max_change
        if not out["reproduced"]:
            out["reason"] = (
                f"not reproducible here: {ratio:.2f}× the {prev:.2f} ms this machine measured for the same row at "
                f"{when} (limit ±{max_change:.0%})"
            )
    if record.get("stable"):
        history.add(p50)
    return out
