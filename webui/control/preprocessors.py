"""ControlNet preprocessors (A1111 sd-webui-controlnet's "modules"): image -> control map.

The ones that need no downloaded weights run here with numpy/scipy/PIL (no OpenCV): ``none``, ``canny``
(Sobel + non-maximum suppression + hysteresis on the Sobel L1 magnitude, as ``cv2.Canny(img, low, high)``;
not bit-identical to OpenCV), ``invert``, ``threshold``, ``blur_gaussian``, ``tile_resample``, ``shuffle``,
``scribble_xdog``, ``lineart_standard``, ``color`` (t2ia_color_grid), ``recolor_luminance`` / ``recolor_intensity``,
``inpaint`` / ``inpaint_only`` (the map is RGBA: alpha 0 where the mask says "repaint") and the IP-Adapter
CLIP modules (the image itself: the CLIP vision encoder runs when the unit is applied).

The depth ones (``depth_midas``, ``depth_zoe``, ``depth_anything``, ``depth_anything_v2``, ``normal_midas``) run
transformers' depth models from ``models/ControlNetPreprocessor/<owner>/<name>/`` (``webui.control.depth``). The
other model-based ones (``openpose``, ``depth_leres``, ...) are listed, with A1111's names, labels and sliders, but this
app does not run their networks: ``run_preprocessor`` raises ``PreprocessorError`` naming the weights file A1111
uses and the folder it would go in, so a user can pick ``none`` and send a ready map.

* ``module_names()``: A1111 names, in A1111's order of kinds;
* ``module_detail(name)``: the ``/controlnet/module_list`` detail (``model_free``, ``sliders``) + ours;
* ``resolve_module(name_or_label)``: the A1111 name, or None;
* ``run_preprocessor(name, image, resolution, threshold_a, threshold_b, models_dir, mask=, seed=)``;
* ``resize_control(image, width, height, resize_mode)``: A1111's resize modes for the control map;
* ``pixel_perfect_resolution(image, width, height, resize_mode)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREPROCESSOR_FOLDER = "ControlNetPreprocessor"  # under the models folder (Forge's name)


class PreprocessorError(ValueError):
    """A preprocessor cannot run: the message says why and what to do."""


@dataclass(frozen=True)
class Slider:
    name: str
    value: float
    min: float
    max: float
    step: float = 1.0

    def as_dict(self) -> dict:
        return {"name": self.name, "value": self.value, "min": self.min, "max": self.max, "step": self.step}


RES = Slider("Preprocessor Resolution", 512, 64, 2048, 8)


@dataclass(frozen=True)
class Module:
    name: str
    label: str = ""
    resolution: Slider | None = RES  # None: no resolution slider (the image is used at its own size)
    a: Slider | None = None
    b: Slider | None = None
    weights: tuple[str, ...] = ()  # files under models/ControlNetPreprocessor (model-based ones)
    source: str = ""  # where A1111 gets the weights
    needs_mask: bool = False
    kind: str = "image"  # image | clip (IP-Adapter: the encoder runs at apply time) | inpaint | model
    union_type: str = "Unknown"  # the ControlNet-Union control type this map is (A1111's enum names)
    extra: dict = field(default_factory=dict)

    @property
    def display(self) -> str:
        return self.label or self.name


def _m(name, label="", **kw) -> Module:
    return Module(name, label, **kw)


def _model(name, label, files, source="lllyasviel/Annotators", union="Unknown", a=None, b=None, res=RES) -> Module:
    return Module(name, label, res, a, b, tuple(files), source, kind="model", union_type=union)


_LOW = Slider("Low Threshold", 100, 1, 255, 1)
_HIGH = Slider("High Threshold", 200, 1, 255, 1)

MODULES: tuple[Module, ...] = (
    _m("none", resolution=None),
    _m("canny", a=_LOW, b=_HIGH, union_type="Hard Edge"),
    _m("invert", "invert (from white bg & black line)", resolution=None, union_type="Hard Edge"),
    _m("threshold", a=Slider("Binarization Threshold", 127, 0, 255, 1)),
    _m("blur_gaussian", a=Slider("Sigma", 9.0, 0.01, 64.0, 0.01), union_type="Tile"),
    _m("tile_resample", resolution=None, a=Slider("Down Sampling Rate", 1.0, 1.0, 8.0, 0.01), union_type="Tile"),
    _m("shuffle", resolution=None),
    _m("scribble_xdog", a=Slider("XDoG Threshold", 32, 1, 64, 1), union_type="Soft Edge"),
    _m("lineart_standard", "lineart_standard (from white bg & black line)", union_type="Hard Edge"),
    _m("color", "t2ia_color_grid"),
    _m("recolor_luminance", a=Slider("Gamma Correction", 1.0, 0.1, 2.0, 0.001)),
    _m("recolor_intensity", a=Slider("Gamma Correction", 1.0, 0.1, 2.0, 0.001)),
    _m("inpaint", "inpaint_global_harmonious", resolution=None, needs_mask=True, kind="inpaint", union_type="Inpaint"),
    _m("inpaint_only", resolution=None, needs_mask=True, kind="inpaint", union_type="Inpaint"),
    _m("ip-adapter_clip_sd15", "ip-adapter_clip_h", resolution=None, kind="clip", extra={"encoder": "ViT-H"}),
    _m("ip-adapter_clip_sdxl", "ip-adapter_clip_g", resolution=None, kind="clip", extra={"encoder": "ViT-bigG"}),
    _m("ip-adapter_clip_sdxl_plus_vith", resolution=None, kind="clip", extra={"encoder": "ViT-H"}),
    _m("ip-adapter-auto", resolution=None, kind="clip", extra={"encoder": "auto"}),
    _model("depth", "depth_midas", ["midas/dpt_hybrid-midas-501f0c75.pt"], "lllyasviel/ControlNet", "Depth"),
    _model("depth_zoe", "depth_zoe", ["zoedepth/ZoeD_M12_N.pt"], union="Depth"),
    _model(
        "depth_leres",
        "depth_leres",
        ["leres/res101.pth", "leres/latest_net_G.pth"],
        union="Depth",
        a=Slider("Remove Near %", 0, 0, 100, 0.1),
        b=Slider("Remove Background %", 0, 0, 100, 0.1),
    ),
    _model(
        "depth_anything",
        "depth_anything",
        ["depth_anything/depth_anything_vitl14.pth"],
        "LiheYoung/Depth-Anything",
        "Depth",
    ),
    _model(
        "depth_anything_v2",
        "depth_anything_v2",
        ["depth_anything_v2/depth_anything_v2_vitl.safetensors"],
        "MackinationsAi/Depth-Anything-V2_Safetensors",
        "Depth",
    ),
    _model(
        "normal_map",
        "normal_midas",
        ["midas/dpt_hybrid-midas-501f0c75.pt"],
        "lllyasviel/ControlNet",
        "Normal Map",
        a=Slider("Normal Background Threshold", 0.4, 0.0, 1.0, 0.01),
    ),
    _model("normal_bae", "normal_bae", ["normal_bae/scannet.pt"], union="Normal Map"),
    _model("openpose", "openpose", ["openpose/body_pose_model.pth"], union="OpenPose"),
    _model(
        "openpose_full",
        "openpose_full",
        ["openpose/body_pose_model.pth", "openpose/hand_pose_model.pth", "openpose/facenet.pth"],
        union="OpenPose",
    ),
    _model(
        "dw_openpose_full",
        "dw_openpose_full",
        ["openpose/dw-ll_ucoco_384.onnx", "openpose/yolox_l.onnx"],
        "yzd-v/DWPose",
        "OpenPose",
    ),
    _model("hed", "softedge_hed", ["hed/ControlNetHED.pth"], union="Soft Edge"),
    _model("pidinet", "softedge_pidinet", ["pidinet/table5_pidinet.pth"], union="Soft Edge"),
    _model("lineart", "lineart_realistic", ["lineart/sk_model.pth"], union="Hard Edge"),
    _model("lineart_anime", "lineart_anime", ["lineart_anime/netG.pth"], union="Hard Edge"),
    _model(
        "mlsd",
        "mlsd",
        ["mlsd/mlsd_large_512_fp32.pth"],
        "lllyasviel/ControlNet",
        "Hard Edge",
        a=Slider("MLSD Value Threshold", 0.1, 0.01, 2.0, 0.01),
        b=Slider("MLSD Distance Threshold", 0.1, 0.01, 20.0, 0.01),
    ),
    _model(
        "segmentation", "seg_ufade20k", ["uniformer/upernet_global_small.pth"], "lllyasviel/ControlNet", "Segmentation"
    ),
    _model(
        "oneformer_ade20k", "seg_ofade20k", ["oneformer/250_16_swin_l_oneformer_ade20k_160k.pth"], union="Segmentation"
    ),
    _model("inpaint_only+lama", "inpaint_only+lama", ["lama/ControlNetLama.pth"], union="Inpaint"),
)
_BY_NAME = {m.name: m for m in MODULES}
_BY_LABEL = {m.display: m for m in MODULES}
_ALIASES = {
    "depth_midas": "depth",
    "normal_midas": "normal_map",
    "softedge_hed": "hed",
    "softedge_pidinet": "pidinet",
    "lineart_realistic": "lineart",
    "seg_ufade20k": "segmentation",
    "inpaint_global_harmonious": "inpaint",
    "ip-adapter_clip_h": "ip-adapter_clip_sd15",
    "ip-adapter_clip_g": "ip-adapter_clip_sdxl",
}


def module_names() -> list[str]:
    return [m.name for m in MODULES]


def resolve_module(name: str | None) -> str | None:
    """A1111 looks a module up by label first, then by name; ``None``/"" is ``none``."""
    if name is None or str(name).strip() == "" or str(name).strip().lower() == "none":
        return "none"
    text = str(name).strip()
    if text in _BY_LABEL:
        return _BY_LABEL[text].name
    if text in _BY_NAME:
        return text
    if text in _ALIASES:
        return _ALIASES[text]
    lower = text.lower()
    for m in MODULES:
        if lower in (m.name.lower(), m.display.lower()):
            return m.name
    return None


def get_module(name: str) -> Module:
    resolved = resolve_module(name)
    if resolved is None:
        raise PreprocessorError(f"unknown preprocessor {name!r}; known: {', '.join(module_names())}")
    return _BY_NAME[resolved]


def module_detail(name: str) -> dict:
    """A1111's ``module_detail`` entry (``model_free``, ``sliders``) plus this app's own keys (``needs_weights``:
    the files under models/ControlNetPreprocessor, for the depth ones the transformers folders, any one will do)."""
    from webui.control import depth

    m = get_module(name)
    sliders = [s.as_dict() for s in (m.resolution, m.a, m.b) if s is not None]
    return {
        "model_free": False,  # A1111: True only for reference_* (no ControlNet model needed)
        "sliders": sliders,
        "name": m.name,
        "label": m.display,
        "needs_mask": m.needs_mask,
        "needs_weights": list(depth.FOLDERS[m.name][0]) if depth.runs_here(m.name) else list(m.weights),
        "kind": m.kind,
        "union_control_type": m.union_type,
    }


def slider_defaults(name: str, resolution: Any = -1, threshold_a: Any = -1, threshold_b: Any = -1):
    """(resolution, a, b) with A1111's rule: a value that is -1 or outside its slider's range takes the default."""
    m = get_module(name)

    def pick(value, slider):
        if slider is None:
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            return slider.value
        return number if slider.min <= number <= slider.max else slider.value

    res = pick(resolution, m.resolution)
    return (int(res) if m.resolution is not None else int(resolution)), pick(threshold_a, m.a), pick(threshold_b, m.b)


# --- images ------------------------------------------------------------------------------------------


def _rgb_array(image: Any):
    """HWC uint8 RGB; RGBA is composited on white (A1111's HWC3)."""
    import numpy as np
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image.astype(np.uint8))
    if image.mode == "RGBA" or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _resize_short_side(arr, res: int):
    """Scale so the short side is ``res`` (cubic up, area down) and edge-pad to a multiple of 64.

    Returns (padded array, (h, w) before padding)."""
    import numpy as np
    from PIL import Image

    h, w = arr.shape[:2]
    k = res / min(h, w)
    nh, nw = max(1, round(h * k)), max(1, round(w * k))
    if (nh, nw) != (h, w):
        arr = np.asarray(Image.fromarray(arr).resize((nw, nh), Image.BICUBIC if k > 1 else Image.BOX))
    ph, pw = -nh % 64, -nw % 64
    if ph or pw:
        arr = np.pad(arr, ((0, ph), (0, pw), (0, 0)), mode="edge")
    return arr, (nh, nw)


