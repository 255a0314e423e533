"""Control model files: every tiny model in its real on-disk layout is identified by the one detector and loads
offline; original layouts load to the same weights as the diffusers folders; bad files get clear reasons."""

from __future__ import annotations

import os

import pytest
import torch

from tests import headers as H
from webui.control import demo as CM
from webui.control import files, loading
from webui.models.catalog import ModelCatalog
from webui.models.identify import identify
from webui.models.loader import ModelLoadError

# (writer, arguments) -> (kind, family, variant, layout)
MODELS = {
    "cn-sd15-original": (CM.write_tiny_controlnet, ("sd15", "original"), ("controlnet", "sd15", "plain", "original")),
    "cn-sd15-diffusers": (
        CM.write_tiny_controlnet,
        ("sd15", "diffusers"),
        ("controlnet", "sd15", "plain", "diffusers"),
    ),
    "cn-sdxl-original": (CM.write_tiny_controlnet, ("sdxl", "original"), ("controlnet", "sdxl", "plain", "original")),
    "cn-sdxl-single": (CM.write_tiny_controlnet, ("sdxl", "single"), ("controlnet", "sdxl", "plain", "single")),
    "cn-sdxl-diffusers": (
        CM.write_tiny_controlnet,
        ("sdxl", "diffusers"),
        ("controlnet", "sdxl", "plain", "diffusers"),
    ),
    "union-sdxl-single": (
        CM.write_tiny_controlnet,
        ("sdxl", "single", True),
        ("controlnet", "sdxl", "union", "single"),
    ),
    "union-sdxl-diffusers": (
        CM.write_tiny_controlnet,
        ("sdxl", "diffusers", True),
        ("controlnet", "sdxl", "union", "diffusers"),
    ),
    "cn-sd3-diffusers": (CM.write_tiny_controlnet, ("sd3", "diffusers"), ("controlnet", "sd3", "plain", "diffusers")),
    "cn-sd3-single": (CM.write_tiny_controlnet, ("sd3", "single"), ("controlnet", "sd3", "plain", "single")),
    "cn-sd35-original": (
        CM.write_tiny_controlnet,
        ("sd35_large", "original"),
        ("controlnet", "sd35_large", "plain", "original"),
    ),
    "cn-sd35-diffusers": (
        CM.write_tiny_controlnet,
        ("sd35_large", "diffusers"),
        ("controlnet", "sd35_large", "plain", "diffusers"),
    ),
    "t2i-sd15-original": (CM.write_tiny_t2i_adapter, ("sd15", "original"), ("t2i_adapter", "sd15", "full", "original")),
    "t2i-sd15-diffusers": (
        CM.write_tiny_t2i_adapter,
        ("sd15", "diffusers"),
        ("t2i_adapter", "sd15", "full", "diffusers"),
    ),
    "t2i-sdxl-original": (CM.write_tiny_t2i_adapter, ("sdxl", "original"), ("t2i_adapter", "sdxl", "full", "original")),
    "t2i-sdxl-diffusers": (
        CM.write_tiny_t2i_adapter,
        ("sdxl", "diffusers"),
        ("t2i_adapter", "sdxl", "full", "diffusers"),
    ),
    "ip-sd15": (CM.write_tiny_ip_adapter, ("sd15",), ("ip_adapter", "sd15", "plain", "single")),
    "ip-sd15-plus": (CM.write_tiny_ip_adapter, ("sd15", True), ("ip_adapter", "sd15", "plus", "single")),
    "ip-sdxl": (CM.write_tiny_ip_adapter, ("sdxl",), ("ip_adapter", "sdxl", "plain", "single")),
    "ip-sdxl-plus": (CM.write_tiny_ip_adapter, ("sdxl", True), ("ip_adapter", "sdxl", "plus", "single")),
}
CLASSES = {
    "controlnet": {"plain": "ControlNetModel", "union": "ControlNetUnionModel"},
    "t2i_adapter": {"full": "T2IAdapter"},
}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """A models folder with every tiny control model (A1111 keeps all in ControlNet/), and two CLIP vision encoders."""
    root = tmp_path_factory.mktemp("models")
    paths = {}
    for name, (write, args, _) in MODELS.items():
        paths[name] = write(root / "ControlNet", *args)
    paths["clip-single"] = CM.write_tiny_clip_vision(root / "clip_vision")
    paths["clip-folder"] = CM.write_tiny_clip_vision(root / "clip_vision", layout="folder")
    return root, paths


