"""D-FINE's ONNX export (logits and pred_boxes only) and the nodes INT8 quantization keeps in float."""

from __future__ import annotations

from pathlib import Path

from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.models.dfine.checkpoints import INPUT_NAME, OUTPUT_NAMES, fix_input_size, load_torch

# Nodes INT8 quantization leaves in float, by reason (ONNX node names of `export_onnx`'s graph).
# The decoder refines boxes as distributions over bins (FDR) and samples features at fractional
# offsets (deformable attention): 8-bit offsets and bin weights move every box. The encoder's
# query selection (score/box heads feeding TopK) picks the queries: 8 bits there reorder them.
QUANT_EXCLUDE = {
    "decoder (deformable attention sampling, box distributions, heads)": r"^/inner/model/decoder/",
    "query selection (encoder score and box heads)": r"^/inner/model/enc_(output|score_head|bbox_head)",
}


class _Trimmed:
    """Wraps the HF module so tracing sees only the two outputs that matter."""

    def __new__(cls, model):
        import torch

        class Trimmed(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, pixel_values):
                out = self.inner(pixel_values=pixel_values)
                return out.logits, out.pred_boxes

        return Trimmed(model).eval()


def export_onnx(checkpoint: str | Path, out: str | Path, imgsz: int, opset: int = 17, dynamic: bool = True) -> dict:
    """torch.onnx export (TorchScript exporter) of logits and pred_boxes only; simplified by the export step."""
    import warnings

    import torch

    hf = load_torch(checkpoint)
    # Anchors as constants for this input size (as checkpoints with `anchor_image_size` have them):
    # computed once in eager mode instead of traced op by op.
    fix_input_size(hf, imgsz, imgsz, torch.device("cpu"), torch.float32)
    model = _Trimmed(hf)
    dummy = torch.rand(2 if dynamic else 1, 3, imgsz, imgsz)
    axes = {INPUT_NAME: {0: "batch"}, **{o: {0: "batch"} for o in OUTPUT_NAMES}} if dynamic else None
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (dummy,),
            str(out),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )
    return {"exporter": "torch.onnx (TorchScript)", "input_name": INPUT_NAME, "output_names": list(OUTPUT_NAMES)}


def quant_exclude(model) -> dict[str, list[str]]:
    """Node names of an exported ONNX model that QUANT_EXCLUDE keeps in float, by reason."""
    import re

    if not any(n.name.startswith("/inner/model/") for n in model.graph.node):
        raise PlanforgeError("the ONNX graph was not made by the D-FINE exporter (no /inner/model/ nodes); re-export")
    return {
        reason: [n.name for n in model.graph.node if re.match(pattern, n.name)]
        for reason, pattern in QUANT_EXCLUDE.items()
    }