def _canny(arr, low: float, high: float):
    """Edges as ``cv2.Canny(arr, low, high)``: Sobel 3x3 per channel (the channel with the largest L1
    magnitude wins), 4-direction non-maximum suppression, hysteresis with 8-connectivity."""
    import numpy as np
    from scipy import ndimage

    data = arr.astype(np.float64)
    if data.ndim == 2:
        data = data[..., None]
    gx = np.stack([ndimage.sobel(data[..., c], axis=1, mode="mirror") for c in range(data.shape[2])], -1)
    gy = np.stack([ndimage.sobel(data[..., c], axis=0, mode="mirror") for c in range(data.shape[2])], -1)
    mag_all = np.abs(gx) + np.abs(gy)
    best = np.argmax(mag_all, axis=-1)[..., None]
    gx = np.take_along_axis(gx, best, -1)[..., 0]
    gy = np.take_along_axis(gy, best, -1)[..., 0]
    mag = np.take_along_axis(mag_all, best, -1)[..., 0]
    padded = np.pad(mag, 1)
    h, w = mag.shape
    angle = (np.degrees(np.arctan2(gy, gx)) + 180.0) % 180.0

    def shifted(dy, dx):
        return padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    horizontal = (angle < 22.5) | (angle >= 157.5)  # gradient along x: compare left/right
    diag1 = (angle >= 22.5) & (angle < 67.5)
    vertical = (angle >= 67.5) & (angle < 112.5)
    diag2 = (angle >= 112.5) & (angle < 157.5)
    keep = np.zeros_like(mag, dtype=bool)
    keep |= horizontal & (mag > shifted(0, -1)) & (mag >= shifted(0, 1))
    keep |= vertical & (mag > shifted(-1, 0)) & (mag >= shifted(1, 0))
    keep |= diag1 & (mag > shifted(-1, -1)) & (mag >= shifted(1, 1))
    keep |= diag2 & (mag > shifted(-1, 1)) & (mag >= shifted(1, -1))
    low, high = min(low, high), max(low, high)
    candidate = keep & (mag > low)
    strong = keep & (mag > high)
    labels, count = ndimage.label(candidate, structure=np.ones((3, 3), dtype=int))
    if count == 0:
        return np.zeros((h, w), dtype=np.uint8)
    good = np.zeros(count + 1, dtype=bool)
    good[np.unique(labels[strong])] = True
    good[0] = False
    return np.where(good[labels], 255, 0).astype(np.uint8)