@pytest.fixture(scope="module")
def catalog(models_dir):
    cat = ModelCatalog(models_dir[0])
    cat.refresh()
    return cat


@pytest.fixture()
def cache():
    return loading.ControlCache()


@pytest.mark.parametrize("name", list(MODELS))
def test_each_tiny_model_is_identified(models_dir, catalog, name):
    _, paths = models_dir
    kind, family, variant, layout = MODELS[name][2]
    record = identify(paths[name], expect="control")
    assert record.error is None
    assert (record.kind, record.family, record.variant, record.info["layout"]) == (kind, family, variant, layout)
    assert record.info["variant"] == variant
    entry = next(e for e in catalog.entries("control") if e.path == paths[name])
    assert entry.usable and entry.record.kind == kind and entry.family == family
    assert entry.format == ("diffusers" if layout == "diffusers" else "safetensors")


def test_catalog_lists_model_folders_as_one_entry(models_dir, catalog):
    names = [e.name for e in catalog.entries("control")]
    assert "tiny-sd15-controlnet-diffusers" in names
    assert not any(n.endswith("diffusion_pytorch_model.safetensors") for n in names)
    assert sorted(e.name for e in catalog.entries("clip_vision")) == [
        "tiny-clip-vision.safetensors",
        "tiny-image-encoder",
    ]
    assert all(e.usable for e in catalog.entries("control") + catalog.entries("clip_vision"))
    assert catalog.find("tiny-sd15-controlnet-original", kind="control").record.kind == "controlnet"


@pytest.mark.parametrize("name", [n for n in MODELS if not n.startswith("ip-")])
def test_each_tiny_model_loads_offline(models_dir, cache, name):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # tests/conftest.py: the Hub is never asked
    kind, family, variant, _ = MODELS[name][2]
    record = identify(models_dir[1][name], expect="control")
    loaded = loading.load_control(record, "cpu", torch.float32, cache=cache)
    assert (loaded.kind, loaded.family, loaded.variant) == (kind, family, variant)
    expected = "SD3ControlNetModel" if family.startswith("sd3") else CLASSES[kind][variant]
    assert type(loaded.model).__name__ == expected
    assert not loaded.model.training
    assert all(p.dtype == torch.float32 and not p.is_meta for p in loaded.model.parameters())


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key  # the same stored numbers, no computation in between


@pytest.mark.parametrize(
    "original, folder",
    [
        ("cn-sd15-original", "cn-sd15-diffusers"),
        ("cn-sdxl-original", "cn-sdxl-diffusers"),
        ("cn-sdxl-single", "cn-sdxl-diffusers"),
        ("union-sdxl-single", "union-sdxl-diffusers"),
        ("cn-sd3-single", "cn-sd3-diffusers"),
        ("cn-sd35-original", "cn-sd35-diffusers"),
        ("t2i-sd15-original", "t2i-sd15-diffusers"),
        ("t2i-sdxl-original", "t2i-sdxl-diffusers"),
    ],
)
def test_single_file_loads_to_the_diffusers_folder_weights(models_dir, cache, original, folder):
    paths = models_dir[1]
    a = loading.load_control(paths[original], cache=cache).model
    b = loading.load_control(paths[folder], cache=cache).model
    _same_weights(a, b)
    config_a = {k: v for k, v in a.config.items() if not k.startswith("_")}
    config_b = {k: v for k, v in b.config.items() if not k.startswith("_")}
    differ = {k for k in config_a if _norm(config_a[k]) != _norm(config_b.get(k))}
    assert not differ, {k: (config_a[k], config_b.get(k)) for k in differ}


def _norm(value):
    return list(value) if isinstance(value, (tuple, list)) else value


