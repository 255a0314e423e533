"""Settings page logic: checks with messages per setting, live application, persistence, reset.

The page saves through the backend (``services.backend.save_settings``); the checks and the config
file are ``webui.settings_edit``, the live appliers ``webui.backend.local_settings``."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.app_services import tmp_services
from webui.backend import local_settings
from webui.config import Settings, load_settings
from webui.generation.requests import GenerationRequest
from webui.generation.service import DONE
from webui.models.demo import demo_checkpoint_name, write_demo_models
from webui.outputs.writer import read_infotext
from webui.settings_edit import check_values, infer_base
from webui.ui import settings_apply


def save_settings(services, values, *, reset=False):
    """What the page's Apply does: the backend checks, applies and persists."""
    return settings_apply.save_settings(services.backend, values, reset=reset)


@pytest.fixture
def services(tmp_path):
    return tmp_services(tmp_path)


def config_on_disk(services) -> dict:
    path = Path(services.paths.config_file)
    return json.loads(path.read_text()) if path.exists() else {}


@pytest.mark.parametrize(
    "name,value,phrase",
    [
        ("preview_every", -1, "0 (off) or more"),
        ("preview_every", "often", "must be a int"),
        ("samples_format", "gif", "png, jpg, webp"),
        ("default_rng", "NV", "GPU, CPU"),
        ("filename_pattern", "[seed]-[colour]", "[colour] is not a token"),
        ("filename_pattern", "sub/[seed]", "remove /"),
        ("max_image_size", 100, "multiple of 8"),
        ("ram_cache_models", -2, "0 or more"),
        ("ram_cache_gib", -2, "-1 (auto"),
        ("ram_cache_gib", "lots", "must be a float"),
        ("default_model", "missing.safetensors", "pick one from the list"),
        ("job_timeout", -1, "0 (no limit) or more"),
        ("filename_pattern", "[seed]\x00", "NUL byte"),
        ("port", 7999, "cannot be changed from the browser"),
        ("outputs_dir", "/tmp/x", "set it with --outputs-dir"),
        ("offline", False, "cannot be changed from the browser"),
        ("colour", "red", "cannot be changed on the settings page"),
    ],
)
def test_each_bad_value_gets_a_message_next_to_its_setting(name, value, phrase):
    _, errors = check_values({name: value}, checkpoints=["a.safetensors"])
    assert list(errors) == [name]
    assert phrase in errors[name]


def test_good_values_are_coerced_to_their_types():
    clean, errors = check_values(
        {"preview_every": "3", "compile": "true", "default_model": "a.safetensors", "filename_pattern": ""},
        checkpoints=["a.safetensors"],
    )
    assert errors == {}
    assert clean == {"preview_every": 3, "compile": True, "default_model": "a.safetensors", "filename_pattern": ""}


def test_every_setting_on_the_page_is_a_real_setting_and_live_ones_have_an_applier():
    fields = set(Settings.__dataclass_fields__)
    assert set(settings_apply.EDITABLE) <= fields
    assert settings_apply.LIVE == set(local_settings.LIVE_APPLIERS)


def test_live_settings_apply_at_once_and_persist(services, tmp_path):
    result = save_settings(
        services,
        {
            "filename_pattern": "[seed]-[prompt_words]",
            "preview_every": 2,
            "ram_cache_models": 3,
            "max_image_size": 1024,
            "default_rng": "CPU",
            "samples_format": "webp",
        },
    )
    assert result.ok and not result.after_restart and not result.persist_error
    assert set(result.applied) == {
        "filename_pattern",
        "preview_every",
        "ram_cache_models",
        "max_image_size",
        "default_rng",
        "samples_format",
    }
    assert services.writer is services.engine.writer
    assert Path(services.writer.root) == tmp_path / "outputs" == services.paths.outputs
    assert services.writer.filename_pattern == "[seed]-[prompt_words]"
    assert services.generation.preview_every == 2
    assert services.manager._ram_cache_models == 3  # no public getter; the value the cache trims to
    assert (services.engine.limits.max_side, services.engine.limits.max_hires_side) == (1024, 2048)
    assert (services.settings.default_rng, services.settings.samples_format) == ("CPU", "webp")
    # read back at the next start
    settings, _ = load_settings(["--config-file", str(services.paths.config_file)], environ={})
    assert (settings.filename_pattern, settings.preview_every, settings.samples_format) == (
        "[seed]-[prompt_words]",
        2,
        "webp",
    )


