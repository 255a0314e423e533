"""The depth preprocessors run transformers' depth models from models/ControlNetPreprocessor/<owner>/<name>/.

Tiny random-weight DPT (MiDaS layout) and Depth Anything (Dinov2 backbone) models are written once per module
with ``save_pretrained(safe_serialization=True)`` and an image processor config, in the folders a user would
download (Intel/dpt-hybrid-midas, depth-anything/Depth-Anything-V2-Small-hf).
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageDraw

from webui.control.preprocessors import PREPROCESSOR_FOLDER, PreprocessorError, run_preprocessor

MIDAS = "Intel/dpt-hybrid-midas"
ANYTHING_V2 = "depth-anything/Depth-Anything-V2-Small-hf"


def _processor_config(folder: Path, side: int, multiple: int, mean: list[float], std: list[float], keep: bool) -> None:
    """As the Hub folders have it: DPT squares the image (keep_aspect_ratio false), Depth Anything keeps its shape."""
    config = {
        "image_processor_type": "DPTImageProcessor",
        "do_resize": True,
        "size": {"height": side, "width": side},
        "keep_aspect_ratio": keep,
        "ensure_multiple_of": multiple,
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": mean,
        "image_std": std,
        "do_pad": False,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(config), encoding="utf-8")


def _liven(model) -> None:
    """Random weights large enough that the tiny model's prediction varies with the image (not all ReLU zeros)."""
    import torch

    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim > 1:
                param.copy_(torch.randn(param.shape, generator=generator) / param[0].numel() ** 0.5)
                if param.shape[0] == 1:  # the last conv (one channel, after a ReLU): positive, above the last ReLU
                    param.abs_()
            elif "bias" in name:
                param.fill_(0.05)