def test_controlnet_from_header_shapes_runs_on_the_tiny_unet(models_dir, cache):
    """The rebuilt SD 1.5 ControlNet's residuals fit the tiny UNet (what the pipeline adds them to)."""
    pipe = CM._pipe("sd15")
    model = loading.load_control(models_dir[1]["cn-sd15-original"], cache=cache).model
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    context = torch.randn(1, 77, pipe.unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    hint = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        down, mid = model(latents, 10, context, hint, conditioning_scale=1.0, return_dict=False)
        out = pipe.unet(latents, 10, context, down_block_additional_residuals=down, mid_block_additional_residual=mid)
        base = pipe.unet(latents, 10, context)
    assert out.sample.shape == base.sample.shape
    assert (out.sample - base.sample).abs().max() > 1e-3  # the jittered zero convolutions do something


@pytest.mark.parametrize("name", ["ip-sd15", "ip-sd15-plus", "ip-sdxl", "ip-sdxl-plus"])
def test_ip_adapter_loads_into_the_tiny_pipeline(models_dir, cache, name):
    """The loaded state dict is what ``load_ip_adapter`` takes, and the CLIP vision encoder that fits it is found."""

    family = MODELS[name][2][1]
    root, paths = models_dir
    loaded = loading.load_control(paths[name], cache=cache)
    assert set(loaded.model) == {"image_proj", "ip_adapter"}
    catalog = ModelCatalog(root)
    catalog.refresh()
    encoder_entry = files.find_image_encoder(
        catalog.find(paths[name].name, kind="control"), catalog.entries("clip_vision")
    )
    encoder = loading.load_image_encoder(encoder_entry, cache=cache)
    assert type(encoder).__name__ == "CLIPVisionModelWithProjection"
    base = CM._pipe(family)
    pipe = type(base)(**base.components)  # a pipeline of its own over the same modules; the UNet is restored below
    processors = dict(pipe.unet.attn_processors)
    before = {part: {k: v.clone() for k, v in tensors.items()} for part, tensors in loaded.model.items()}
    try:
        pipe.register_modules(image_encoder=encoder)
        pipe.load_ip_adapter(loaded.model, subfolder="", weight_name="", image_encoder_folder=None)
        image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        embeds = pipe.prepare_ip_adapter_image_embeds(image, None, "cpu", 1, True)
        assert embeds[0].shape[0] == 2  # negative and positive

        def run(scale):
            pipe.set_ip_adapter_scale(scale)
            return pipe(
                "a cat",
                ip_adapter_image_embeds=embeds,
                num_inference_steps=2,
                height=64,
                width=64,
                generator=torch.Generator().manual_seed(0),
                output_type="latent",
            ).images

        assert (run(1.0) - run(0.0)).abs().max() > 1e-3
    finally:
        pipe.unload_ip_adapter()
        pipe.unet.set_attn_processor(processors)
    for part, tensors in before.items():  # the cached state dict is still as loaded: the next job can use it
        assert tensors.keys() == loaded.model[part].keys()
        assert all(torch.equal(v, loaded.model[part][k]) for k, v in tensors.items())


def test_image_encoder_loads_from_file_and_folder_to_the_same_weights(models_dir, cache):
    paths = models_dir[1]
    a = loading.load_image_encoder(paths["clip-single"], cache=cache)
    b = loading.load_image_encoder(paths["clip-folder"], cache=cache)
    _same_weights(a, b)
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert a(pixel_values=image).image_embeds.shape == (1, CM.CLIP_VISION["projection_dim"])


def test_ip_adapter_without_a_fitting_encoder_names_the_file_to_get(tmp_path, models_dir):
    ip = identify(models_dir[1]["ip-sd15"], expect="control")
    with pytest.raises(ModelLoadError, match="models/clip_vision"):
        files.find_image_encoder(ip, [])


# --- the released models' shapes (zero-filled headers) ------------------------------------------------

CN = "control_model."


def _cn_original(context, adm=None, hint=3):
    shapes = {
        CN + "time_embed.0.weight": (1280, 320),
        CN + "input_blocks.0.0.weight": (320, 4, 3, 3),
        CN + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, context),
        CN + "input_hint_block.0.weight": (16, hint, 3, 3),
        CN + "zero_convs.0.0.weight": (320, 320, 1, 1),
    }
    if adm:
        shapes[CN + "label_emb.0.0.weight"] = (1280, adm)
    return shapes


