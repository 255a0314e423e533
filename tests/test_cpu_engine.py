"""The CPU engine (``--cpu-engine auto|torch|openvino``): the choice, the fallbacks to torch, the stored
conversions, the settings, and one real OpenVINO conversion of a tiny UNet (skipped without openvino)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import torch

from tests.app_services import tmp_services
from webui.config import SettingsError, load_settings
from webui.models.demo import demo_checkpoint_name, write_demo_models
from webui.models.devices import DeviceChoice
from webui.speed import ov_unet
from webui.speed.engine_choice import choose_engine
from webui.speed.engine_probe import EngineProbe, read_probe, write_probe
from webui.speed.engine_setup import set_up_engine
from webui.speed.optimize import SpeedOptions, SpeedTuner
from webui.speed.ov_engine import EngineState, IRStore, Runtime, attach_engine, detach_engine, engine_state

CPU = DeviceChoice("cpu", "fp32", "test")


class FakeOpenVino:
    """Stands in for OpenVINO: 'exports' by writing the two IR files, 'runs' the UNet's class forward."""

    def __init__(self, unet, delay: float = 0.0, fail: str = "") -> None:
        self.unet, self.delay, self.fail = unet, delay, fail
        self.exports, self.compiles, self.calls = 0, 0, 0

    def export_ir(self, module, example, dynamic, folder: Path, *, compress_to_fp16: bool) -> Path:
        if self.fail:
            raise RuntimeError(self.fail)
        self.exports += 1
        assert list(example) == ["sample", "timestep", "encoder_hidden_states"] and dynamic["sample"][2:] == [-1, -1]
        folder.mkdir(parents=True)
        (folder / "denoiser.xml").write_text("<net/>")
        (folder / "denoiser.bin").write_bytes(b"\0")
        return folder / "denoiser.xml"

    def compile_ir(self, xml: Path, threads: int, config: dict):
        self.compiles += 1
        assert "CACHE_DIR" in config and threads >= 1
        return "compiled"

    def runner(self, compiled):
        def run(tensors):
            self.calls += 1
            time.sleep(self.delay)
            sample, timestep, context = tensors
            return type(self.unet).forward(self.unet, sample, timestep, context, return_dict=False)[0]

        return run

    def runtime(self) -> Runtime:
        return Runtime(self.export_ir, self.compile_ir, self.runner, lambda: "9.9.0")


@pytest.fixture
def pipe(fresh_tiny_pipe):
    return fresh_tiny_pipe("sd15")


def _unet_inputs(unet, side=8):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, unet.config.in_channels, side, side, generator=gen)
    context = torch.randn(2, 77, unet.config.cross_attention_dim, generator=gen)
    return x, torch.tensor(10), context


def _attach(unet, fake, tmp_path, engine="openvino", reason="--cpu-engine openvino"):
    from webui.speed.engine_choice import EngineChoice

    return attach_engine(
        unet,
        EngineChoice(engine, reason),
        IRStore(tmp_path / "openvino"),
        runtime=fake.runtime(),
        probe_file=tmp_path / "engine_probe.json",
        machine="test-cpu",
        threads=1,
    )


