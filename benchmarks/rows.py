"""One row of a GPU benchmark script (gpu_pi0.py, gpu_samurai.py): run it, keep its failure as a record, save."""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable

from workflow_scripts.core.io import exception_line


def run_row(rows: list[dict], save: Callable[[], None], **what) -> dict:
    """`what["run"]()` → its dict merged into the row; a failure becomes `status: failed` with the error line and the
    last frames (one row's failure must not lose the others); the JSON is rewritten after every row."""
    import torch

    fn = what.pop("run")
    t0 = time.perf_counter()
    try:
        what.update(fn())
        what["status"] = "ok"
    except Exception as exc:  # noqa: BLE001
        what.update(status="failed", error=exception_line(exc), where=traceback.format_exc(limit=-4)[-900:])
    what["wall_s"] = round(time.perf_counter() - t0, 1)
    rows.append(what)
    save()
    print(json.dumps({k: v for k, v in what.items() if k not in ("record", "where")})[:600], flush=True)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return what
