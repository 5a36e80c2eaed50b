"""A test-only tracking family in one module: normalised cross-correlation template matching.

It stands in for a real tracking family (samurai) while the tracking task, its dataset, metrics, bench unit
and DAG wiring are built and tested: with PLANFORGE_PLUGINS naming this module, a model of family
`track-template` on a `videos` dataset is planned and run by the same steps as every other model.

It is a real tracker, not an oracle: it sees the true box on the prompt frame only. Its torch module
(`TemplateMatcher`) holds no per-sequence state; it maps RGB to an opponent colour space (a fixed 1×1
convolution, so the torch backends cast and place it like any model) and scores every position of a search
window against the template by normalised cross-correlation (convolutions). The `Tracker` keeps the
template and the box of one sequence, searches 3 scales around the last box and moves to the best peak
(with a cosine window against jumps); it loses the target when a distractor hides it for long.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.core.runner_facts import RunnerFacts
from workflow_scripts.models import FAMILIES, FamilySpec

NAME = "track-template"
FORMAT = "planforge-track-template-v1"
ARCHITECTURES = {"track-template.yaml": {"template": 24, "context": 2.0}}
INPUT_NAME = "search"
OUTPUT_NAMES = ("response",)
SCALES = (0.95, 1.0, 1.05)
SCALE_PENALTY = 0.97  # a response at another scale must beat the current one by 3 %
WINDOW_INFLUENCE = 0.25
UPDATE_ABOVE, UPDATE_RATE = 0.7, 0.05  # the template follows the target slowly while it matches well


class TemplateMatcher(torch.nn.Module):
    """search [K, 3, S, S] and template [1, 3, T, T] (RGB 0..255) → NCC response [K, S-T+1, S-T+1]."""

    def __init__(self, template: int = 24, context: float = 2.0) -> None:
        super().__init__()
        self.template_size, self.context = int(template), float(context)
        self.features = torch.nn.Conv2d(3, 3, 1)
        opponent = torch.tensor([[1.0, -1.0, 0.0], [0.5, 0.5, -1.0], [1 / 3, 1 / 3, 1 / 3]]) / 255.0
        with torch.no_grad():
            self.features.weight.copy_(opponent[:, :, None, None])
            self.features.bias.zero_()

    def forward(self, search: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
        fs, ft = self.features(search), self.features(template)
        c, t = ft.shape[1], ft.shape[-1]
        ft = ft - ft.mean(dim=(2, 3), keepdim=True)
        ft = ft / ft.norm().clamp_min(1e-6)
        ones = torch.ones(c, 1, t, t, dtype=fs.dtype, device=fs.device)
        s1 = F.conv2d(fs, ones, groups=c)  # per-channel window sums
        s2 = F.conv2d(fs * fs, ones, groups=c)
        energy = (s2 - s1 * s1 / (t * t)).sum(dim=1)  # window energy around its per-channel mean
        corr = F.conv2d(fs, ft)[:, 0]
        return corr / energy.clamp_min(1e-2).sqrt()  # ≤ 1 (Cauchy-Schwarz); flat windows score ~0


def build_architecture(name: str, seed: int = 0) -> TemplateMatcher:
    torch.manual_seed(seed)  # nothing random in it today; kept so the family reads like the others
    return TemplateMatcher(**ARCHITECTURES[Path(name).name])


def save_checkpoint(model: TemplateMatcher, path: str | Path) -> None:
    kwargs = {"template": model.template_size, "context": model.context}
    torch.save({"format": FORMAT, "kwargs": kwargs, "state_dict": model.state_dict()}, path)


def load_torch(checkpoint: str | Path, device: str = "cpu") -> TemplateMatcher:
    if Path(str(checkpoint)).name in ARCHITECTURES and not Path(checkpoint).is_file():
        return build_architecture(str(checkpoint)).to(device)
    try:
        blob = torch.load(checkpoint, map_location=device, weights_only=True)
        if blob.get("format") != FORMAT:
            raise ValueError(f"format {blob.get('format')!r}")
        model = TemplateMatcher(**blob["kwargs"])
        model.load_state_dict(blob["state_dict"])
    except Exception as exc:  # noqa: BLE001
        raise PlanforgeError(f"{checkpoint}: not a {NAME} checkpoint ({exc})") from None
    return model.to(device).eval()


def class_names(model) -> list[str]:
    return ["target"]


def forward_output(raw):
    return raw


def input_size(model) -> int:
    """The search window's size (`model`: the module, or a runner's facts holding it)."""
    module = model.module if isinstance(model, RunnerFacts) else model
    return int(round(module.template_size * module.context))


class Tracker:
    """One sequence's state: the template, the box; `model` is the runner's (cast, placed) module."""

    def __init__(self, model: TemplateMatcher) -> None:
        p = next(model.parameters())
        self.model, self.device, self.dtype = model, p.device, p.dtype
        self.t = model.template_size
        self.s = input_size(model)
        r = self.s - self.t + 1
        hann = torch.hann_window(r + 2, periodic=False, dtype=torch.float32)[1:-1]
        self.window = (hann[:, None] * hann[None, :]).to(self.device)
        self.template: torch.Tensor | None = None
        self.box: np.ndarray | None = None

    def _frame(self, frame: np.ndarray) -> torch.Tensor:
        if not (isinstance(frame, np.ndarray) and frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8):
            raise PlanforgeError(f"{NAME}: a frame must be HxWx3 uint8 RGB; got {getattr(frame, 'shape', frame)}")
        return torch.from_numpy(frame).to(self.device).permute(2, 0, 1)[None].to(self.dtype)

    def _crops(self, img: torch.Tensor, cx: float, cy: float, sizes: list[tuple[float, float]], out: int):
        """Regions centred on (cx, cy) of each (w, h), resampled to out × out (edges replicated)."""
        h, w = img.shape[-2:]
        theta = torch.tensor(
            [[[cw / w, 0.0, 2 * cx / w - 1], [0.0, ch / h, 2 * cy / h - 1]] for cw, ch in sizes],
            dtype=self.dtype,
            device=self.device,
        )
        grid = F.affine_grid(theta, [len(sizes), 3, out, out], align_corners=False)
        return F.grid_sample(img.expand(len(sizes), -1, -1, -1), grid, padding_mode="border", align_corners=False)

    def start(self, frame: np.ndarray, box_xywh) -> np.ndarray:
        box = np.asarray(box_xywh, np.float64).reshape(4)
        if not (np.all(np.isfinite(box)) and box[2] > 0 and box[3] > 0):
            raise PlanforgeError(f"{NAME}: the prompt box {box.tolist()} needs a positive width and height")
        with torch.inference_mode():
            self.template = self._crops(self._frame(frame), *(box[:2] + box[2:] / 2), [tuple(box[2:])], self.t)
        self.box = box.copy()
        return self.box.copy()

    def track(self, frame: np.ndarray) -> tuple[np.ndarray, float]:
        if self.template is None:
            raise PlanforgeError(f"{NAME}: track before start (no prompt box for this sequence)")
        img = self._frame(frame)
        (x, y, w, h), k = self.box, self.model.context
        cx, cy = x + w / 2, y + h / 2
        with torch.inference_mode():
            search = self._crops(img, cx, cy, [(k * w * s, k * h * s) for s in SCALES], self.s)
            resp = self.model(search, self.template).float()
            penalty = torch.tensor([1.0 if s == 1.0 else SCALE_PENALTY for s in SCALES], device=resp.device)
            ranked = (resp * penalty[:, None, None]) * (1 - WINDOW_INFLUENCE) + WINDOW_INFLUENCE * self.window
            best = int(torch.argmax(ranked))
        r = resp.shape[-1]
        si, py, px = best // (r * r), (best % (r * r)) // r, best % r
        score = float(resp[si, py, px])
        s = SCALES[si]
        cx += (px - (r - 1) / 2) * k * w * s / self.s
        cy += (py - (r - 1) / 2) * k * h * s / self.s
        fh, fw = frame.shape[:2]
        cx, cy = float(np.clip(cx, 0, fw)), float(np.clip(cy, 0, fh))
        damp = 1 + 0.5 * (s - 1)
        w, h = w * damp, h * damp
        self.box = np.array([cx - w / 2, cy - h / 2, w, h])
        if score > UPDATE_ABOVE:
            with torch.inference_mode():
                new = self._crops(img, cx, cy, [(w, h)], self.t)
                self.template = (1 - UPDATE_RATE) * self.template + UPDATE_RATE * new
        return self.box.copy(), score

    def close(self) -> None:
        self.template, self.box = None, None

    def state_bytes(self) -> int:
        held = [t for t in (self.template,) if t is not None]
        return int(sum(t.numel() * t.element_size() for t in held) + (32 if self.box is not None else 0))


def tracker(facts: RunnerFacts) -> Tracker:
    """A Tracker on the runner's module (`facts`), run eager."""
    mode = facts.mode or "eager"
    if facts.module is None or mode != "eager":
        raise PlanforgeError(f"{NAME}: backend {facts.backend} mode {mode!r} is not supported (eager torch only)")
    return Tracker(facts.module)


FAMILIES.register(NAME, FamilySpec(module=__name__, task="tracking", artifacts=("checkpoint",)))
