"""Pi0 family (transformers' native `PI0ForConditionalGeneration`, transformers ≥ 5.4): a PaliGemma
vision-language prefix plus a Gemma action expert that denoises an action chunk by flow matching.

Checkpoints are architecture names with seeded random weights (nothing from the hub):
`pi0.yaml` / `pi0-3b.yaml` (the default `PI0Config()`, about 3.5 B parameters, for GPU timing) and
`pi0-tiny.yaml` (a few hundred K parameters, for CPU tests and the embedded default). The prepared
checkpoint file holds the architecture, its config and the seed (`FORMAT`); the weights are rebuilt
from the seed on load, so a 3.5 B model is not written to disk.

The timed unit is one action chunk: `Pi0Chunk` (`chunk_class()`) wraps the model as one forward
(prefix encoding, then `num_inference_steps` denoising steps with the prefix cache), the same
computation as `sample_actions`, and records the two phases' times when it runs eagerly.

Inputs (`preprocess`) are arrays, no tokenizer: images resized to the vision tower's size and scaled to
[-1, 1] (PaliGemma's normalisation), the prompt's token ids after `cameras × tokens-per-image` image
tokens (the processor's layout, `<image>…<bos>prompt`), their attention mask, the state padded to
`max_state_dim`, and the noise the chunk starts from (given, so every backend denoises the same noise).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from workflow_scripts.core.envinfo import transformers_checks_off
from workflow_scripts.core.io import PlanforgeError
from workflow_scripts.models import read_saved_source

INPUT_NAME = "pixel_values"
INPUT_NAMES = ("pixel_values", "pixel_attention_mask", "input_ids", "attention_mask", "state", "noise")
OUTPUT_NAMES = ("actions",)
FORMAT = "planforge-pi0-v1"
BOS_ID = 2

# Architecture name → PI0Config keyword arguments ({}: the default full size).
ARCHITECTURES: dict[str, dict] = {
    "pi0.yaml": {},
    "pi0-3b.yaml": {},
    "pi0-tiny.yaml": {
        "vlm_config": {
            "text_config": {
                "model_type": "gemma",
                "hidden_size": 32,
                "num_hidden_layers": 2,
                "intermediate_size": 64,
                "num_attention_heads": 2,
                "num_key_value_heads": 1,
                "head_dim": 16,
                "vocab_size": 8192,
            },
            "vision_config": {
                "model_type": "siglip_vision_model",
                "hidden_size": 32,
                "intermediate_size": 64,
                "patch_size": 14,
                "image_size": 56,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "vision_use_head": False,
            },
            "projection_dim": 32,
            "image_token_id": 8192,
        },
        "dit_config": {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "intermediate_size": 64,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
        },
    },
}


def is_architecture_name(checkpoint: str) -> bool:
    return Path(str(checkpoint)).name in ARCHITECTURES


def _config(kwargs: dict):
    from transformers import PI0Config

    return PI0Config(**kwargs)


def _build(kwargs: dict, seed: int):
    import torch
    from transformers import PI0ForConditionalGeneration

    torch.manual_seed(seed)
    model = PI0ForConditionalGeneration(_config(kwargs))
    return model.eval()


def build_architecture(name: str, seed: int = 0):
    """`PI0ForConditionalGeneration` of a named architecture, seeded random weights, wrapped as one chunk."""
    key = Path(str(name)).name
    if key not in ARCHITECTURES:
        raise PlanforgeError(f"{name!r}: not a pi0 architecture; one of {sorted(ARCHITECTURES)}")
    chunk = chunk_class()(_build(ARCHITECTURES[key], seed))
    chunk.planforge_source = {"format": FORMAT, "architecture": key, "config": ARCHITECTURES[key], "seed": seed}
    return chunk


def save_checkpoint(model, path: str | Path) -> None:
    """The architecture, its config and the seed: the weights are rebuilt from them (see the module doc)."""
    import torch

    torch.save(model.planforge_source, path)


def load_torch(checkpoint: str | Path, device: str = "cpu"):
    """A `Pi0Chunk` from an architecture name or a prepared checkpoint file; one line if it cannot be read."""

    if is_architecture_name(str(checkpoint)) and not Path(checkpoint).is_file():
        return build_architecture(str(checkpoint)).to(device)
    source = read_saved_source(checkpoint, FORMAT, "pi0")
    chunk = chunk_class()(_build(source["config"], int(source["seed"])))
    chunk.planforge_source = source
    return chunk.to(device)


def class_names(model) -> list[str]:
    return []  # actions, not classes


def forward_output(raw):
    return raw


_CHUNK_CLASS: list = []
CACHE_KWARG = "cache"  # set by _make_chunk_class from the installed transformers


def chunk_class():
    """`Pi0Chunk`, defined on first use so that importing this module does not import torch."""
    if not _CHUNK_CLASS:
        _CHUNK_CLASS.append(_make_chunk_class())
    return _CHUNK_CLASS[0]


def _make_chunk_class():
    import inspect

    import torch
    from transformers import PI0ForConditionalGeneration

    # transformers renamed the prefix cache: `past_key_values` (≤ 5.2x, e.g. 5.17), `cache` (5.24; the old name
    # deprecated until 5.40). The installed version's own name, so that neither warns nor breaks.
    global CACHE_KWARG
    params = inspect.signature(PI0ForConditionalGeneration.forward).parameters
    CACHE_KWARG = "cache" if "cache" in params else "past_key_values"

    class Pi0Chunk(torch.nn.Module):
        """One action chunk as one forward: prefix (images + prompt → KV cache), then the denoising loop.

        The same steps as `PI0ForConditionalGeneration.sample_actions`; eagerly (not while compiling or
        capturing a CUDA graph) it records each phase's seconds in `phase_times_ms` (synchronising a CUDA
        device between the phases, so a split-timed chunk is slightly slower than an unsplit one).
        """

        def __init__(self, model) -> None:
            super().__init__()
            self.model = model
            self.config = model.config
            self.phase_times_ms: dict[str, list[float]] = {"prefix": [], "denoise": []}
            self.planforge_source: dict = {}

        def _mark(self, device) -> float | None:
            if torch.compiler.is_compiling():
                return None
            if device.type == "cuda":
                if torch.cuda.is_current_stream_capturing():
                    return None
                torch.cuda.synchronize(device)
            return time.perf_counter()

        def embed_prefix(self, input_ids, pixel_values, pixel_attention_mask):
            """The prefix embeddings (image features at the image tokens, text embeddings elsewhere), computed
            without a host sync so that a CUDA graph can capture it.

            The algorithm of transformers 5.24's `PI0Model.embed_prefix` (gather by camera rank, `torch.where`),
            here so that older versions capture too: 5.17's picks each batch row's present cameras with a
            boolean index and zeroes image ids by boolean assignment, both `nonzero` on the device (a sync,
            which invalidates a capture). Padded cameras (mask False) are skipped as there.
            """
            vlm = self.model.model.vlm
            batch, cams = pixel_attention_mask.shape
            features = vlm.get_image_features(pixel_values.flatten(0, 1)).pooler_output
            tokens, hidden = features.shape[1], features.shape[2]
            features = features.reshape(batch, cams * tokens, hidden)
            is_image = input_ids == self.config.vlm_config.image_token_id
            rank = is_image.long().cumsum(-1) - 1  # cumsums over integers: ONNX's CumSum takes no bool
            camera = rank // tokens
            offset = rank - camera * tokens
            slot = pixel_attention_mask.long().cumsum(-1) - 1
            match = (slot[:, None, :] == camera[..., None]) & pixel_attention_mask[:, None, :]
            index = match.int().argmax(-1) * tokens + offset
            image = features.gather(1, index[..., None].expand(-1, -1, hidden))
            text = vlm.get_input_embeddings()(input_ids.masked_fill(is_image, 0))
            return torch.where(is_image[..., None], image.to(text.dtype), text)

        def prefix(self, pixel_values, pixel_attention_mask, input_ids, attention_mask):
            """Images + prompt → the vision-language model's KV cache (the first phase of a chunk)."""
            model = self.model
            position_ids = attention_mask.cumsum(-1) - 1
            embeds = self.embed_prefix(input_ids, pixel_values, pixel_attention_mask)
            out = model.model.vlm(
                inputs_embeds=embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                token_type_ids=torch.zeros_like(embeds)[:, :, 0],
                use_cache=True,
                return_dict=True,
            )
            return out.cache if CACHE_KWARG == "cache" else out.past_key_values

        def forward(self, pixel_values, pixel_attention_mask, input_ids, attention_mask, state, noise):
            model = self.model
            batch = input_ids.shape[0]
            device = input_ids.device
            t0 = self._mark(device)
            cache = self.prefix(pixel_values, pixel_attention_mask, input_ids, attention_mask)
            prefix_length = cache.get_seq_length()
            t1 = self._mark(device)
            steps = self.config.num_inference_steps
            dt = -1.0 / steps
            actions = noise
            for step in range(steps):
                timestep = torch.full((batch,), 1.0 + step * dt, dtype=torch.float32, device=device)
                out = model(
                    state=state,
                    noise=actions,
                    timestep=timestep,
                    pixel_attention_mask=pixel_attention_mask,
                    attention_mask=attention_mask,
                    **{CACHE_KWARG: cache},
                )
                cache.crop(prefix_length - cache.get_seq_length())
                actions = actions + dt * out.logits
            t2 = self._mark(device)
            if t0 is not None and t1 is not None and t2 is not None:
                self.phase_times_ms["prefix"].append((t1 - t0) * 1e3)
                self.phase_times_ms["denoise"].append((t2 - t1) * 1e3)
            return actions

    return Pi0Chunk