def test_only_changed_settings_are_written(services):
    save_settings(services, {**settings_apply.current_values(services.backend), "preview_every": 9})
    assert config_on_disk(services) == {"preview_every": 9}


def test_device_settings_wait_for_a_restart(services):
    result = save_settings(services, {"precision": "bf16", "device": "cuda", "preview_every": 5})
    assert result.ok and result.applied == [] and set(result.after_restart) == {"precision", "device"}
    assert "after a restart" in result.message() and "Compute precision" in result.message()
    assert services.device.device == "cpu"  # the running device is untouched
    assert config_on_disk(services) == {"precision": "bf16", "device": "cuda"}


def test_an_error_changes_nothing(services):
    writer = services.writer
    result = save_settings(services, {"preview_every": 3, "samples_format": "bmp"})
    assert not result.ok and list(result.errors) == ["samples_format"]
    assert "Nothing was saved" in result.message()
    assert services.writer is writer and services.generation.preview_every == 5
    assert services.settings.preview_every == 5 and config_on_disk(services) == {}


@pytest.mark.parametrize("name", sorted(settings_apply.NOT_FROM_PAGE))
def test_settings_that_decide_code_files_or_listening_are_never_saved_from_the_page(services, tmp_path, name):
    """Issue 12: "Extensions folder = the upload folder" made an uploaded file code that ran at the next start."""
    before = services.settings
    value = {"int": 7999, "bool": True}.get(Settings.__dataclass_fields__[name].type, str(tmp_path / "cache" / "x"))
    result = save_settings(services, {name: value, "preview_every": 3})
    assert list(result.errors) == [name] and "cannot be changed from the browser" in result.errors[name]
    assert services.settings == before and config_on_disk(services) == {}
    assert name not in settings_apply.EDITABLE


def test_reset_restores_defaults_live_and_in_the_file(services, tmp_path):
    save_settings(services, {"filename_pattern": "[seed]-[steps]", "preview_every": 1, "precision": "fp32"})
    config = Path(services.paths.config_file)
    data = json.loads(config.read_text())
    config.write_text(json.dumps({**data, "t5_tokenizer_dir": "keep/me"}))
    result = save_settings(services, settings_apply.default_values(services.backend), reset=True)
    assert result.ok
    assert services.writer.filename_pattern == "[seed]" and services.generation.preview_every == 5
    # "outputs" is relative: resolved against the folder the app resolved its paths against
    assert services.paths.outputs == tmp_path / "outputs"
    assert config_on_disk(services) == {"t5_tokenizer_dir": "keep/me"}


def test_extension_settings_are_checked_saved_and_reset_with_ours(tmp_path):
    import shutil

    shutil.copytree(Path(__file__).parent / "fixtures" / "extensions" / "good", tmp_path / "ext" / "good")
    services = tmp_services(tmp_path)
    assert settings_apply.current_values(services.backend)["good_suffix"] == ", masterpiece"
    bad = save_settings(services, {"good_suffix": 5, "preview_every": 2})
    assert list(bad.errors) == ["good_suffix"] and "takes a str" in bad.errors["good_suffix"]
    assert services.generation.preview_every == 5  # nothing applied
    result = save_settings(services, {"good_suffix": ", best quality", "preview_every": 2})
    assert result.ok and "Suffix added to every prompt" in result.message()
    assert services.extensions.options["good_suffix"] == ", best quality"
    assert "good_suffix" not in config_on_disk(services)  # the extension host keeps its own state
    save_settings(services, settings_apply.default_values(services.backend), reset=True)
    assert services.extensions.options["good_suffix"] == ", masterpiece"


def test_a_saved_file_name_pattern_is_used_after_a_restart(tmp_path):
    services = tmp_services(tmp_path, filename_pattern="[seed]-[steps]")
    # build_backend gave the writer the saved pattern (what building the Settings tab did before)
    assert services.writer.filename_pattern == "[seed]-[steps]" and services.engine.writer is services.writer
    assert services.writer.root == tmp_path / "outputs"
    assert local_settings.sync_writer(services) is False