@pytest.mark.parametrize(
    "shapes, kind, family, extra",
    [
        (_cn_original(768), "controlnet", "sd15", {}),
        (_cn_original(1024), "controlnet", "sd2", {}),
        (_cn_original(2048, 2816), "controlnet", "sdxl", {}),
        ({k[len(CN) :]: v for k, v in _cn_original(1024).items()}, "controlnet", "sd2", {}),  # thibaud: no prefix
        (
            {
                "conv_in.weight": (320, 4, 3, 3),
                "controlnet_cond_embedding.conv_in.weight": (16, 3, 3, 3),
                "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight": (640, 2048),
                "add_embedding.linear_1.weight": (1280, 2816),
                "task_embedding": (8, 320),
            },
            "controlnet",
            "sdxl",
            {"variant": "union", "control_types": 8},
        ),
        ({"conv_in.weight": (320, 192, 3, 3), "body.0.block1.weight": (320, 320, 3, 3)}, "t2i_adapter", "sd15", {}),
        ({"conv_in.weight": (320, 768, 3, 3), "body.0.block1.weight": (320, 320, 3, 3)}, "t2i_adapter", "sdxl", {}),
        (
            {
                "image_proj.proj.weight": (3072, 1024),
                "image_proj.norm.weight": (768,),
                "ip_adapter.1.to_k_ip.weight": (320, 768),
            },
            "ip_adapter",
            "sd15",
            {"variant": "plain", "encoder": "vit-h"},
        ),
        (
            {
                "image_proj.latents": (1, 16, 1280),
                "image_proj.proj_in.weight": (1280, 1280),
                "ip_adapter.1.to_k_ip.weight": (640, 2048),
            },
            "ip_adapter",
            "sdxl",
            {"variant": "plus", "encoder": "vit-h"},
        ),
        (
            {
                "pos_embed.proj.weight": (1536, 16, 2, 2),
                "pos_embed_input.proj.weight": (1536, 16, 2, 2),
                "context_embedder.weight": (1536, 4096),
                "controlnet_blocks.0.weight": (1536, 1536),
            },
            "controlnet",
            "sd3",
            {},
        ),
        (
            {
                "pos_embed_input.proj.weight": (2432, 16, 2, 2),
                "controlnet_blocks.0.weight": (2432, 2432),
                "transformer_blocks.0.attn.qkv.weight": (7296, 2432),
            },
            "controlnet",
            "sd35_large",
            {"layout": "original"},
        ),
    ],
)
def test_released_shapes_are_identified(tmp_path, shapes, kind, family, extra):
    record = identify(H.write_safetensors(tmp_path / "ControlNet" / "x.safetensors", shapes), expect="control")
    assert record.error is None, record.error
    assert (record.kind, record.family) == (kind, family)
    for key, value in extra.items():
        assert record.info[key] == value


def test_released_clip_vision_h_is_identified(tmp_path):
    shapes = {
        "vision_model.embeddings.patch_embedding.weight": (1280, 3, 14, 14),
        "vision_model.embeddings.position_embedding.weight": (257, 1280),
        "vision_model.encoder.layers.31.mlp.fc1.weight": (5120, 1280),
        "vision_model.encoder.layers.0.mlp.fc1.weight": (5120, 1280),
        "visual_projection.weight": (1024, 1280),
    }
    record = identify(H.write_safetensors(tmp_path / "clip_vision" / "h.safetensors", shapes), expect="clip_vision")
    assert (record.kind, record.variant, record.info["projection_dim"]) == ("clip_vision", "vit-h", 1024)
    config = loading.clip_vision_config({k: v for k, v in shapes.items()})
    assert (config["num_hidden_layers"], config["image_size"], config["num_attention_heads"]) == (32, 224, 16)


# --- bad files -----------------------------------------------------------------------------------------