# -- the choice ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "setting, overrides, engine, phrase",
    [
        ("torch", {}, "torch", "--cpu-engine torch"),
        ("openvino", {}, "openvino", "--cpu-engine openvino"),
        ("auto", {}, "measure", "not measured"),
        ("auto", {"measured": EngineProbe(3000, 1500)}, "openvino", "2.00x"),
        ("auto", {"measured": EngineProbe(3000, 2900)}, "torch", "torch is as fast or faster"),
        ("auto", {"openvino_version": ""}, "torch", "not installed (pip install openvino"),
        ("openvino", {"openvino_version": ""}, "torch", "not installed"),
        ("auto", {"device": "cuda"}, "torch", "CPU engine"),
        ("openvino", {"precision": "bf16"}, "openvino", "--cpu-engine openvino"),
        ("openvino", {"precision": "fp16"}, "torch", "runs fp32 and bf16 models"),
        ("openvino", {"unsupported": "SD3's transformer stays in torch"}, "torch", "SD3"),
        ("openvino", {"memory_reason": "an offload memory mode places"}, "torch", "offload"),
        ("auto", {"compile_on": True}, "torch", "torch.compile is on"),
    ],
)
def test_choose_engine_table(setting, overrides, engine, phrase):
    args = {"device": "cpu", "precision": "fp32", "openvino_version": "2026.4.1", **overrides}
    choice = choose_engine(setting, **args)
    assert choice.engine == engine and phrase in choice.reason
    assert choice.warn == (setting == "openvino" and engine == "torch" and args["device"] == "cpu")


def test_the_measurement_is_stored_per_machine_and_model(tmp_path):
    path = tmp_path / "engine_probe.json"
    write_probe(path, "cpu-a|unet-1", EngineProbe(2000.0, 1000.0))
    assert read_probe(path, "cpu-a|unet-1") == EngineProbe(2000.0, 1000.0, from_cache=True)
    assert read_probe(path, "cpu-b|unet-1") is None
    path.write_text("not json")
    assert read_probe(path, "cpu-a|unet-1") is None


# -- which calls the export serves ------------------------------------------------------------------------


SPEC = ov_unet.UNetSpec(("sample", "timestep", "encoder_hidden_states"), up_factor=8, in_channels=4, cross_dim=8)


@pytest.mark.parametrize(
    "change, reason",
    [
        ({}, ""),
        ({"down_block_additional_residuals": (torch.zeros(1),)}, "ControlNet residuals"),
        ({"down_intrablock_additional_residuals": [torch.zeros(1)]}, "T2I-Adapter residuals"),
        ({"cross_attention_kwargs": {"scale": 0.5}}, "cross-attention options"),
        ({"cross_attention_kwargs": {}}, ""),
        ({"added_cond_kwargs": {"image_embeds": [torch.zeros(1)]}}, "IP-Adapter image embeddings"),
        ({"sample": torch.zeros(2, 4, 12, 16)}, "multiple of 64 px"),
        ({"sample": torch.zeros(2, 4, 16, 16, dtype=torch.float16)}, "the export runs fp32 or bf16"),
    ],
)
def test_calls_the_export_cannot_serve_say_why(change, reason):
    bound = {"sample": torch.zeros(2, 4, 16, 16), "timestep": torch.tensor(5), "encoder_hidden_states": torch.zeros(2, 77, 8)}
    bound.update(change)
    tensors, why = ov_unet.call_inputs(SPEC, bound)
    assert why == reason if not reason else reason in why
    if not reason:
        assert tensors[1].shape == (2,) and tensors[1].dtype == torch.float32


def test_sd3_transformer_is_not_exported():
    spec, why = ov_unet.unet_spec(torch.nn.Linear(2, 2))
    assert spec is None and "runs UNet models" in why


# -- the engine on a UNet (fake OpenVINO) ------------------------------------------------------------------


def test_openvino_runs_the_unet_and_controlnet_residuals_run_in_torch(pipe, tmp_path):
    unet = pipe.unet
    fake = FakeOpenVino(unet)
    x, t, context = _unet_inputs(unet)
    with torch.no_grad():
        expected = unet(x, t, encoder_hidden_states=context).sample
    state = _attach(unet, fake, tmp_path)
    with torch.no_grad():
        out = unet(x, t, encoder_hidden_states=context).sample
        assert (fake.exports, fake.calls, state.openvino_calls) == (1, 1, 1)
        assert torch.equal(out, expected)
        down, mid = _controlnet_residuals(unet, x, context)
        with_control = unet(x, t, context, down_block_additional_residuals=down, mid_block_additional_residual=mid)
        assert not torch.equal(with_control.sample, expected)  # the residuals were applied (by torch)
    assert fake.calls == 1 and state.torch_calls == {"ControlNet residuals": 1}
    assert "calls run in torch instead: ControlNet residuals (1)" in state.describe()
    detach_engine(unet)
    assert "forward" not in unet.__dict__ and engine_state(unet) is None