def test_infer_base_finds_the_folder_relative_paths_hang_from(tmp_path):
    settings = Settings(outputs_dir="out/images", models_dir=str(tmp_path / "m"))
    paths = SimpleNamespace(outputs=tmp_path / "app" / "out" / "images", models=tmp_path / "m", cache=tmp_path / "c")
    assert infer_base(settings, paths) == tmp_path / "app"


def test_the_next_image_uses_the_new_file_name_pattern(tmp_path):
    write_demo_models(tmp_path / "models", ("sd15",))
    services = tmp_services(tmp_path)
    services.generation.start()
    try:
        result = save_settings(
            services,
            {
                "filename_pattern": "[seed]-[prompt_words]",
                "default_model": demo_checkpoint_name("sd15"),
            },
        )
        assert result.ok, result.errors
        request = GenerationRequest(prompt="red fox", width=64, height=64, steps=2, seed=7)
        job = services.generation.submit(request, source="test")
        assert job.wait(120) and job.state == DONE, job.error
    finally:
        services.generation.stop()
    path = Path(job.result.paths[0])
    assert path.is_relative_to(tmp_path / "outputs" / "txt2img-images")
    assert path.name.endswith("-7-red fox.png")
    assert "Seed: 7" in read_infotext(path)


# --- the other tabs' plain logic: PNG Info, Extensions, the inpaint editor value ---------------------


def test_png_info_reads_our_infotext_into_rows(tmp_path):
    from PIL import Image

    from webui.outputs.writer import encode_image
    from webui.ui.png_info_tab import read_parameters

    text = "a cat\nNegative prompt: blurry\nSteps: 12, Sampler: Euler a, Seed: 5, Size: 64x64"
    path = tmp_path / "cat.png"
    path.write_bytes(encode_image(Image.new("RGB", (8, 8)), text, "png"))
    infotext, rows, note = read_parameters(str(path))
    assert infotext == text and note == ""
    assert rows[:3] == [["Prompt", "a cat"], ["Negative prompt", "blurry"], ["Steps", "12"]]
    assert ["Size", "64x64"] in rows


def test_png_info_reads_a1111_jpeg_exif_and_explains_missing_or_broken_files(tmp_path):
    from PIL import Image

    from webui.outputs.writer import encode_image
    from webui.ui.png_info_tab import NO_PARAMETERS, read_parameters

    jpeg = tmp_path / "a1111.jpg"
    jpeg.write_bytes(encode_image(Image.new("RGB", (8, 8)), "dog\nSteps: 20, Seed: 1, Size: 8x8", "jpg"))
    assert read_parameters(jpeg)[1][0] == ["Prompt", "dog"]
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    assert read_parameters(plain) == ("", [], NO_PARAMETERS)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    text, rows, note = read_parameters(broken)
    assert (text, rows) == ("", []) and note.startswith("Cannot read this file") and "PNG, JPEG or WebP" in note


def test_extension_folders_are_listed_with_what_they_contain_without_a_host(tmp_path):
    from webui.ui.extensions_tab import folder_rows

    (tmp_path / "sd-webui-thing" / "scripts").mkdir(parents=True)
    (tmp_path / "sd-webui-thing" / "install.py").write_text("")
    (tmp_path / "Package").mkdir()
    (tmp_path / "Package" / "__init__.py").write_text("")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "loose-file.py").write_text("")
    rows = folder_rows(tmp_path)
    assert [r[0] for r in rows] == ["Package", "sd-webui-thing"]
    assert rows[1][3] == "found; not loaded" and rows[1][5] == "A1111 scripts, install.py"
    assert folder_rows(tmp_path / "missing") == []