def test_bad_files_in_the_controlnet_folder_get_clear_reasons(tmp_path):
    folder = tmp_path / "ControlNet"
    H.write_safetensors(folder / "checkpoint.safetensors", H.SD15)
    H.write_safetensors(folder / "a_lora.safetensors", H.KOHYA_LORA)
    H.write_safetensors(folder / "unknown.safetensors", {"foo.weight": (3, 3)})
    H.write_safetensors(
        folder / "faceid.safetensors",
        {
            "image_proj.norm.weight": (768,),
            "image_proj.proj.0.weight": (1024, 512),
            "ip_adapter.1.to_k_ip.weight": (320, 768),
        },
    )
    H.write_safetensors(folder / "odd.safetensors", _cn_original(1280 + 7))
    (folder / "empty.safetensors").write_bytes(b"")
    (folder / "page.safetensors").write_text("<html>404</html>" * 10)
    CM.write_tiny_clip_vision(folder, name="encoder")
    cat = ModelCatalog(tmp_path)
    cat.refresh()
    errors = {e.name: e.error for e in cat.entries("control")}
    assert all(errors.values()), errors
    assert (
        "this is a checkpoint" in errors["checkpoint.safetensors"]
        and "models/Stable-diffusion" in errors["checkpoint.safetensors"]
    )
    assert "models/Lora" in errors["a_lora.safetensors"]
    assert "not a ControlNet / T2I-Adapter / IP-Adapter this app knows" in errors["unknown.safetensors"]
    assert "FaceID" in errors["faceid.safetensors"]
    assert "fits no model family" in errors["odd.safetensors"] and "1287" in errors["odd.safetensors"]
    assert "too small" in errors["empty.safetensors"]
    assert "HTML" in errors["page.safetensors"]
    assert (
        "CLIP vision encoder" in errors["encoder.safetensors"] and "models/clip_vision" in errors["encoder.safetensors"]
    )
    with pytest.raises(ModelLoadError, match="checkpoint"):
        loading.load_control(cat.find("checkpoint", kind="control"))


def test_pickles_are_listed_never_opened(tmp_path):
    canary = tmp_path / "canary"
    payload = b"\x80\x04garbage" + str(canary).encode()
    for name in ("ControlNet/control_v11p_sd15_canny.pth", "ipadapter/ip-adapter_sd15.bin", "clip_vision/clip_h.pth"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(payload)
    folder = tmp_path / "ControlNet" / "old-folder"
    folder.mkdir()
    (folder / "config.json").write_text('{"_class_name": "ControlNetModel"}')
    (folder / "diffusion_pytorch_model.bin").write_bytes(payload)
    cat = ModelCatalog(tmp_path)
    cat.refresh()
    entries = cat.entries("control") + cat.entries("clip_vision")
    assert sorted(e.name for e in entries) == [
        "clip_h.pth",
        "control_v11p_sd15_canny.pth",
        "ip-adapter_sd15.bin",
        "old-folder",
    ]
    for entry in entries:
        assert not entry.usable and "pickle" in entry.error and ".safetensors" in entry.error
        with pytest.raises(ModelLoadError, match="pickle"):
            (loading.load_image_encoder if entry.kind == "clip_vision" else loading.load_control)(entry)
    assert "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors" in cat.find("clip_h.pth", kind="clip_vision").error
    assert not canary.exists()


def test_sharded_model_folder_is_listed_with_a_reason(tmp_path):
    folder = tmp_path / "ControlNet" / "big"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"_class_name": "ControlNetModel"}')
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text("{}")
    H.write_safetensors(
        folder / "diffusion_pytorch_model-00001-of-00002.safetensors", {"conv_in.weight": (320, 4, 3, 3)}
    )
    cat = ModelCatalog(tmp_path)
    cat.refresh()
    (entry,) = cat.entries("control")
    assert entry.name == "big" and "shards" in entry.error


def test_checkpoint_listing_is_unchanged(tmp_path):
    """A ControlNet in models/Stable-diffusion keeps the checkpoint kind's message."""
    CM.write_tiny_controlnet(tmp_path / "Stable-diffusion", "sd15", "original", name="cn")
    H.write_safetensors(tmp_path / "Stable-diffusion" / "good.safetensors", H.SD15)
    cat = ModelCatalog(tmp_path)
    cat.refresh()
    by_name = {e.name: e for e in cat.entries()}
    assert by_name["good.safetensors"].usable
    assert (
        by_name["cn.safetensors"].error
        == "cn.safetensors: not a checkpoint: this looks like a ControlNet model, which is not supported yet"
    )


def test_control_model_in_the_lora_folder_says_where_it_goes(tmp_path):
    CM.write_tiny_ip_adapter(tmp_path / "Lora", "sd15", name="ip")
    cat = ModelCatalog(tmp_path)
    cat.refresh()
    (entry,) = cat.entries("lora")
    assert "this is an IP-Adapter, not a lora" in entry.error
    assert "models/ControlNet" in entry.error