def write_tiny_dpt(folder: Path, hybrid: bool = True) -> Path:
    """DPT-hybrid (a BiT backbone: Intel/dpt-hybrid-midas, A1111's depth_midas) or plain ViT DPT (Intel/dpt-large)."""
    from transformers import BitConfig, DPTConfig, DPTForDepthEstimation

    common = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32}
    common["image_size"] = 32
    if hybrid:
        bit = BitConfig(
            embedding_size=8,
            hidden_sizes=[8, 16, 32],
            depths=[1, 1, 1],
            out_features=["stage1", "stage2", "stage3"],
            layer_type="bottleneck",
            global_padding="same",
            embedding_dynamic_padding=True,
            num_groups=2,
        )
        config = DPTConfig(
            **common,
            is_hybrid=True,
            backbone_config=bit,
            backbone_featmap_shape=[1, 32, 2, 2],
            patch_size=16,
            backbone_out_indices=[0, 0, 0, 1],
            neck_hidden_sizes=[8, 16, 16, 16],
            reassemble_factors=[1, 1, 1, 0.5],
            neck_ignore_stages=[0, 1],
            fusion_hidden_size=8,
            readout_type="project",
        )
    else:
        config = DPTConfig(
            **common,
            patch_size=8,
            backbone_out_indices=[0, 1],
            neck_hidden_sizes=[8, 8],
            fusion_hidden_size=8,
            reassemble_factors=[1, 1],
            readout_type="project",
        )
    model = DPTForDepthEstimation(config).eval()
    _liven(model)
    model.save_pretrained(folder, safe_serialization=True)
    if hybrid:  # Intel/dpt-hybrid-midas has the old feature-extractor form of the config
        old = {"feature_extractor_type": "DPTFeatureExtractor", "size": 32, "resample": 2, "do_resize": True}
        old.update({"do_normalize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3})
        (folder / "preprocessor_config.json").write_text(json.dumps(old), encoding="utf-8")
    else:
        _processor_config(folder, 32, 8, [0.5] * 3, [0.5] * 3, keep=False)
    return folder


def write_tiny_depth_anything(folder: Path) -> Path:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = Dinov2Config(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=28,
        patch_size=14,
        out_indices=[1, 2],
        apply_layernorm=True,
        reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=16,
        patch_size=14,
        neck_hidden_sizes=[8, 8],
        reassemble_factors=[1, 1],
        fusion_hidden_size=8,
        head_hidden_size=8,
    )
    model = DepthAnythingForDepthEstimation(config).eval()
    _liven(model)
    model.save_pretrained(folder, safe_serialization=True)
    _processor_config(folder, 28, 14, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], keep=True)
    return folder


def write_tiny_zoedepth(folder: Path) -> Path:
    """ZoeDepth (a BEiT backbone, one NYU bin head) as Intel/zoedepth-nyu; its processor pads the image."""
    from transformers import BeitConfig, ZoeDepthConfig, ZoeDepthForDepthEstimation

    backbone = BeitConfig(
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=32,
        patch_size=8,
        out_features=["stage1", "stage2", "stage3", "stage4"],
        reshape_hidden_states=False,
        use_relative_position_bias=True,
        add_fpn=False,
    )
    config = ZoeDepthConfig(
        backbone_config=backbone,
        neck_hidden_sizes=[8, 8, 8, 8],
        fusion_hidden_size=8,
        num_relative_features=8,
        bottleneck_features=8,
        num_attractors=[4, 4, 2, 1],
        bin_embedding_dim=8,
        bin_configurations=[{"n_bins": 8, "min_depth": 1e-3, "max_depth": 10.0, "name": "nyu"}],
    )
    model = ZoeDepthForDepthEstimation(config).eval()
    _liven(model)
    model.save_pretrained(folder, safe_serialization=True)
    processor = {
        "image_processor_type": "ZoeDepthImageProcessor",
        "do_resize": True,
        "size": {"height": 32, "width": 32},
        "keep_aspect_ratio": True,
        "ensure_multiple_of": 8,
        "do_pad": True,
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5] * 3,
        "image_std": [0.5] * 3,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(processor), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("depth") / "models"
    pre = root / PREPROCESSOR_FOLDER
    write_tiny_dpt(pre / "Intel" / "dpt-hybrid-midas")
    write_tiny_depth_anything(pre / "depth-anything" / "Depth-Anything-V2-Small-hf")
    write_tiny_zoedepth(pre / "Intel" / "zoedepth-nyu")
    return root


def scene(size=(96, 64), box=(24, 16, 72, 48)) -> Image.Image:
    image = Image.new("RGB", size, (30, 60, 90))
    draw = ImageDraw.Draw(image)
    draw.rectangle(box, fill=(230, 200, 40))
    draw.ellipse((4, 40, 30, 62), fill=(200, 30, 30))
    return image


@pytest.mark.parametrize("module", ["depth_midas", "depth_anything_v2", "depth_zoe"])
def test_a_depth_map_from_the_model_in_models(models, module):
    from webui.control.loading import ControlCache

    cache = ControlCache(2)
    out = run_preprocessor(module, scene(), resolution=64, models_dir=models, cache=cache)
    arr = np.asarray(out)
    assert out.mode == "RGB" and out.size == (96, 64)  # short side = the processor resolution
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all()  # grey, as RGB
    assert arr.min() == 0 and arr.max() == 255  # normalised per image
    assert run_preprocessor(module, scene(), resolution=128, models_dir=models, cache=cache).size == (192, 128)
    other = np.asarray(run_preprocessor(module, scene(box=(50, 4, 92, 30)), 64, models_dir=models, cache=cache))
    assert np.abs(other.astype(int) - arr.astype(int)).mean() > 1  # the map follows the image
    assert len(cache) == 1  # one model, loaded once for the three maps


def test_dpt_large_serves_depth_midas_when_the_hybrid_is_not_there(tmp_path):
    write_tiny_dpt(tmp_path / PREPROCESSOR_FOLDER / "Intel" / "dpt-large", hybrid=False)
    out = np.asarray(run_preprocessor("depth_midas", scene(), 64, models_dir=tmp_path))
    assert out.shape == (64, 96, 3) and out.min() == 0 and out.max() == 255


def test_the_cache_is_bounded_and_reloads_a_changed_folder(models, tmp_path):
    import os
    import shutil

    from webui.control.loading import ControlCache

    cache = ControlCache(2)
    copy = tmp_path / "models"
    shutil.copytree(models, copy)
    for module in ("depth_midas", "depth_anything_v2", "normal_midas"):
        run_preprocessor(module, scene(), 64, models_dir=copy, cache=cache)
    assert len(cache) == 2  # midas serves depth_midas and normal_midas: two folders
    weights = copy / PREPROCESSOR_FOLDER / "Intel" / "dpt-hybrid-midas" / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    run_preprocessor("depth_midas", scene(), 64, models_dir=copy, cache=cache)
    assert len(cache) == 2  # the older version of the folder was dropped, not kept beside the new one


def test_normal_midas_from_the_depth_gradients(models):
    flat_bg = np.asarray(run_preprocessor("normal_midas", scene(), 64, threshold_a=1.0, models_dir=models))
    assert flat_bg.shape == (64, 96, 3)
    facing = (flat_bg[..., :2] == 128).all(axis=2) & (flat_bg[..., 2] == 255)
    assert facing.mean() > 0.99  # all but the nearest point is "background": flat, facing us
    normals = np.asarray(run_preprocessor("normal_midas", scene(), 64, threshold_a=0.0, models_dir=models))
    assert normals[..., 2].min() >= 128 and len(np.unique(normals[..., 0])) > 2  # tilted where the depth changes


def test_the_module_detail_names_the_folders():
    from webui.control.preprocessors import module_detail

    assert module_detail("depth_anything_v2")["needs_weights"][-1] == ANYTHING_V2
    assert module_detail("normal_midas")["needs_weights"][0] == MIDAS
    assert module_detail("openpose")["needs_weights"] == ["openpose/body_pose_model.pth"]


def test_without_the_folder_the_message_names_it(tmp_path):
    with pytest.raises(PreprocessorError) as caught:
        run_preprocessor("depth_anything_v2", scene(), models_dir=tmp_path)
    text = str(caught.value)
    pre = tmp_path / PREPROCESSOR_FOLDER
    assert str(pre / "depth-anything" / "Depth-Anything-V2-Large-hf") in text and ANYTHING_V2 in text
    assert "model.safetensors" in text and "depth_anything_v2_vitl.safetensors" in text  # and A1111's file
    with pytest.raises(PreprocessorError) as midas:
        run_preprocessor("depth_midas", scene(), models_dir=tmp_path)
    assert str(pre / "Intel" / "dpt-hybrid-midas") in str(midas.value) and "dpt_hybrid-midas-501f0c75.pt" in str(
        midas.value
    )
    half = pre / "Intel" / "dpt-hybrid-midas"
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(PreprocessorError, match="lacks preprocessor_config.json, model.safetensors"):
        run_preprocessor("depth_midas", scene(), models_dir=tmp_path)


def test_a_pickle_only_folder_is_refused_unopened(tmp_path):
    folder = tmp_path / PREPROCESSOR_FOLDER / "Intel" / "dpt-hybrid-midas"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "dpt"}), encoding="utf-8")
    (folder / "preprocessor_config.json").write_text("{}", encoding="utf-8")
    (folder / "pytorch_model.bin").write_bytes(b"not a pickle at all: opening it would fail loudly")
    with pytest.raises(PreprocessorError) as caught:
        run_preprocessor("depth_midas", scene(), models_dir=tmp_path)
    text = str(caught.value)
    assert "pytorch_model.bin" in text and "never opens" in text and "model.safetensors" in text