def _controlnet_residuals(unet, x, context):
    """What a ControlNet made from this UNet passes to it (down residuals, mid residual)."""
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(unet).eval()
    torch.nn.init.normal_(controlnet.controlnet_mid_block.weight)  # from_unet zero-initialises them
    cond = torch.rand(x.shape[0], 3, x.shape[2] * 8, x.shape[3] * 8)
    down, mid = controlnet(x, torch.tensor(10), context, controlnet_cond=cond, return_dict=False)
    return down, mid


def test_an_active_lora_runs_in_torch(pipe, tmp_path):
    from peft import LoraConfig

    unet = pipe.unet
    fake = FakeOpenVino(unet)
    state = _attach(unet, fake, tmp_path)
    unet.add_adapter(LoraConfig(r=2, target_modules=["to_q"]), adapter_name="test")
    x, t, context = _unet_inputs(unet)
    with torch.no_grad():
        unet(x, t, encoder_hidden_states=context)
    assert fake.calls == 0 and "an active LoRA" in next(iter(state.torch_calls))
    unet.disable_adapters()
    with torch.no_grad():
        unet(x, t, encoder_hidden_states=context)
    assert fake.calls == 1


def test_the_conversion_is_stored_and_reused_for_the_same_weights_only(pipe, tmp_path):
    unet = pipe.unet
    x, t, context = _unet_inputs(unet)
    first = FakeOpenVino(unet)
    _attach(unet, first, tmp_path)
    with torch.no_grad():
        unet(x, t, encoder_hidden_states=context)
    again = FakeOpenVino(unet)
    _attach(unet, again, tmp_path)  # another load of the same checkpoint
    with torch.no_grad():
        unet(x, t, encoder_hidden_states=context)
        assert (again.exports, again.compiles, again.calls) == (0, 1, 1)
        unet.conv_in.weight.mul_(1.5)  # other weights: another conversion
    other = FakeOpenVino(unet)
    _attach(unet, other, tmp_path)
    with torch.no_grad():
        unet(x, t, encoder_hidden_states=context)
    assert other.exports == 1
    assert len([p for p in (tmp_path / "openvino").iterdir() if p.name != "blobs"]) == 2


def test_a_failed_conversion_falls_back_to_torch_for_good(pipe, tmp_path, caplog):
    unet = pipe.unet
    fake = FakeOpenVino(unet, fail="unsupported operation aten::foo")
    state = _attach(unet, fake, tmp_path)
    x, t, context = _unet_inputs(unet)
    with caplog.at_level(logging.WARNING), torch.no_grad():
        out = unet(x, t, encoder_hidden_states=context).sample
        unet(x, t, encoder_hidden_states=context)
    assert out.shape == x.shape and state.engine == "torch" and "forward" not in unet.__dict__
    assert "the OpenVINO export failed (RuntimeError: unsupported operation aten::foo)" in state.reason
    assert "unsupported operation" in caplog.text


def test_auto_measures_once_and_keeps_torch_when_openvino_is_not_faster(pipe, tmp_path):
    unet = pipe.unet
    slow = FakeOpenVino(unet, delay=0.3)  # far slower than a tiny UNet call, even on a busy machine
    state = _attach(unet, slow, tmp_path, engine="measure", reason="auto: not measured")
    x, t, context = _unet_inputs(unet)
    with torch.no_grad():
        out = unet(x, t, encoder_hidden_states=context).sample
    assert out.shape == x.shape and state.engine == "torch" and "torch is as fast or faster" in state.reason
    assert "forward" not in unet.__dict__
    stored = read_probe(tmp_path / "engine_probe.json", f"test-cpu|{ov_unet.model_signature(unet)}")
    assert stored is not None and not stored.openvino_faster