def test_comfyui_folders(tmp_path):
    CM.write_tiny_controlnet(tmp_path / "controlnet", "sd15", "original", name="cn")
    CM.write_tiny_t2i_adapter(tmp_path / "t2i_adapter", "sd15", name="t2i")
    CM.write_tiny_ip_adapter(tmp_path / "ipadapter", "sd15", name="ip")
    cat = ModelCatalog(tmp_path)
    cat.ensure_folders()
    assert not (tmp_path / "ControlNet").exists()
    cat.refresh()
    assert {(e.name, e.record.kind) for e in cat.entries("control")} == {
        ("cn.safetensors", "controlnet"),
        ("t2i.safetensors", "t2i_adapter"),
        ("ip.safetensors", "ip_adapter"),
    }


# --- the cache -----------------------------------------------------------------------------------------


def test_loaded_models_are_cached_by_path_and_mtime(tmp_path, cache):
    path = CM.write_tiny_controlnet(tmp_path / "ControlNet", "sd15", "original", name="cn")
    first = loading.load_control(path, cache=cache)
    assert loading.load_control(path, cache=cache) is first
    assert loading.load_control(path, "cpu", torch.float16, cache=cache) is not first  # another dtype, another entry
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    again = loading.load_control(path, cache=cache)
    assert again is not first
    _same_weights(again.model, first.model)


def test_a_changed_model_folder_is_identified_again(tmp_path):
    from webui.models.identify import is_current

    folder = CM.write_tiny_controlnet(tmp_path / "ControlNet", "sd15", "diffusers", name="cn")
    record = identify(folder, expect="control")
    assert record.stamp is not None and is_current(record)
    weights = folder / "diffusion_pytorch_model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert not is_current(record)


def test_cache_is_bounded_least_recently_used_first():
    cache = loading.ControlCache(max_entries=2)
    for i in range(3):
        cache.put((f"p{i}", 1, "cpu", "None"), object())
    assert len(cache) == 2 and cache.get(("p0", 1, "cpu", "None")) is None
    cache.get(("p1", 1, "cpu", "None"))
    cache.put(("p3", 1, "cpu", "None"), object())
    assert cache.get(("p1", 1, "cpu", "None")) is not None and cache.get(("p2", 1, "cpu", "None")) is None
    cache.put(("p1", 2, "cpu", "None"), object())  # the file changed: its old copy goes
    assert cache.get(("p1", 1, "cpu", "None")) is None


# --- does it fit the loaded model? -------------------------------------------------------------------


def test_family_mismatch_in_words(models_dir, catalog):
    record = identify(models_dir[1]["cn-sdxl-original"], expect="control")
    assert files.family_mismatch(record, "sdxl") is None
    assert files.family_mismatch(record, "sd15") == (
        "the ControlNet tiny-sdxl-controlnet-original.safetensors is for SDXL; the loaded model is SD 1.5:"
        " pick a ControlNet made for SD 1.5"
    )
    ip = identify(models_dir[1]["ip-sd15"], expect="control")
    assert "pick an IP-Adapter made for SDXL" in files.family_mismatch(ip, "sdxl")
    entry = catalog.find("tiny-sd15-t2i-original", kind="control")
    assert "the T2I-Adapter tiny-sd15-t2i-original.safetensors is for SD 1.5" in files.family_mismatch(entry, "sdxl")


@pytest.mark.parametrize(
    "name, fits, other",
    [
        ("cn-sd15-original", "sd15", "sdxl"),
        ("cn-sdxl-single", "sdxl", "sd15"),
        ("union-sdxl-single", "sdxl", "sd15"),
        ("t2i-sd15-original", "sd15", "sdxl"),
        ("ip-sdxl-plus", "sdxl", "sd15"),
        ("cn-sd3-diffusers", "sd3", "sd15"),
    ],
)
def test_shape_mismatch_against_the_loaded_denoiser(models_dir, cache, name, fits, other):
    loaded = loading.load_control(models_dir[1][name], cache=cache)

    def denoiser(family):
        pipe = CM._pipe(family)
        return getattr(pipe, "unet", None) or pipe.transformer

    assert files.shape_mismatch(loaded, denoiser(fits)) is None
    if other.startswith("sd3") == fits.startswith("sd3"):
        assert files.shape_mismatch(loaded, denoiser(other))


def test_shuffle_controlnet_pools_its_conditioning(tmp_path, cache):
    """control_v11e_sd15_shuffle's global pooling is not in the shapes; A1111 and diffusers go by the name."""
    path = CM.write_tiny_controlnet(tmp_path / "ControlNet", "sd15", "original", name="control_v11e_sd15_shuffle")
    loaded = loading.load_control(path, cache=cache)
    assert loaded.info["global_pool_conditions"] and loaded.model.config.global_pool_conditions