def test_a_folder_of_another_model_type_is_refused(models, tmp_path):
    import shutil

    pre = tmp_path / PREPROCESSOR_FOLDER
    shutil.copytree(models / PREPROCESSOR_FOLDER / "depth-anything", pre / "Intel")  # a Depth Anything as MiDaS
    (pre / "Intel" / "Depth-Anything-V2-Small-hf").rename(pre / "Intel" / "dpt-hybrid-midas")
    with pytest.raises(PreprocessorError, match="holds a 'depth_anything' model"):
        run_preprocessor("depth_midas", scene(), models_dir=tmp_path)


def test_detect_returns_the_depth_map(models):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from webui.control.api import register_routes

    backend = SimpleNamespace(folders=lambda: SimpleNamespace(models=str(models)))
    app = FastAPI()
    register_routes(app, backend)
    buffer = io.BytesIO()
    scene().save(buffer, format="PNG")
    body = {
        "controlnet_module": "depth_midas",
        "controlnet_input_images": [base64.b64encode(buffer.getvalue()).decode()],
        "controlnet_processor_res": 64,
    }
    with TestClient(app) as client:
        answer = client.post("/controlnet/detect", json=body)
        assert answer.status_code == 200, answer.text
        image = Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0])))
        arr = np.asarray(image.convert("RGB"))
        assert image.size == (96, 64) and arr.min() == 0 and arr.max() == 255
        missing = client.post("/controlnet/detect", json={**body, "controlnet_module": "depth_anything"})
        assert missing.status_code == 422 and "LiheYoung/depth-anything" in missing.json()["detail"]
        assert missing.json()["field"] == "controlnet_module"


def test_a_job_unit_gets_the_depth_map_from_the_extensions_models_folder(models):
    """The job's path: the extension preprocesses the unit's image with its own models folder."""
    from webui.control.apply import Unit
    from webui.control.extension import ControlExtension
    from webui.control.units import ControlUnit

    unit = ControlUnit(module="depth_anything_v2", model="m", image=scene(), processor_res=64, pixel_perfect=True)
    state = Unit(index=0, unit=unit, kind="controlnet", model=None)
    request = SimpleNamespace(width=192, height=128, seed=1, init_image=None, mask=None)
    ControlExtension(models_dir=models)._prepare_map(state, SimpleNamespace(task="txt2img", request=request))
    arr = np.asarray(state.control_map)
    assert state.control_map.size == (192, 128) and arr.min() == 0 and arr.max() == 255  # pixel perfect: 128


def test_zoedepths_padding_is_cut_off(models):
    """With a "model" that predicts the processed image itself, the map is the input again: the reflect padding
    ZoeDepth's processor adds is cut off and the rest fills the map."""
    import threading

    from transformers import AutoImageProcessor

    from webui.control.depth import DepthModel, predict

    folder = models / PREPROCESSOR_FOLDER / "Intel" / "zoedepth-nyu"
    processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    assert processor.do_pad

    def itself(pixel_values):
        return SimpleNamespace(predicted_depth=pixel_values[:, 0])

    image = Image.new("RGB", (96, 64), "black")
    ImageDraw.Draw(image).rectangle((0, 0, 23, 63), fill="white")  # the left quarter white
    loaded = DepthModel(itself, processor, folder, "zoedepth", threading.Lock())
    depth = predict(loaded, np.asarray(image), (64, 96))
    assert depth.shape == (64, 96)
    assert depth[:, 2:20].mean() - depth[:, 30:94].mean() > 1.5  # about +1 and -1 after the normalisation
    edge = int(np.argmin(np.diff(depth[32])))
    assert 21 <= edge <= 26  # where the image has it (with the padding left in, the white would reach ~31)
