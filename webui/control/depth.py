"""The depth preprocessors (``depth_midas``, ``depth_zoe``, ``depth_anything``, ``depth_anything_v2``,
``normal_midas``) with transformers' depth-estimation models, offline, on the CPU in float32.

A1111 reads the original checkpoints (``midas/dpt_hybrid-midas-501f0c75.pt``, a pickle; ``depth_anything_v2_vitl
.safetensors`` in the original layout). This app runs the transformers copies of the same networks instead, as they
are published on the Hub, one folder each (``config.json`` + ``model.safetensors`` + ``preprocessor_config.json``)
under ``models/ControlNetPreprocessor/<owner>/<name>/``, e.g.
``models/ControlNetPreprocessor/Intel/dpt-hybrid-midas/`` or
``models/ControlNetPreprocessor/depth-anything/Depth-Anything-V2-Small-hf/``. The first folder of ``FOLDERS[module]``
that is there is used. Only ``.safetensors`` weights are read; a folder with only ``pytorch_model.bin`` (a pickle) is
refused before anything is opened.

The map is A1111's: the predicted relative inverse depth (near = large) scaled to the processor resolution
(short side), normalised to 0..255 per image (near = white), RGB; ZoeDepth predicts metres (far = large): its
2nd percentile is white, its 85th and farther black, as A1111's ``depth_zoe``. ``normal_midas`` turns the same prediction into
a normal map from its Sobel gradients (z = 2 pi; where the normalised depth is under ``threshold_a`` the
background is flat), as lllyasviel's ControlNet 1.0 annotator does.

Loaded models are cached by (folder, mtime_ns of the weights and configs) in a ``ControlCache`` of
``CACHE_ENTRIES`` entries (``webui.control.loading``'s cache), in the cache its caller owns (none: loaded per call).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CACHE_ENTRIES = 2

_MIDAS = ("Intel/dpt-hybrid-midas", "Intel/dpt-large")
# module -> (transformers folders under models/ControlNetPreprocessor, best first; config model_types accepted)
FOLDERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "depth": (_MIDAS, ("dpt",)),
    "normal_map": (_MIDAS, ("dpt",)),
    "depth_zoe": (("Intel/zoedepth-nyu", "Intel/zoedepth-nyu-kitti", "Intel/zoedepth-kitti"), ("zoedepth",)),
    "depth_anything": (
        (
            "LiheYoung/depth-anything-large-hf",
            "LiheYoung/depth-anything-base-hf",
            "LiheYoung/depth-anything-small-hf",
        ),
        ("depth_anything",),
    ),
    "depth_anything_v2": (
        (
            "depth-anything/Depth-Anything-V2-Large-hf",
            "depth-anything/Depth-Anything-V2-Base-hf",
            "depth-anything/Depth-Anything-V2-Small-hf",
        ),
        ("depth_anything",),
    ),
}
NEEDED = ("config.json", "model.safetensors", "preprocessor_config.json")
_PICKLES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def runs_here(module: str) -> bool:
    return module in FOLDERS


def candidates(module: str, preprocessor_dir: Path) -> list[Path]:
    return [Path(preprocessor_dir, *name.split("/")) for name in FOLDERS[module][0]]


def _safetensors(folder: Path) -> list[Path]:
    """The weights transformers reads with ``use_safetensors=True``: one file or the shards of an index."""
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return [index, *sorted(folder.glob("model-*.safetensors"))]
    return []


def find_folder(module: str, preprocessor_dir: Path) -> tuple[Path | None, str]:
    """(the folder to load, "") or (None, what is wrong with the folders that are there, "" when none is)."""
    notes = []
    for folder in candidates(module, preprocessor_dir):
        if not folder.is_dir():
            continue
        missing = [n for n in ("config.json", "preprocessor_config.json") if not (folder / n).is_file()]
        if not _safetensors(folder):
            pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in _PICKLES)
            if pickles:
                notes.append(
                    f"{folder} has {', '.join(pickles)}, which this app never opens (a pickle can run code): "
                    f"download model.safetensors instead"
                )
                continue
            missing.append("model.safetensors")
        if missing:
            notes.append(f"{folder} lacks {', '.join(missing)}")
            continue
        return folder, ""
    return None, "; ".join(notes)


def wanted_message(module: str, label: str, preprocessor_dir: Path, a1111_files: tuple[str, ...]) -> str:
    """What to download and where, when no usable folder is there."""
    _, notes = find_folder(module, preprocessor_dir)
    names = FOLDERS[module][0]
    example = Path(preprocessor_dir, *names[0].split("/"))
    text = (
        f"the preprocessor {label} needs a transformers depth model from huggingface.co, one of {', '.join(names)}: "
        f"its {', '.join(NEEDED)} in {preprocessor_dir}/<owner>/<name>/ (e.g. {example}/)"
    )
    theirs = ", ".join(str(preprocessor_dir / f) for f in a1111_files)
    found = [f for f in a1111_files if (preprocessor_dir / f).is_file()]
    if found:
        pickle = any(f.lower().endswith(_PICKLES) for f in found)
        text += f"; {theirs} is A1111's file{', a pickle,' if pickle else ''} in a layout this app does not read"
    else:
        text += f"; A1111's {theirs} is not read here (another layout)"
    if notes:
        text += f"; {notes}"
    return text + "; or pick the preprocessor 'none' and send a ready-made depth map"


# --- loading -----------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class DepthModel:
    """A loaded depth network and its image processor. Shared by the cache: do not change it in place."""

    model: Any
    processor: Any
    path: Path
    model_type: str  # dpt | depth_anything: relative inverse depth (near = large); zoedepth: metres (far = large)
    lock: Any  # one prediction at a time per model (the page and the API may ask at once)


def load_depth(module: str, folder: Path, cache: Any = None) -> DepthModel:
    """The model in ``folder`` (checked by ``find_folder``), from ``cache`` when the files have not changed
    (``cache`` None: loaded for this call only)."""
    from webui.control.preprocessors import PreprocessorError

    files = [folder / "config.json", folder / "preprocessor_config.json", *_safetensors(folder)]
    try:
        stamp = max(f.stat().st_mtime_ns for f in files)
    except OSError as exc:
        raise PreprocessorError(f"{folder} cannot be read ({exc.strerror or exc})") from None
    key = (str(folder.resolve()), stamp, "cpu", "float32")
    hit = cache.get(key) if cache is not None else None
    if hit is not None:
        return hit
    loaded = _load(module, folder)
    if cache is not None:
        cache.put(key, loaded)
    return loaded


def _load(module: str, folder: Path) -> DepthModel:
    import json

    import torch

    from webui.control.preprocessors import PreprocessorError

    try:
        model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise PreprocessorError(f"{folder / 'config.json'} is not a readable transformers config ({exc})") from None
    accepted = FOLDERS[module][1]
    if model_type not in accepted:
        raise PreprocessorError(
            f"{folder} holds a {model_type!r} model; the preprocessor {module} runs {' or '.join(accepted)} models"
        )
    try:
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        model = AutoModelForDepthEstimation.from_pretrained(
            folder, local_files_only=True, use_safetensors=True, dtype=torch.float32
        )
        processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - the boundary where library errors become a message
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise PreprocessorError(f"the depth model in {folder} cannot be loaded: {line}") from None
    model.to("cpu").eval().requires_grad_(False)
    return DepthModel(model, processor, folder, model_type, threading.Lock())


# --- the maps ----------------------------------------------------------------------------------------


def predict(loaded: DepthModel, rgb: Any, size: tuple[int, int]) -> Any:
    """The raw prediction (float64 HxW) for the HWC uint8 ``rgb``, resized to ``size`` = (h, w): inverse depth
    (near = large), or for ZoeDepth metric depth (far = large)."""
    import numpy as np
    import torch
    from PIL import Image

    inputs = loaded.processor(images=Image.fromarray(rgb), return_tensors="pt")
    with loaded.lock, torch.inference_mode():
        outputs = loaded.model(pixel_values=inputs["pixel_values"].to(torch.float32))
    out = outputs.predicted_depth[:, None].float()
    if loaded.model_type == "zoedepth" and getattr(loaded.processor, "do_pad", False):
        # ZoeDepth's processor pads the image by int(sqrt(side / 2) * 3) on each side before resizing it (against
        # edge artefacts): back to the padded image's size, and the padding cut off (its post-processing needs
        # torchvision)
        h, w = rgb.shape[:2]
        ph, pw = int(np.sqrt(h / 2) * 3), int(np.sqrt(w / 2) * 3)
        out = torch.nn.functional.interpolate(out, size=(h + 2 * ph, w + 2 * pw), mode="bicubic", align_corners=False)
        out = out[:, :, ph : ph + h, pw : pw + w]
    depth = torch.nn.functional.interpolate(out, size=size, mode="bicubic", align_corners=False)
    return depth[0, 0].numpy().astype(np.float64)


def normalised(depth: Any) -> Any:
    """0..1, near = 1 (a flat prediction is all 0)."""
    import numpy as np

    low, high = float(np.min(depth)), float(np.max(depth))
    if not np.isfinite(low) or not np.isfinite(high) or high - low <= 1e-12 * max(1.0, abs(high)):
        return np.zeros_like(depth)
    return (depth - low) / (high - low)


def depth_image(depth: Any) -> Any:
    import numpy as np

    grey = np.clip(np.rint(normalised(depth) * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def metric_depth_image(depth: Any) -> Any:
    """ZoeDepth's metres as A1111 shows them: the 2nd percentile white, the 85th and farther black."""
    import numpy as np

    near, far = np.percentile(depth, 2), np.percentile(depth, 85)
    scaled = 1.0 - (depth - near) / max(float(far - near), 1e-6)
    grey = np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def normal_image(depth: Any, background: float) -> Any:
    """Normals from the depth's Sobel gradients, z = 2 pi, flat where the normalised depth < ``background``."""
    import numpy as np
    from scipy import ndimage

    x = ndimage.sobel(depth, axis=1, mode="reflect")
    y = ndimage.sobel(depth, axis=0, mode="reflect")
    flat = normalised(depth) < float(background)
    x[flat] = 0.0
    y[flat] = 0.0
    z = np.full_like(x, 2.0 * np.pi)
    normal = np.stack([x, y, z], axis=2)
    normal /= np.sqrt(np.sum(normal**2, axis=2, keepdims=True))
    return np.clip(np.rint(normal * 127.5 + 127.5), 0, 255).astype(np.uint8)


def run(module: str, rgb: Any, resolution: int, threshold_a: float, folder: Path, cache: Any = None) -> Any:
    """The map (HWC uint8 RGB) at the processor resolution (short side = ``resolution``)."""
    from webui.control.preprocessors import PreprocessorError

    h, w = rgb.shape[:2]
    k = resolution / min(h, w)
    size = (max(1, round(h * k)), max(1, round(w * k)))
    loaded = load_depth(module, folder, cache)
    try:
        depth = predict(loaded, rgb, size)
    except MemoryError:
        raise PreprocessorError(f"not enough memory to run the depth model in {folder}") from None
    except Exception as exc:  # noqa: BLE001 - the boundary where library errors become a message
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise PreprocessorError(f"the depth model in {folder} failed on this image ({w}x{h}): {line}") from None
    if module == "normal_map":
        return normal_image(depth, threshold_a)
    if loaded.model_type == "zoedepth":
        return metric_depth_image(depth)
    return depth_image(depth)