# --- the released architectures (built on the meta device: shapes only) -------------------------------

SD15_CN = {
    "block_out_channels": [320, 640, 1280, 1280],
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "layers_per_block": 2,
}
SDXL_CN = {
    "block_out_channels": [320, 640, 1280],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "cross_attention_dim": 2048,
    "attention_head_dim": [5, 10, 20],
    "transformer_layers_per_block": [1, 2, 10],
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}


def _meta(cls, **config):
    with torch.device("meta"):
        return cls(**config)


@pytest.mark.parametrize("family, config", [("sd15", SD15_CN), ("sdxl", SDXL_CN)])
def test_released_controlnet_configs_are_rebuilt_from_shapes(tmp_path, family, config):
    from diffusers import ControlNetModel

    model = _meta(ControlNetModel, **config)
    for layout, shapes in (
        ("single", {k: tuple(v.shape) for k, v in model.state_dict().items()}),
        ("original", {k: tuple(v.shape) for k, v in CM.controlnet_to_original(model).items()}),
    ):
        path = H.write_safetensors(tmp_path / f"{family}-{layout}.safetensors", shapes)
        record = identify(path, expect="control")
        assert (record.kind, record.family, record.info["layout"]) == ("controlnet", family, layout), record.error
        if layout == "original":
            renamed = loading.controlnet_from_original(shapes)
            shapes = {k: tuple(v) for k, v in renamed.items()}
        rebuilt = loading.controlnet_config(shapes, files.default_families().get(family))
        for key, value in model.config.items():
            if key in rebuilt:
                assert _norm(rebuilt[key]) == _norm(value), key


def test_released_t2i_adapters_round_trip_through_the_original_names():
    from diffusers import T2IAdapter

    for downscale, kind in ((8, "full_adapter"), (16, "full_adapter_xl")):
        model = _meta(
            T2IAdapter,
            in_channels=3,
            channels=[320, 640, 1280, 1280],
            num_res_blocks=2,
            downscale_factor=downscale,
            adapter_type=kind,
        )
        original = {k: tuple(v.shape) for k, v in CM.t2i_to_original(model).items()}
        renamed = loading.t2i_from_original(original)
        assert set(renamed) == set(model.state_dict())
        config = loading.t2i_config(renamed)
        assert config == {k: _norm(v) for k, v in model.config.items() if not k.startswith("_")}


@pytest.mark.parametrize(
    "family, config",
    [
        (  # InstantX/SD3-Controlnet-Canny
            "sd3",
            {
                "num_layers": 6,
                "num_attention_heads": 24,
                "joint_attention_dim": 4096,
                "caption_projection_dim": 1536,
                "pooled_projection_dim": 2048,
                "pos_embed_max_size": 192,
            },
        ),
        (  # stabilityai sd3.5_large_controlnet_canny (diffusers' conversion script's config)
            "sd35_large",
            {
                "num_layers": 19,
                "num_attention_heads": 38,
                "joint_attention_dim": None,
                "caption_projection_dim": 2048,
                "pooled_projection_dim": 2048,
                "pos_embed_max_size": None,
                "pos_embed_type": None,
                "use_pos_embed": False,
                "force_zeros_for_pooled_projection": False,
            },
        ),
    ],
)
def test_released_sd3_controlnet_configs_are_rebuilt_from_shapes(tmp_path, family, config):
    from diffusers import SD3ControlNetModel

    model = _meta(SD3ControlNetModel, **config)
    state = model.state_dict() if model.config.use_pos_embed else CM.sd3_controlnet_to_original(model)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    record = identify(H.write_safetensors(tmp_path / "x.safetensors", shapes), expect="control")
    assert (record.kind, record.family) == ("controlnet", family), record.error
    if record.info["layout"] == "original":
        state = loading.sd3_controlnet_from_original(state)
        assert set(state) == set(model.state_dict())
    rebuilt = loading.sd3_controlnet_config({k: tuple(v.shape) for k, v in state.items()}, None)
    unused = () if config["joint_attention_dim"] else ("caption_projection_dim",)  # no context embedder to size
    for key, value in model.config.items():
        if key in rebuilt and key not in unused:
            assert _norm(rebuilt[key]) == _norm(value), key


