"""D-FINE checkpoints: Hugging Face ids, save_pretrained folders, prepared files and architecture names, loaded as
an eval-mode torch module; the settings a checkpoint takes, and the module's inputs and outputs."""

from __future__ import annotations

from pathlib import Path

from workflow_scripts.core.io import PlanforgeError, exception_line
from workflow_scripts.models.dfine.architectures import build_architecture, is_architecture_name, quiet

INPUT_NAME = "pixel_values"
OUTPUT_NAMES = ("logits", "pred_boxes")
FORMAT = "planforge-dfine-v1"  # the prepared checkpoint file's layout

# Published checkpoints by size name; the seed's `ustc-community/dfine_x_coco` is today
# published as `ustc-community/dfine-xlarge-coco` (same snapshot), and both names are accepted.
HUB_NAMES = {
    "dfine-n": "ustc-community/dfine-nano-coco",
    "dfine-s": "ustc-community/dfine-small-coco",
    "dfine-m": "ustc-community/dfine-medium-coco",
    "dfine-l": "ustc-community/dfine-large-coco",
    "dfine-x": "ustc-community/dfine-xlarge-coco",
    "ustc-community/dfine_n_coco": "ustc-community/dfine-nano-coco",
    "ustc-community/dfine_s_coco": "ustc-community/dfine-small-coco",
    "ustc-community/dfine_m_coco": "ustc-community/dfine-medium-coco",
    "ustc-community/dfine_l_coco": "ustc-community/dfine-large-coco",
    "ustc-community/dfine_x_coco": "ustc-community/dfine-xlarge-coco",
}


def hub_id(name: str) -> str:
    """The Hugging Face id a checkpoint name stands for (size names and the old names mapped)."""
    return HUB_NAMES.get(str(name), str(name))


def hub_id_form(checkpoint: str) -> bool:
    """Written like a Hugging Face id (owner/name, or a size name that maps to one), not a local path."""
    return "/" in hub_id(checkpoint) and not str(checkpoint).startswith((".", "/"))


def save_checkpoint(model, path: str | Path) -> None:
    """One torch file with the config and the weights: what `load_torch` reads back offline."""
    import torch

    torch.save(
        {"format": FORMAT, "config": model.config.to_dict(), "state_dict": model.state_dict()},
        str(path),
    )