def test_offload_keeps_the_unet_in_torch_and_says_so(pipe, tmp_path):
    fake = FakeOpenVino(pipe.unet)
    options = SpeedOptions("off", cpu_engine="openvino")
    state = set_up_engine(pipe, CPU, options, tmp_path, runtime=fake.runtime(), manages_placement=True)
    assert state.engine == "torch" and "offload" in state.describe() and "forward" not in pipe.unet.__dict__


def test_auto_leaves_small_models_in_torch(pipe, tmp_path):
    fake = FakeOpenVino(pipe.unet)
    report = SpeedTuner(CPU, SpeedOptions("off"), cache_dir=tmp_path, openvino=fake.runtime()).apply(pipe, "sd15")
    assert any(line.startswith("UNet engine: torch - auto: a small model") for line in report.lines())


def test_openvino_with_compile_on_skips_compile(pipe, tmp_path):
    fake = FakeOpenVino(pipe.unet)
    options = SpeedOptions("off", compile=True, cpu_engine="openvino")
    report = SpeedTuner(CPU, options, cache_dir=tmp_path, openvino=fake.runtime()).apply(pipe, "sd15")
    assert "torch.compile not used" in report.compiled and "_webui_compile_state" not in pipe.unet.__dict__


def test_engine_state_describes_the_running_engine():
    from webui.speed.engine_choice import EngineChoice

    state = EngineState(EngineChoice("openvino", "auto: OpenVINO 1.70x the speed of torch"))
    assert state.describe() == "UNet engine: OpenVINO - auto: OpenVINO 1.70x the speed of torch"


# -- settings ------------------------------------------------------------------------------------------


def test_the_flag_and_the_environment_set_the_engine(tmp_path):
    assert load_settings(["--cpu-engine", "openvino"], base_dir=tmp_path, environ={})[0].cpu_engine == "openvino"
    assert load_settings([], base_dir=tmp_path, environ={"WEBUI_CPU_ENGINE": "torch"})[0].cpu_engine == "torch"
    assert load_settings([], base_dir=tmp_path, environ={})[0].cpu_engine == "auto"
    with pytest.raises(SettingsError, match="--cpu-engine must be one of auto, torch, openvino"):
        load_settings([], base_dir=tmp_path, environ={"WEBUI_CPU_ENGINE": "tensorrt"})


def test_the_settings_page_changes_the_engine_live_and_shows_it(tmp_path):
    from webui.ui import settings_apply
    from webui.ui.settings_apply import device_summary

    write_demo_models(tmp_path / "models", ("sd15",))
    services = tmp_services(tmp_path, cpu_engine="torch")
    services.generation.start()
    try:
        services.manager.load(demo_checkpoint_name("sd15"))
        assert "UNet engine: torch - --cpu-engine torch" in device_summary(services.backend)
        result = settings_apply.save_settings(services.backend, {"cpu_engine": "auto"})
        assert result.ok and "cpu_engine" in result.applied
        assert services.manager.speed.options.cpu_engine == "auto"
        assert "UNet engine: torch - " in device_summary(services.backend)  # a tiny model or no OpenVINO
    finally:
        services.generation.stop()


def test_launch_installs_openvino_on_cpu_machines_only():
    from webui.bootstrap import with_accelerator_extras

    assert with_accelerator_extras(("test",), "cpu") == ("test", "openvino")
    assert with_accelerator_extras(("test",), "cuda") == ("test",)


# -- the real OpenVINO -----------------------------------------------------------------------------------