def _shuffle(arr, seed: int | None):
    """A random smooth warp of the image (A1111's content shuffle): noise flow fields, bilinear remap."""
    import numpy as np
    from PIL import Image
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    h, w = arr.shape[:2]

    def noise_field():
        small = rng.uniform(0, 1, size=(max(2, h // 64 + 2), max(2, w // 64 + 2))).astype(np.float32)
        field_ = np.asarray(Image.fromarray(small, mode="F").resize((w, h), Image.BICUBIC), dtype=np.float64)
        field_ -= field_.min()
        return field_ / max(field_.max(), 1e-8)

    fx, fy = noise_field() * w, noise_field() * h
    out = np.stack([ndimage.map_coordinates(arr[..., c], [fy, fx], order=1, mode="reflect") for c in range(3)], -1)
    return out.astype(np.uint8)


def _mask_array(mask: Any, size):
    import numpy as np
    from PIL import Image

    if mask is None:
        return None
    if isinstance(mask, np.ndarray):
        mask = Image.fromarray(mask.astype(np.uint8))
    if mask.mode == "RGBA":  # a drawn layer: alpha says where
        mask = mask.getchannel("A")
    mask = mask.convert("L")
    if mask.size != size:
        mask = mask.resize(size, Image.NEAREST)
    return np.asarray(mask) > 127


def weights_problem(name: str, models_dir: str | Path | None) -> str:
    """ "" when a model-based preprocessor's files are present, else the message naming them (for the depth
    ones, ``webui.control.depth``: the transformers folders this app runs, and A1111's file names)."""
    from webui.control import depth

    m = get_module(name)
    if m.kind != "model":
        return ""
    folder = Path(models_dir or "models") / PREPROCESSOR_FOLDER
    if depth.runs_here(m.name):
        found, _ = depth.find_folder(m.name, folder)
        return "" if found is not None else depth.wanted_message(m.name, m.display, folder, m.weights)
    missing = [f for f in m.weights if not (folder / f).is_file()]
    if missing:
        where = ", ".join(str(folder / f) for f in missing)
        return (
            f"the preprocessor {m.display} needs its weights file(s) {', '.join(Path(f).name for f in missing)} "
            f"(from {m.source}); put them at {where}, or pick the preprocessor 'none' and send a ready-made "
            f"control map"
        )
    return ""


def run_preprocessor(
    name: str,
    image: Any,
    resolution: Any = 512,
    threshold_a: Any = -1,
    threshold_b: Any = -1,
    models_dir: str | Path | None = None,
    *,
    mask: Any = None,
    seed: int | None = None,
    cache: Any = None,
) -> Any:
    """The control map (a PIL image) for ``image``; ``PreprocessorError`` says why not.

    The map comes back at the processor resolution (short side = ``resolution``) for the modules with a
    resolution slider, at the image's size otherwise; ``resize_control`` fits it to the pass. Inpaint maps
    are RGBA with alpha 0 where ``mask`` (white = repaint) says repaint. The depth ones load their model from
    ``models_dir`` (``webui.control.depth``) into ``cache`` (a ``ControlCache`` its caller owns; None: loaded for this call only).
    """
    import numpy as np
    from PIL import Image

    m = get_module(name)
    if image is None:
        raise PreprocessorError(f"the preprocessor {m.display} needs an input image")
    res, a, b = slider_defaults(m.name, resolution, threshold_a, threshold_b)
    if m.kind == "model":
        from webui.control import depth

        problem = weights_problem(m.name, models_dir)
        if not problem and depth.runs_here(m.name):
            folder, _ = depth.find_folder(m.name, Path(models_dir or "models") / PREPROCESSOR_FOLDER)
            out = depth.run(m.name, _rgb_array(image), res, float(a if a is not None else 0.4), folder, cache)
            return Image.fromarray(out)
        raise PreprocessorError(
            problem
            or f"the preprocessor {m.display} is not available in this app yet (its weights are found, but its "
            f"network is not implemented); pick 'none' and send a ready-made control map"
        )
    rgb = _rgb_array(image)
    if m.kind == "clip" or m.name == "none":
        return Image.fromarray(rgb)
    if m.kind == "inpaint":
        size = (rgb.shape[1], rgb.shape[0])
        masked = _mask_array(mask, size)
        if masked is None and hasattr(image, "mode") and image.mode == "RGBA":
            masked = np.asarray(image.getchannel("A")) < 128  # transparent = repaint (a mask drawn by erasing)
        if masked is None:
            raise PreprocessorError(f"the preprocessor {m.display} needs a mask (white = repaint)")
        alpha = np.where(masked, 0, 255).astype(np.uint8)
        return Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    if m.name == "invert":
        return Image.fromarray(255 - rgb)
    if m.name == "tile_resample":
        if a < 1.1:
            return Image.fromarray(rgb)
        h, w = rgb.shape[:2]
        return Image.fromarray(rgb).resize((max(1, round(w / a)), max(1, round(h / a))), Image.BOX)
    if m.name == "shuffle":
        return Image.fromarray(_shuffle(rgb, seed))
    padded, (h, w) = _resize_short_side(rgb, res)
    if m.name == "canny":
        out = _canny(padded, float(a), float(b))
        out = np.repeat(out[..., None], 3, axis=2)
    elif m.name == "threshold":
        out = np.where(padded.min(axis=2, keepdims=True) > a, 255, 0).astype(np.uint8).repeat(3, axis=2)
    elif m.name == "scribble_xdog":
        from scipy import ndimage

        data = padded.astype(np.float64)
        fine = np.stack([ndimage.gaussian_filter(data[..., c], 0.5) for c in range(3)], -1)
        coarse = np.stack([ndimage.gaussian_filter(data[..., c], 5.0) for c in range(3)], -1)
        dog = np.clip(255.0 - np.min(coarse - fine, axis=2), 0, 255).astype(np.uint8).astype(np.float64)
        out = np.where(2 * (255 - dog) > a, 255, 0).astype(np.uint8)[..., None].repeat(3, axis=2)
    elif m.name == "lineart_standard":
        from scipy import ndimage

        data = padded.astype(np.float64)
        blurred = np.stack([ndimage.gaussian_filter(data[..., c], 6.0) for c in range(3)], -1)
        intensity = np.clip(np.min(blurred - data, axis=2), 0, 255)
        dark = intensity[intensity > 8]
        intensity = intensity / max(16.0, float(np.median(dark)) if dark.size else 16.0) * 127.0
        out = np.clip(intensity, 0, 255).astype(np.uint8)[..., None].repeat(3, axis=2)
    elif m.name == "color":
        ph, pw = padded.shape[:2]
        small = Image.fromarray(padded).resize((max(1, pw // 64), max(1, ph // 64)), Image.BICUBIC)
        out = np.asarray(small.resize((pw, ph), Image.NEAREST))
    elif m.name in ("recolor_luminance", "recolor_intensity"):
        picture = Image.fromarray(padded)
        channel = (
            picture.convert("LAB").getchannel("L")
            if m.name == "recolor_luminance"
            else (picture.convert("HSV").getchannel("V"))
        )
        value = (np.asarray(channel, dtype=np.float64) / 255.0) ** float(a)
        out = np.clip(np.rint(value * 255.0), 0, 255).astype(np.uint8)[..., None].repeat(3, axis=2)
    elif m.name == "blur_gaussian":
        from scipy import ndimage

        out = np.stack([ndimage.gaussian_filter(padded[..., c].astype(np.float64), float(a)) for c in range(3)], -1)
        out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    else:  # pragma: no cover - every module is handled above
        raise PreprocessorError(f"the preprocessor {m.display} has no implementation")
    return Image.fromarray(np.ascontiguousarray(out[:h, :w]))


# --- fitting the map to the pass ---------------------------------------------------------------------

RESIZE_JUST, RESIZE_CROP, RESIZE_FILL = "Just Resize", "Crop and Resize", "Resize and Fill"


def _filter(src_size, dst_size, arr):
    """Nearest for maps with few colours (segmentation), area when shrinking, cubic when growing."""
    import numpy as np
    from PIL import Image

    sample = arr.reshape(-1, arr.shape[-1]) if arr.ndim == 3 else arr.reshape(-1, 1)
    if len(sample) > 200_000:
        sample = sample[:: len(sample) // 200_000 + 1]
    colours = len(np.unique(sample, axis=0))
    if 2 < colours < 200:
        return Image.NEAREST
    return Image.BOX if dst_size[0] * dst_size[1] < src_size[0] * src_size[1] else Image.BICUBIC


def resize_control(image: Any, width: int, height: int, resize_mode: str = RESIZE_CROP) -> Any:
    """Fit a control map to width x height as A1111 does: stretch (Just Resize), scale to cover and crop the
    centre (Crop and Resize), or scale to fit and pad with the median border colour (Resize and Fill; an
    inpaint map's padding is marked "repaint", i.e. transparent)."""
    import numpy as np
    from PIL import Image

    arr = np.asarray(image)
    W, H = image.size
    if (W, H) == (width, height):
        return image
    if resize_mode == RESIZE_JUST:
        return image.resize((width, height), _filter((W, H), (width, height), arr))
    if resize_mode == RESIZE_FILL:
        k = min(width / W, height / H)
    else:
        k = max(width / W, height / H)
    nw, nh = max(1, round(W * k)), max(1, round(H * k))
    scaled = image.resize((nw, nh), _filter((W, H), (nw, nh), arr))
    if resize_mode == RESIZE_FILL:
        border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]]).reshape(
            -1, arr.shape[-1] if arr.ndim == 3 else 1
        )
        fill = tuple(int(v) for v in np.median(border, axis=0))
        if image.mode == "RGBA":
            fill = fill[:3] + (0,)
        elif image.mode == "L":
            fill = fill[0]
        canvas = Image.new(image.mode, (width, height), fill)
        canvas.paste(scaled, ((width - nw) // 2, (height - nh) // 2))
        return canvas
    left, top = (nw - width) // 2, (nh - height) // 2
    return scaled.crop((left, top, left + width, top + height))


def pixel_perfect_resolution(image: Any, width: int, height: int, resize_mode: str = RESIZE_CROP) -> int:
    """A1111's pixel perfect: the processor resolution that gives the map the pass's pixel density."""
    W, H = image.size
    if resize_mode == RESIZE_FILL:
        k = min(width / W, height / H)
    else:
        k = max(width / W, height / H)
    return round(k * min(W, H))