def _host(tmp_path, *names, allow_install=True):
    import shutil

    from webui.extensions import ExtensionHost

    fixtures = Path(__file__).parent / "fixtures" / "extensions"
    folder = tmp_path / "extensions"
    folder.mkdir()
    for name in names:
        shutil.copytree(fixtures / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
    host = ExtensionHost(folder, tmp_path / "state.json", allow_install=allow_install, entry_points=list)
    host.discover()
    return host, folder


def _backend(host):
    """A backend over nothing but the extension host (what the Extensions tab talks to)."""
    from webui.backend.local import LocalBackend

    return LocalBackend(SimpleNamespace(extensions=host))


def test_extension_rows_show_status_hooks_and_problems_in_words(tmp_path):
    from webui.ui.extensions_tab import NEW_FOLDER, host_rows

    host, folder = _host(tmp_path, "good", "bad-manifest", "needs-package")
    (folder / "added-later").mkdir()
    rows = {row[0]: row for row in host_rows(_backend(host).extensions(), folder)}
    assert rows["good"][1:5] == ["folder", "0.1", "ok", "webui_before_job, webui_before_save, webui_settings"]
    assert rows["good"][5] == ""
    assert rows["needs-package"][3] == "failed" and "not-a-real-package-for-webui-tests" in rows["needs-package"][5]
    assert rows["bad-manifest"][3] == "failed" and rows["bad-manifest"][5]
    assert rows["added-later"][3] == NEW_FOLDER


def test_turning_an_extension_off_and_on_says_what_happened(tmp_path):
    from webui.ui.extensions_tab import host_rows, set_enabled, switchable

    host, folder = _host(tmp_path, "good")
    backend = _backend(host)
    assert switchable(backend.extensions()) == ["good"]
    message = set_enabled(backend, "good", False)
    assert message.startswith("good is off.") and "Restart the app" in message
    assert host_rows(backend.extensions(), folder)[0][3] == "disabled (restart to finish)"
    assert json.loads((tmp_path / "state.json").read_text())["disabled"] == ["good"]
    assert set_enabled(backend, "good", True).startswith("good is on.")
    assert "unknown extension" in set_enabled(backend, "nope", True)
    assert set_enabled(backend, None, True) == "Pick an extension first."


def test_installing_requirements_is_refused_in_words_when_not_allowed(tmp_path):
    from webui.ui.extensions_tab import install_requirements

    host, _ = _host(tmp_path, "needs-package", allow_install=False)
    message = install_requirements(_backend(host), "needs-package")
    assert message.startswith("**") and "--enable-insecure-extension-access" in message


def _rgba_layer(size, box):
    from PIL import Image, ImageDraw

    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    ImageDraw.Draw(layer).rectangle(box, fill=(0, 0, 0, 255))
    return layer


def test_painted_layers_become_a_white_mask_on_the_image_size():
    from PIL import Image

    from webui.ui.inpaint_tab import image_and_mask

    background = Image.new("RGBA", (64, 48), (10, 200, 30, 255))
    value = {"background": background, "layers": [_rgba_layer((64, 48), (8, 8, 15, 15))], "composite": background}
    image, mask = image_and_mask(value)
    assert image.mode == "RGB" and image.size == (64, 48) and image.getpixel((0, 0)) == (10, 200, 30)
    assert mask.mode == "L" and mask.size == (64, 48)
    assert mask.getbbox() == (8, 8, 16, 16) and mask.getpixel((10, 10)) == 255 and mask.getpixel((30, 30)) == 0
    # a layer exported at another size is scaled onto the image
    half = {"background": background, "layers": [_rgba_layer((32, 24), (0, 0, 15, 11))]}
    assert image_and_mask(half)[1].getbbox() == (0, 0, 32, 24)


def test_an_uploaded_mask_wins_and_missing_parts_are_named():
    from PIL import Image

    from webui.generation.requests import RequestError
    from webui.ui.inpaint_tab import NO_IMAGE, NO_MASK, image_and_mask

    background = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    uploaded = Image.new("RGB", (32, 32), "white")
    image, mask = image_and_mask({"background": background, "layers": []}, uploaded)
    assert image.getpixel((0, 0)) == (255, 255, 255)  # transparent shows as white, as in the editor
    assert mask.mode == "L" and mask.getpixel((5, 5)) == 255
    with pytest.raises(RequestError) as no_image:
        image_and_mask({"background": None, "layers": [], "composite": None})
    assert (no_image.value.field, no_image.value.message) == ("init_image", NO_IMAGE)
    with pytest.raises(RequestError) as no_mask:
        image_and_mask({"background": background, "layers": []})
    assert (no_mask.value.field, no_mask.value.message) == ("mask", NO_MASK)
    assert image_and_mask({"background": background, "layers": []}, allow_empty=True)[1].getbbox() is None


def test_inpaint_request_from_the_tab_values():
    from PIL import Image

    from webui.ui.inpaint_tab import EDITOR_KEY, MASK_UPLOAD_KEY, request_from_inpaint_values

    background = Image.new("RGB", (64, 64), "gray")
    values = {
        "prompt": "a hat",
        "steps": 4,
        "inpainting_fill": "latent noise",
        "inpainting_mask_invert": "Inpaint masked",
        EDITOR_KEY: {"background": background, "layers": [_rgba_layer((64, 64), (0, 0, 31, 63))]},
        MASK_UPLOAD_KEY: None,
    }
    request = request_from_inpaint_values(values)
    assert (request.task, request.prompt, request.steps, request.inpainting_fill) == ("inpaint", "a hat", 4, 2)
    assert request.init_image.size == request.mask.size == (64, 64)
    assert request.mask.getbbox() == (0, 0, 32, 64)


def test_memory_modes_conflict_is_refused_next_to_the_setting(services):
    result = save_settings(services, {"memory_modes": "model_cpu_offload,sequential_cpu_offload"})
    assert not result.ok and "memory_modes" in result.errors
    assert services.manager.memory_modes == services.settings.memory_modes


def test_memory_modes_apply_to_the_loaded_model_on_the_worker(services):
    from webui.models.demo import demo_checkpoint_name, write_demo_models

    write_demo_models(services.paths.models, ("sd15",))
    services.catalog.refresh()
    services.generation.start()
    try:
        services.generation.call(lambda: services.manager.load(demo_checkpoint_name("sd15")), timeout=120)
        result = save_settings(services, {"memory_modes": "vae_slicing,attention_slicing", "memory_oom_retry": False})
        assert result.ok, result.errors
        assert set(services.manager.memory_plan.names) == {"vae_slicing", "attention_slicing"}
        assert services.engine.oom_retry is False
        assert config_on_disk(services)["memory_modes"] == "vae_slicing,attention_slicing"
    finally:
        services.generation.stop()


def test_saving_over_a_broken_settings_file_keeps_a_copy_of_it(services):
    config = Path(services.paths.config_file)
    config.write_text('{"preview_every": 3,')  # the app started with defaults and said so
    result = save_settings(services, {"preview_every": 4})
    assert result.ok and not result.persist_error
    assert config_on_disk(services) == {"preview_every": 4}
    assert config.with_name("config.json.broken").read_text() == '{"preview_every": 3,'


@pytest.mark.parametrize(
    "content",
    [
        b"these are my prompts\n",  # a text file
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,  # a PNG signature and nothing a PNG has
        b"GIF89a\x01\x00\x01\x00\x00\x00\x00;",  # a real format, but not one the app reads
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n",  # EPS: PIL would hand it to Ghostscript
    ],
)
def test_png_info_says_a_file_is_not_an_image_without_a_path_or_an_exception_name(tmp_path, content):
    from webui.ui.png_info_tab import NOT_AN_IMAGE, open_image, read_parameters

    path = tmp_path / "upload" / "dropped.png"
    path.parent.mkdir()
    path.write_bytes(content)
    text, rows, note = read_parameters(str(path))
    assert (text, rows, note) == ("", [], NOT_AN_IMAGE)
    assert "not an image" in note and str(tmp_path) not in note and "Error" not in note
    assert open_image(str(path)) is None  # "Send to img2img" sends the parameters only


def test_ram_cache_gib_applies_live_from_the_page_and_the_backend_options(services):
    result = save_settings(services, {"ram_cache_gib": 0.25, "ram_cache_models": 2})
    assert result.ok and not result.after_restart and {"ram_cache_gib", "ram_cache_models"} <= set(result.applied)
    usage = services.manager.ram_cache_usage()
    assert (usage["budget_bytes"], usage["max_models"]) == (1024**3 // 4, 2)
    assert config_on_disk(services)["ram_cache_gib"] == 0.25
    services.backend.set_options({"ram_cache_gib": 1.5})
    assert services.manager.ram_cache_usage()["budget_bytes"] == 3 * 1024**3 // 2