def _rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["cn-sdxl-original", "union-sdxl-single", "t2i-sd15-original", "t2i-sdxl-original"])
def test_tiny_unet_control_models_change_the_tiny_unet_output(models_dir, cache, name):
    """What the APPLY side relies on: each tiny model's residuals fit its tiny UNet and change its output."""
    kind, family = MODELS[name][2][:2]
    unet = CM._pipe(family).unet
    model = loading.load_control(models_dir[1][name], cache=cache).model
    latents = _rand(1, 4, 8, 8) - 0.5
    context = _rand(1, 77, unet.config.cross_attention_dim, seed=1)
    extra = {}
    if unet.config.addition_embed_type == "text_time":
        time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])
        pooled = _rand(1, unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim)
        extra["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
    hint = _rand(1, 3, 64, 64, seed=2)
    with torch.no_grad():
        base = unet(latents, 10, context, **extra).sample
        if kind == "t2i_adapter":
            features = model(hint)
            out = unet(latents, 10, context, down_intrablock_additional_residuals=features, **extra).sample
        else:
            args = {"conditioning_scale": 1.0, "return_dict": False, **extra}
            if MODELS[name][2][2] == "union":
                types = torch.zeros(1, model.config.num_control_type)
                types[0, 3] = 1
                args.update(control_type=types, control_type_idx=[3])
                hint = [hint]
            down, mid = model(latents, 10, context, hint, **args)
            out = unet(
                latents, 10, context, down_block_additional_residuals=down, mid_block_additional_residual=mid, **extra
            ).sample
    assert out.shape == base.shape and (out - base).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["cn-sd3-single", "cn-sd35-original"])
def test_tiny_sd3_controlnets_change_the_tiny_transformer_output(models_dir, cache, name):
    family = MODELS[name][2][1]
    transformer = CM._pipe(family).transformer
    model = loading.load_control(models_dir[1][name], cache=cache).model
    config = transformer.config
    latents = _rand(1, config.in_channels, 8, 8) - 0.5
    context = _rand(1, 16, config.joint_attention_dim, seed=1)
    pooled = _rand(1, config.pooled_projection_dim, seed=2)
    cond = _rand(1, config.in_channels, 8, 8, seed=3)
    t = torch.tensor([500.0])
    with torch.no_grad():
        base = transformer(latents, context, pooled, t, return_dict=False)[0]
        kwargs = {} if model.config.joint_attention_dim else {"encoder_hidden_states": None}
        if not model.config.use_pos_embed:  # SD3.5 Large ControlNets borrow the transformer's positional embedding
            model = copy_with_pos_embed(model, transformer)
            blocks = model(latents, cond, 1.0, pooled_projections=pooled, timestep=t, return_dict=False, **kwargs)[0]
        else:
            blocks = model(latents, cond, 1.0, context, pooled, t, return_dict=False)[0]
        out = transformer(latents, context, pooled, t, block_controlnet_hidden_states=blocks, return_dict=False)[0]
    assert out.shape == base.shape and (out - base).abs().max() > 1e-3


def copy_with_pos_embed(model, transformer):
    """What StableDiffusion3ControlNetPipeline does for a ControlNet without its own pos_embed, on a copy (the cached
    model is shared)."""
    import copy

    clone = copy.deepcopy(model)
    clone.pos_embed = copy.deepcopy(transformer.pos_embed)
    return clone


# last: it frees the tiny pipelines the other tests share
def test_demo_control_models(tmp_path):
    paths = CM.write_demo_control_models(tmp_path)
    cat = ModelCatalog(tmp_path)
    cat.refresh()
    entries = cat.entries("control") + cat.entries("clip_vision")
    assert sorted(e.path for e in entries) == sorted(paths)
    assert all(e.usable and e.demo for e in entries)
    assert {(e.record.kind, e.family) for e in cat.entries("control")} == {
        (kind, family) for kind in ("controlnet", "t2i_adapter", "ip_adapter") for family in ("sd15", "sdxl")
    }
    for entry in cat.entries("control"):
        if entry.record.kind == "ip_adapter":
            assert files.find_image_encoder(entry, cat.entries("clip_vision")).name == "demo-clip-vision.safetensors"
    stamp = paths[0].stat().st_mtime_ns
    CM.write_demo_control_models(tmp_path)  # kept
    assert paths[0].stat().st_mtime_ns == stamp