GEOMETRY_KEY = "planforge_pi0_geometry"  # the ONNX metadata entry holding `geometry` of the exported model


def geometry(model) -> dict:
    """What `preprocess` needs from a model's config (image size, image tokens, dims), as plain numbers.

    `model` is a Pi0Chunk, or the path of its ONNX export (read from the export's metadata)."""
    if isinstance(model, (str, Path)):
        import json

        import onnx

        meta = {p.key: p.value for p in onnx.load(str(model), load_external_data=False).metadata_props}
        if GEOMETRY_KEY not in meta:
            raise PlanforgeError(f"{model}: no {GEOMETRY_KEY} metadata; not a pi0 export of this workflow, rerun it")
        return json.loads(meta[GEOMETRY_KEY])
    cfg = model.config
    vision = cfg.vlm_config.vision_config
    tokens = (vision.image_size // vision.patch_size) ** 2
    return {
        "image_size": int(vision.image_size),
        "tokens_per_image": int(tokens),
        "image_token_id": int(cfg.vlm_config.image_token_id),
        "vocab_size": int(cfg.vlm_config.text_config.vocab_size),
        "chunk_size": int(cfg.chunk_size),
        "max_state_dim": int(cfg.max_state_dim),
        "max_action_dim": int(cfg.max_action_dim),
        "num_inference_steps": int(cfg.num_inference_steps),
    }


def checkpoint_geometry(checkpoint: str | Path) -> dict:
    """`geometry` from a checkpoint's config alone, without building its weights (the Triton repository's
    tensor shapes; building the 3.5 B model on a CPU takes a minute and 14 GB)."""
    import types

    if is_architecture_name(str(checkpoint)) and not Path(checkpoint).is_file():
        kwargs = ARCHITECTURES[Path(str(checkpoint)).name]
    else:
        kwargs = read_saved_source(checkpoint, FORMAT, "pi0")["config"]
    return geometry(types.SimpleNamespace(config=_config(kwargs)))


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == size and image.shape[1] == size:
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def preprocess(episodes: dict, geo: dict) -> dict[str, np.ndarray]:
    """Episode arrays (images [B, cams, H, W, 3] uint8, state [B, S], prompt ids [B, L] + mask, noise
    [B, chunk, action dim]) → the model's input arrays (`INPUT_NAMES`), float32 / int64 / bool."""
    images = episodes["images"]
    batch, cams = images.shape[:2]
    size = geo["image_size"]
    pixels = np.stack([[_resize(images[b, c], size) for c in range(cams)] for b in range(batch)])
    pixels = pixels.astype(np.float32).transpose(0, 1, 4, 2, 3) / 127.5 - 1.0
    prompt = np.asarray(episodes["token_ids"], dtype=np.int64) % geo["vocab_size"]
    prompt_mask = np.asarray(episodes["token_mask"], dtype=bool)
    n_image = cams * geo["tokens_per_image"]
    ids = np.concatenate(
        [np.full((batch, n_image), geo["image_token_id"], np.int64), np.full((batch, 1), BOS_ID, np.int64), prompt],
        axis=1,
    )
    mask = np.concatenate([np.ones((batch, n_image + 1), bool), prompt_mask], axis=1)
    state = np.zeros((batch, geo["max_state_dim"]), np.float32)
    s = np.asarray(episodes["state"], np.float32)[:, : geo["max_state_dim"]]
    state[:, : s.shape[1]] = s
    noise = np.asarray(episodes["noise"], np.float32)
    want = (batch, geo["chunk_size"], geo["max_action_dim"])
    if noise.shape != want:
        raise PlanforgeError(f"noise of shape {noise.shape}; the model denoises {want}")
    return {
        "pixel_values": np.ascontiguousarray(pixels),
        "pixel_attention_mask": np.ones((batch, cams), bool),
        "input_ids": ids,
        "attention_mask": mask.astype(np.int64),
        "state": state,
        "noise": noise,
    }


def export_onnx(
    checkpoint: str | Path, out: str | Path, imgsz: int, opset: int = 17, dynamic: bool = True, example=None
) -> dict:
    """The whole chunk (prefix + the unrolled denoising steps, KV cache inside) as one ONNX graph.

    Traced by torch.onnx's TorchScript exporter on `example` (the task's named input arrays from the val
    episodes, given by the export step): the number of cameras and the prompt length are those of the
    dataset, fixed in the graph; the batch is dynamic. `geometry` travels in the file's metadata, so a runner
    of the ONNX file preprocesses as the torch module does. The export step checks it against torch.
    """
    import json
    import warnings

    import onnx
    import torch

    if example is None:
        raise PlanforgeError("pi0 export: needs example inputs (the export step passes the val episodes')")
    chunk = load_torch(checkpoint)
    args = tuple(torch.from_numpy(np.asarray(example[n])) for n in INPUT_NAMES)
    names = list(INPUT_NAMES)
    axes = {n: {0: "batch"} for n in [*names, *OUTPUT_NAMES]} if dynamic else None
    with warnings.catch_warnings(), torch.inference_mode(), transformers_checks_off():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            chunk,
            args,
            str(out),
            input_names=names,
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )
    model = onnx.load(str(out))
    entry = model.metadata_props.add()
    entry.key, entry.value = GEOMETRY_KEY, json.dumps(geometry(chunk), sort_keys=True)
    onnx.save(model, str(out))
    return {
        "exporter": "torch.onnx (TorchScript), whole chunk: prefix + unrolled denoising steps",
        "input_names": names,
        "output_names": list(OUTPUT_NAMES),
        "fixed": {"cameras": int(args[0].shape[1]), "sequence_length": int(args[2].shape[1])},
    }
