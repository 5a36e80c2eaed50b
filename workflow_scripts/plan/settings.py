"""Each rule's settings as a typed object: built by the plan, passed as --settings JSON, parsed once by the CLI.

Every field is required: the defaults live in workflow_scripts/config.py and the registries, never in a CLI.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, ClassVar, TypeVar

from workflow_scripts.core.io import PlanforgeError

S = TypeVar("S", bound="Settings")


def digest(value: Any) -> str:
    """Short stable hash of a JSON-able value (what makes a result what it is)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Settings:
    hashed: ClassVar[bool] = False  # records a config_hash of the other fields

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.hashed:
            d["config_hash"] = digest(d)
        return d

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)

    @property
    def config_hash(self) -> str | None:
        return self.as_dict().get("config_hash")

    @classmethod
    def from_json(cls: type[S], text: str) -> S:
        """Parse --settings; a missing or unknown key is one line naming it."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanforgeError(f"--settings: not JSON ({exc})") from None
        data.pop("config_hash", None)
        names = {f.name for f in dataclasses.fields(cls)}
        missing, extra = sorted(names - set(data)), sorted(set(data) - names)
        if missing or extra:
            raise PlanforgeError(
                f"--settings for {cls.__name__}: missing {missing}, unknown {extra}; pass the JSON the rule "
                "passes (`snakemake -p` prints it)"
            )
        return cls(**data)


@dataclasses.dataclass(frozen=True)
class TargetSettings(Settings):
    """What about a target changes a measurement (not its lists of backends or batch sizes)."""

    device: str
    threads: int | None
    backend_options: dict
    power: str
    gpu: str | None


@dataclasses.dataclass(frozen=True)
class Stability:
    """When a timed loop counts as disturbed (config `bench.stability`), and how often it is measured."""

    max_cv: float
    max_p99_over_p50: float
    attempts: int
    # other processes may keep at most this fraction of the CPUs the bench may use busy during a timed loop
    max_other_cpus: float = 0.075
    # per row, in all: how long to wait for the machine to go quiet before measuring a contended loop again
    quiet_wait_s: float = 30.0
    # CPU rows: a fixed reference kernel read beside the loop may run at most this fraction slower than this
    # machine's best (core/reference.py); None: not read (the config's default is 0.15)
    max_reference_slowdown: float | None = None
    # a row whose p50 is more than this fraction away from this machine's last clean measurement of the same row is
    # not reproducible (core/repeatability.py); None: not compared (the config's default is 0.15)
    max_change_from_last_run: float | None = None


@dataclasses.dataclass(frozen=True)
class BenchSettings(TargetSettings):
    hashed: ClassVar[bool] = True
    imgsz: int
    warmup: int
    iterations: int
    min_seconds: float
    conf: float
    stability: Stability

    def __post_init__(self) -> None:
        if isinstance(self.stability, dict):  # from --settings JSON
            keys = {f.name for f in dataclasses.fields(Stability)}
            if set(self.stability) != keys:
                raise PlanforgeError(
                    f"--settings: stability needs exactly {sorted(keys)}, got {sorted(self.stability)}"
                )
            object.__setattr__(self, "stability", Stability(**self.stability))


@dataclasses.dataclass(frozen=True)
class AccuracySettings(TargetSettings):
    hashed: ClassVar[bool] = True
    imgsz: int
    gate: float
    error_tolerance: float
    strict: bool
    batch: int
    max_images: int | None
    conf: float
    iou: float
    max_det: int


@dataclasses.dataclass(frozen=True)
class PictureSettings(TargetSettings):
    """What a picture of one run shows: the first `images` val images, predictions scoring at least `conf`."""

    imgsz: int
    images: int
    batch: int
    conf: float
    iou: float
    max_det: int


@dataclasses.dataclass(frozen=True)
class CalibrationSettings(Settings):
    """Only the keys that change one method's ranges (the percentile does not touch the entropy ranges): others None."""

    images: int
    num_bins: int | None
    percentile: float | None


@dataclasses.dataclass(frozen=True)
class QuantizeSettings(Settings):
    activation_type: str
    weight_type: str  # qint8 (u8s8) or quint8 (u8u8: where the target CPU's u8s8 kernels saturate)
    per_channel: bool
    reduce_range: bool
    keep_float: list
    scheme: str  # core.precisions.INT8_SCHEMES
    isa: dict  # target → cpu_isa of the targets that run this QDQ model (core.isa.ISAS)


@dataclasses.dataclass(frozen=True)
class FallbackSettings(Settings):
    """The float-fallback search of one QDQ variant: the row that decides it, and how it measures."""

    target: str
    backend: str
    quantize: dict  # QuantizeSettings of the plain variant
    accuracy: dict  # AccuracySettings of the deciding row's accuracy job
    rank_images: int  # calib images the SQNR ranking runs on
    max_runs: int  # accuracy runs the search may spend confirming


@dataclasses.dataclass(frozen=True)
class TritonRepositorySettings(Settings):
    device: str
    threads: int | None
    serving: (
        dict  # max_batch_size, max_queue_delay_us, preferred_batch_sizes, instances, onnx_backend, conf, iou, max_det
    )
    accuracy: dict  # conf, iou, max_det of the evaluation ensemble


@dataclasses.dataclass(frozen=True)
class ServingSettings(Settings):
    hashed: ClassVar[bool] = True
    concurrency: list
    protocols: list
    requests: int
    stability_percentage: float
    max_trials: int
    startup_timeout_s: float
    http_port: int | None
    grpc_port: int | None

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)  # the ports do not change a measurement: not hashed
        d["config_hash"] = digest({k: v for k, v in d.items() if k not in ("http_port", "grpc_port")})
        return d


@dataclasses.dataclass(frozen=True)
class ServingAccuracySettings(Settings):
    hashed: ClassVar[bool] = True
    batch: int
    max_images: int | None
    startup_timeout_s: float
    map_tolerance: float