def _from_file(path: Path):
    import torch
    from transformers import DFineConfig, DFineForObjectDetection

    try:
        blob = torch.load(str(path), map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        model = DFineForObjectDetection(DFineConfig.from_dict(blob["config"]))
        model.load_state_dict(blob["state_dict"])
    except Exception as exc:  # torch.load raises many types for a damaged file
        raise PlanforgeError(
            f"{path}: not a loadable D-FINE checkpoint ({exception_line(exc)}); replace the file"
        ) from None
    return model


def _from_pretrained(src: str):
    from transformers import DFineForObjectDetection

    try:
        return DFineForObjectDetection.from_pretrained(src)
    except OSError as exc:
        local = Path(src).exists()
        what = "a directory written by save_pretrained" if local else "a Hugging Face id"
        raise PlanforgeError(
            f"{src}: cannot load D-FINE from {what} ({exception_line(exc)}); "
            + (
                "check the directory holds config.json and model.safetensors"
                if local
                else "download it once with network access (`hf download "
                + src
                + "`) or point `checkpoint` at a local copy"
            )
        ) from None


def load_torch(checkpoint: str | Path, device: str = "cpu"):
    """Load D-FINE as an eval-mode FP32 torch module, from any of the checkpoint forms above."""
    quiet()
    src = str(checkpoint)
    if src.endswith((".yaml", ".yml")) and not Path(src).exists():
        model = build_architecture(src)
    elif Path(src).is_file():
        model = _from_file(Path(src))
    elif Path(src).is_dir():
        model = _from_pretrained(src)
    elif hub_id_form(src):
        model = _from_pretrained(hub_id(src))
    else:
        raise PlanforgeError(
            f"{src}: checkpoint not found; give a Hugging Face id, a save_pretrained directory or a file"
        )
    model = model.eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def apply_settings(model, settings: dict):
    """The model with its config's settings (`num_queries`) changed and its own weights: what prepare saves.

    num_queries is how many encoder proposals (top-k of the encoder's class scores, over every anchor)
    the decoder refines: it sizes a topk at inference time and no weight, unless the checkpoint learned its
    initial queries (`learn_initial_query`, an embedding per query). The model is rebuilt from the changed
    config and loads the weights strictly, so such a checkpoint is refused instead of half-loaded.
    """
    import copy

    from transformers import DFineForObjectDetection

    n = settings.get("num_queries")
    if n is None or int(n) == model.config.num_queries:
        return model
    config = copy.deepcopy(model.config)
    config.num_queries = int(n)
    quiet()
    rebuilt = DFineForObjectDetection(config)
    try:
        rebuilt.load_state_dict(model.state_dict(), strict=True)
    except RuntimeError as exc:
        raise PlanforgeError(
            f"num_queries {n}: this checkpoint's weights depend on its {model.config.num_queries} queries "
            f"({exception_line(exc)[:200]}); remove num_queries from its config entry"
        ) from None
    rebuilt = rebuilt.eval()
    for p in rebuilt.parameters():
        p.requires_grad_(False)
    return rebuilt


def checkpoint_dir_problem(path: Path) -> str | None:
    """Why a directory is not a D-FINE save_pretrained folder, or None (its config.json only, no weights read)."""
    import json

    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        return f"{path}: a directory without a readable config.json ({exc}); give a save_pretrained folder"
    if not isinstance(config, dict) or config.get("model_type") != "d_fine":
        got = config.get("model_type") if isinstance(config, dict) else None
        return f"{path}: config.json says model_type {got!r}, not 'd_fine'; give a D-FINE checkpoint or fix the family"
    if not any(
        (path / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    ):
        return f"{path}: has config.json but no model.safetensors or pytorch_model.bin; copy the weights there"
    return None


def settings_problem(checkpoint: str, settings: dict) -> tuple[str, str] | None:
    """(key, why) for a setting this checkpoint cannot take, decided from a save_pretrained folder's config.json
    (num_queries on a checkpoint that learned its initial queries); None where fine or not known before loading."""
    import json

    n = settings.get("num_queries")
    path = Path(checkpoint) / "config.json"
    if n is None or not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if config.get("learn_initial_query") and int(n) != config.get("num_queries"):
        return "num_queries", (
            f"{checkpoint} learned its {config.get('num_queries')} initial queries (learn_initial_query), so its "
            f"weights fix the count; remove num_queries or set it to {config.get('num_queries')}"
        )
    return None


def checkpoint_inputs(checkpoint: str) -> list[str]:
    """Local files the checkpoint is read from (Snakemake inputs): a directory's files, a file, or none."""
    p = Path(checkpoint)
    if p.is_dir():
        return sorted(str(f) for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
    if is_architecture_name(checkpoint):
        return []
    if not p.exists() and hub_id_form(checkpoint) and not Path(str(checkpoint).split("/")[0]).is_dir():
        return []  # a Hugging Face id: nothing local to watch (changing the id reruns via params)
    return [str(checkpoint)]


def fix_input_size(model, height: int, width: int, device, dtype) -> None:
    """Make the eval forward capturable for one input size (CUDA graphs, torch.compile).

    Without `anchor_image_size`, transformers' D-FINE builds its anchors and valid mask on every
    call; with it, it keeps them as plain (non-buffer) CPU tensors that `.to(device, dtype)`
    copies to the GPU on every call, which a CUDA graph cannot capture. Here they are computed
    once for this size, on the model's device and in its dtype, so that copy is a no-op.
    """
    inner = model.model
    inner.config.anchor_image_size = [int(height), int(width)]
    anchors, valid_mask = inner.generate_anchors(device=device, dtype=dtype)
    inner.anchors, inner.valid_mask = anchors, valid_mask.to(dtype)


def class_names(model) -> list[str]:
    """Class names in output order, from the config's id2label."""
    id2label = model.config.id2label
    return [str(id2label[i]) for i in range(len(id2label))]


def forward_output(raw):
    """The two outputs that matter, (logits [N, Q, C], pred_boxes [N, Q, 4] cxcywh in 0..1)."""
    if isinstance(raw, dict) or hasattr(raw, "logits"):
        return raw["logits"], raw["pred_boxes"]
    return raw[0], raw[1]