def test_openvino_gives_torch_s_result_on_a_tiny_unet_and_reuses_the_conversion(pipe, tmp_path, caplog):
    pytest.importorskip("openvino")
    unet = pipe.unet
    x, t, context = _unet_inputs(unet, side=16)
    with torch.no_grad():
        expected = unet(x, t, encoder_hidden_states=context).sample
    options = SpeedOptions("off", cpu_engine="openvino")
    for round_ in ("converted", "stored"):
        state = set_up_engine(pipe, CPU, options, tmp_path)
        with caplog.at_level(logging.INFO), torch.no_grad():
            out = unet(x, t, encoder_hidden_states=context).sample
            small = unet(x[:1, :, :8, :8], t, encoder_hidden_states=context[:1, :5]).sample  # dynamic shapes
        assert state.engine == "openvino" and state.openvino_calls == 2 and state.precision == "f32", state.describe()
        assert (out - expected).abs().max() < 1e-4
        assert small.shape == (1, 4, 8, 8)
        assert ("stored IR found" in caplog.text) == (round_ == "stored")


def test_the_sdxl_export_takes_its_added_conditioning(fresh_tiny_pipe):
    pipe = fresh_tiny_pipe("sdxl")
    spec, why = ov_unet.unet_spec(pipe.unet)
    assert not why and spec.inputs[3:] == ("text_embeds", "time_ids")
    example = ov_unet.example_inputs(pipe.unet, spec, side=8)
    assert ov_unet.dynamic_shapes(spec, example)["time_ids"] == [-1, -1]  # the refiner passes 5 time ids
    traced = ov_unet.TracedUNet.build(pipe.unet, spec)
    with torch.no_grad():
        out = traced(*example.values())
        added = {"text_embeds": example["text_embeds"], "time_ids": example["time_ids"]}
        expected = pipe.unet(
            example["sample"], example["timestep"], example["encoder_hidden_states"], added_cond_kwargs=added
        ).sample
    assert torch.equal(out, expected)


def test_the_weights_fingerprint_reads_large_tensors_and_sees_changes():
    big = torch.nn.Linear(5431, 5431, bias=False)  # 29.5M values: float index arithmetic would overrun
    before = ov_unet.weights_fingerprint(big)
    with torch.no_grad():
        big.weight[-1, -1] += 1  # the last value is one of those sampled
    assert ov_unet.weights_fingerprint(big) != before


def test_the_model_signature_ignores_diffusers_bookkeeping(pipe):
    before = ov_unet.model_signature(pipe.unet)
    pipe.unet.register_to_config(_name_or_path="/elsewhere", _use_default_values=["b", "a"])
    assert ov_unet.model_signature(pipe.unet) == before
    pipe.unet.to(torch.bfloat16)
    assert ov_unet.model_signature(pipe.unet) != before  # the dtype is part of it


def test_the_store_keeps_the_most_recent_models_and_clears_crashed_conversions(tmp_path):
    import os

    store = IRStore(tmp_path, keep=2)
    for age, name in enumerate(["newest", "middle", "oldest", "crashed.tmp-123"]):
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (time.time() - 7200 * age, time.time() - 7200 * age))
    (tmp_path / "blobs").mkdir()
    assert store.trim() == ["oldest"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["middle", "newest"]


def test_a_released_compiled_model_is_compiled_again_from_the_stored_conversion_on_the_next_call(pipe, tmp_path):
    from webui.speed.ov_engine import release_compiled

    unet = pipe.unet
    x, t, context = _unet_inputs(unet)
    fake = FakeOpenVino(unet)
    _attach(unet, fake, tmp_path)
    assert not release_compiled(unet)  # nothing compiled yet
    with torch.no_grad():
        unet(x, t, encoder_hidden_states=context)
    assert (fake.exports, fake.compiles) == (1, 1)
    assert release_compiled(unet)  # parked in the RAM cache: the compiled copy goes
    with torch.no_grad():
        unet(x, t, encoder_hidden_states=context)
    assert (fake.exports, fake.compiles, fake.calls) == (1, 2, 2)  # compiled again, not converted again
