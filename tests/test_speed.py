"""Speed paths: precision choice, layout, attention, compile fallback, guarded VAE decode, prompt cache,
and the quality guard: every fast path on the tiny models stays close to the fp32 image.

Tolerances (pixel values 0-255, 6 Euler steps at 64x64, tiny random-weight models of each family):
bf16 anywhere: mean |diff| <= 3 and 99th percentile <= 12 (measured: mean 0.8-1.5, p99 3-7);
fp16 denoiser with an fp32 VAE (the GPU path): mean <= 1, p99 <= 4; fp32 channels_last: mean <= 0.1,
max <= 2 (other conv kernels, same maths); the guarded decode and the prompt cache: identical images.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
import torch

from webui.families.registry import default_families
from webui.generation.conditioning import encode_prompts
from webui.models.devices import DeviceChoice, DeviceError, resolve_device
from webui.speed.compile import compile_denoiser, regions_of, uncompile_denoiser
from webui.speed.cpu_features import CpuFeatures, detect_cpu_features
from webui.speed.layout import apply_layout, decide_channels_last, describe_layout, time_resnet
from webui.speed.optimize import SpeedOptions, SpeedTuner
from webui.speed.probe import ProbeResult, probe_cpu_bf16
from webui.speed.prompt_cache import PromptCache, PromptKey
from webui.speed.vae_guard import (
    NonFiniteLatentsError,
    VaeDecodeError,
    decode_latents,
    decode_tensor,
    decodes_in_fp32,
)

FAMILIES = ("sd15", "sdxl", "sd3")
STEPS, SIZE, PROMPT, NEGATIVE = 6, 64, "a red fox in the snow", "blurry"
BF16_TOL = (3.0, 12.0)  # (mean, p99)
FP16_TOL = (1.0, 4.0)

# --- the precision choice -------------------------------------------------------------------------

AMX = CpuFeatures("Xeon", frozenset({"amx_bf16", "amx_tile", "avx512_bf16", "avx512f"}))
AVX512_BF16 = CpuFeatures("Xeon", frozenset({"avx512_bf16", "avx512f"}))
PLAIN = CpuFeatures("Core", frozenset({"avx2"}))
FAST, SLOW = ProbeResult(10.0, 5.0), ProbeResult(10.0, 17.0)


def _resolve(device, precision, *, cuda=False, bf16=False, features=PLAIN, probe=SLOW, probed=None):
    def cpu_probe(f):
        if probed is not None:
            probed.append(f)
        return probe

    return resolve_device(
        device,
        precision,
        cuda_available=lambda: cuda,
        mps_available=lambda: device == "mps",
        cuda_bf16=lambda: bf16,
        cpu_features=lambda: features,
        cpu_probe=cpu_probe,
    )


@pytest.mark.parametrize(
    ("device", "precision", "kw", "expected"),
    [
        ("auto", "auto", {"cuda": True, "bf16": True}, ("cuda", "bf16")),
        ("auto", "auto", {"cuda": True, "bf16": False}, ("cuda", "fp16")),
        ("mps", "auto", {}, ("mps", "fp16")),
        ("cpu", "auto", {"features": AMX}, ("cpu", "bf16")),
        ("cpu", "auto", {"features": AVX512_BF16, "probe": FAST}, ("cpu", "bf16")),
        ("cpu", "auto", {"features": AVX512_BF16, "probe": SLOW}, ("cpu", "fp32")),
        ("cpu", "auto", {"features": PLAIN}, ("cpu", "fp32")),
        ("cpu", "bf16", {"features": PLAIN}, ("cpu", "bf16")),  # the user's choice wins
        ("cpu", "fp32", {"features": AMX}, ("cpu", "fp32")),
        ("auto", "fp16", {"cuda": True, "bf16": True}, ("cuda", "fp16")),
    ],
)
def test_precision_choice(device, precision, kw, expected):
    choice = _resolve(device, precision, **kw)
    assert (choice.device, choice.precision) == expected
    assert choice.reason


def test_amx_needs_no_measurement_and_avx512_bf16_is_measured():
    probed: list = []
    _resolve("cpu", "auto", features=AMX, probed=probed)
    assert probed == []
    choice = _resolve("cpu", "auto", features=AVX512_BF16, probe=SLOW, probed=probed)
    assert probed == [AVX512_BF16]
    assert "measured" in choice.reason and "AVX-512 BF16" in choice.describe()


def test_fp16_on_cpu_and_unknown_values_raise():
    with pytest.raises(DeviceError, match="bf16 or fp32"):
        _resolve("cpu", "fp16")
    with pytest.raises(DeviceError, match="VAE precision"):
        resolve_device("cpu", "fp32", vae_precision="fp8")


@pytest.mark.parametrize(
    ("precision", "vae_precision", "force_upcast", "expected"),
    [
        ("fp16", "auto", True, "fp32"),  # SDXL's VAE overflows in fp16
        ("fp16", "auto", False, "fp16"),
        ("bf16", "auto", True, "bf16"),  # bf16 has fp32's range
        ("bf16", "fp32", False, "fp32"),
        ("fp32", "auto", False, "fp32"),
    ],
)
def test_vae_precision(precision, vae_precision, force_upcast, expected):
    choice = DeviceChoice("cuda", precision, "test", vae_precision)
    assert choice.vae_precision_for({"force_upcast": force_upcast}) == expected
    assert f"VAE {expected}" in choice.describe({"force_upcast": force_upcast})


def test_cpu_features_from_proc_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("model name\t: Test Xeon\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n")
    found = detect_cpu_features(torch_caps=lambda: None, cpuinfo=info)
    assert found.name == "Test Xeon" and found.bf16_hardware == "amx"
    info.write_text("model name\t: Old\nflags\t\t: fpu avx2\n")
    assert detect_cpu_features(torch_caps=lambda: None, cpuinfo=info).bf16_hardware is None
    hidden = detect_cpu_features(torch_caps=lambda: ("x", {"avx512_bf16"}), cpuinfo=tmp_path / "missing")
    assert hidden.bf16_hardware == "avx512_bf16"


def test_probe_is_measured_once_per_machine(tmp_path):
    calls = []

    def measure():
        calls.append(1)
        return 12.0, 4.0

    cache = tmp_path / "probe.json"
    first = probe_cpu_bf16("cpu", frozenset({"avx512_bf16"}), cache, measure)
    again = probe_cpu_bf16("cpu", frozenset({"avx512_bf16"}), cache, measure)
    assert len(calls) == 1 and again.from_cache and again.speedup == first.speedup == 3.0
    probe_cpu_bf16("other cpu", frozenset(), cache, measure)
    assert len(calls) == 2
    cache.write_text("{not json")
    assert probe_cpu_bf16("cpu", frozenset({"avx512_bf16"}), cache, measure).bf16_faster
    assert len(calls) == 3


# --- generation helpers ---------------------------------------------------------------------------


def _generate(pipe, family, *, cond=None, seed=1):
    """The engine's path: our conditioning, the pipeline's loop to latents, the guarded decode."""
    pipe.set_progress_bar_config(disable=True)
    if cond is None:
        cond = encode_prompts(pipe, default_families().get(family), [PROMPT], [NEGATIVE])
    gen = torch.Generator().manual_seed(seed)
    latents = pipe(
        **cond, num_inference_steps=STEPS, height=SIZE, width=SIZE, generator=gen, output_type="latent"
    ).images
    return np.asarray(decode_latents(pipe, latents)[0]).astype(np.float64)


def _assert_close(image, reference, mean_tol, p99_tol):
    diff = np.abs(image - reference)
    stats = f"mean {diff.mean():.2f}, p99 {np.percentile(diff, 99):.1f}, max {diff.max():.0f}"
    assert diff.mean() <= mean_tol and np.percentile(diff, 99) <= p99_tol, stats


_PRISTINE: dict = {}  # family -> tiny pipeline, built once per test module (see the fixture below)


@pytest.fixture(scope="module", autouse=True)
def _pristine_pipes():
    yield _PRISTINE
    _PRISTINE.clear()


def _tiny(family, dtype=torch.float32):
    """A private copy of the family's tiny pipeline (tokenizers shared), in ``dtype``."""
    import copy

    from webui.models.demo import build_tiny_pipeline

    if family not in _PRISTINE:
        _PRISTINE[family] = build_tiny_pipeline(family)
    pipe = _PRISTINE[family]
    shared = {id(v): v for k, v in pipe.components.items() if k.startswith("tokenizer") and v is not None}
    return copy.deepcopy(pipe, shared).to(dtype=dtype)


@pytest.fixture(scope="module")
def references():
    """fp32 image of each family."""
    return {family: _generate(_tiny(family), family) for family in FAMILIES}


# --- quality guard --------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_guarded_decode_is_exactly_the_pipelines_decode(family):
    pipe = _tiny(family)
    pipe.set_progress_bar_config(disable=True)
    run = {"prompt": PROMPT, "num_inference_steps": 2, "height": SIZE, "width": SIZE}
    own = pipe(**run, generator=torch.Generator().manual_seed(3)).images[0]
    latents = pipe(**run, generator=torch.Generator().manual_seed(3), output_type="latent").images
    assert np.array_equal(np.asarray(decode_latents(pipe, latents)[0]), np.asarray(own))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["bf16", "bf16+channels_last"])
def test_bf16_stays_close_to_fp32(references, family, channels_last):
    pipe = _tiny(family, torch.bfloat16)
    apply_layout(pipe, channels_last)
    _assert_close(_generate(pipe, family), references[family], *BF16_TOL)


@pytest.mark.parametrize("family", FAMILIES)
def test_fp32_channels_last_is_the_same_image(references, family):
    pipe = _tiny(family)
    assert apply_layout(pipe, True) == (["unet", "vae"] if family != "sd3" else ["vae"])
    _assert_close(_generate(pipe, family), references[family], 0.1, 2.0)


@pytest.mark.parametrize("family", FAMILIES)
def test_fp16_with_the_vae_the_gpu_path_gives_stays_close(references, family):
    pipe = _tiny(family, torch.float16)
    report = SpeedTuner(DeviceChoice("cpu", "fp16", "test"), SpeedOptions(channels_last="off")).apply(pipe, family)
    # every tiny VAE says force_upcast (diffusers' default, as the released SD1.5/SDXL/SD3 VAE configs)
    assert report.vae == "VAE decodes in fp32 (this VAE overflows in fp16; weights kept in fp16)"
    _assert_close(_generate(pipe, family), references[family], *FP16_TOL)
    assert pipe.vae.dtype == torch.float16  # the pipelines' own img2img encode casts its input to fp16


def test_vae_precision_setting_decodes_bf16_vae_in_fp32(references):
    pipe = _tiny("sd15", torch.bfloat16)
    report = SpeedTuner(DeviceChoice("cpu", "bf16", "test", vae_precision="fp32"), SpeedOptions("off")).apply(
        pipe, "sd15"
    )
    assert "VAE precision setting" in report.vae
    _assert_close(_generate(pipe, "sd15"), references["sd15"], *BF16_TOL)
    assert pipe.vae.dtype == torch.bfloat16


def test_img2img_with_the_pipelines_own_encode_still_works_after_tuning():
    from diffusers import StableDiffusionImg2ImgPipeline
    from PIL import Image

    pipe = _tiny("sd15", torch.float16)
    SpeedTuner(DeviceChoice("cpu", "fp16", "test"), SpeedOptions("off")).apply(pipe, "sd15")
    i2i = StableDiffusionImg2ImgPipeline(**pipe.components)
    i2i.set_progress_bar_config(disable=True)
    latents = i2i(PROMPT, image=Image.new("RGB", (SIZE, SIZE), "red"), num_inference_steps=2, output_type="latent")
    assert torch.isfinite(decode_tensor(pipe.vae, latents.images)).all()


def test_the_automatic_choice_stays_close_on_this_machine(references, tmp_path):
    """Whatever --precision auto picks here (with the real probe and layout measurement)."""
    choice = resolve_device("cpu", "auto", probe_cache=tmp_path / "probe.json")
    for family in FAMILIES:
        pipe = _tiny(family, choice.dtype)
        SpeedTuner(choice).apply(pipe, family)
        tol = BF16_TOL if choice.precision == "bf16" else (0.1, 2.0)
        _assert_close(_generate(pipe, family), references[family], *tol)


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_cache_gives_the_same_image_without_encoding_again(references, family):
    pipe, cache, spec = _tiny(family), PromptCache(), default_families().get(family)
    calls = []
    pipe.text_encoder.register_forward_hook(lambda *a: calls.append(1))

    def cond():
        key = PromptKey.of(pipe, ("model", ()), PROMPT, NEGATIVE)
        return cache.get_or_encode(pipe, key, lambda: encode_prompts(pipe, spec, [PROMPT], [NEGATIVE]))

    first = _generate(pipe, family, cond=cond())
    encoded = len(calls)
    second = _generate(pipe, family, cond=cond())
    assert len(calls) == encoded and cache.hits == 1
    assert np.array_equal(first, references[family]) and np.array_equal(second, first)


# --- prompt cache ---------------------------------------------------------------------------------


class _Pipe:
    def __init__(self):
        self.text_encoder = torch.nn.Linear(1, 1)
        self.text_encoder_2 = None
        self.text_encoder_3 = None


def _key(pipe, prompt="p", **kw):
    return PromptKey.of(pipe, kw.pop("state", "m"), prompt, kw.pop("negative", ""), **kw)


def test_prompt_cache_keys_and_lru():
    pipe, cache, calls = _Pipe(), PromptCache(size=2), []

    def encode(tag):
        return lambda: (calls.append(tag), {"prompt_embeds": torch.tensor([float(len(calls))])})[1]

    a = cache.get_or_encode(pipe, _key(pipe, "a"), encode("a"))
    assert torch.equal(cache.get_or_encode(pipe, _key(pipe, "a"), encode("a"))["prompt_embeds"], a["prompt_embeds"])
    for variant in ({"clip_skip": 2}, {"batch": 2}, {"use_t5": False}, {"state": "lora"}, {"negative": "n"}):
        cache.get_or_encode(pipe, _key(pipe, "a", **variant), encode(str(variant)))
    assert len(calls) == 6 and len(cache) == 2  # every key part matters; only the 2 newest are kept
    cache.get_or_encode(pipe, _key(pipe, "a"), encode("a"))
    assert len(calls) == 7  # "a" was evicted


def test_prompt_cache_hits_are_copies_and_need_the_same_encoder():
    pipe, cache = _Pipe(), PromptCache()
    first = cache.get_or_encode(pipe, _key(pipe), lambda: {"prompt_embeds": torch.zeros(2)})
    first["prompt_embeds"].add_(5)
    assert torch.equal(cache.get_or_encode(pipe, _key(pipe), dict)["prompt_embeds"], torch.zeros(2))
    key = _key(pipe)
    pipe.text_encoder = torch.nn.Linear(1, 1)  # a reloaded model: even a reused key must miss
    again = cache.get_or_encode(pipe, key, lambda: {"prompt_embeds": torch.ones(2)})
    assert torch.equal(again["prompt_embeds"], torch.ones(2))
    off = PromptCache(size=0)
    off.get_or_encode(pipe, key, lambda: {"x": 1})
    assert len(off) == 0
    with pytest.raises(ValueError, match="0 \\(off\\) or more"):
        PromptCache(size=-1)


# --- guarded decode -------------------------------------------------------------------------------


def _latents(channels=4, seed=0):
    return torch.randn(1, channels, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_force_upcast_vae_decodes_in_fp32_and_stays_fp16(capfd):
    pipe = _tiny("sdxl")
    pipe.vae.to(torch.float16)
    expected = decode_tensor(_tiny("sdxl").vae.to(torch.float16).to(torch.float32), _latents())
    capfd.readouterr()
    got = decode_tensor(pipe.vae, _latents().half())
    assert capfd.readouterr().err == ""  # nothing logged per image (diffusers warns on every to(dtype=...))
    assert pipe.vae.dtype == torch.float16 and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-3)  # latents were rounded to fp16


def test_nan_in_reduced_precision_is_decoded_again_in_fp32(caplog):
    pipe = _tiny("sd15")
    pipe.vae.register_to_config(force_upcast=False)  # a VAE that claims to be fp16-safe, wrongly
    with torch.no_grad():
        pipe.vae.post_quant_conv.weight.mul_(1e4)  # overflows fp16 (max 65504), fine in fp32
    reference = decode_tensor(pipe.vae, _latents())
    pipe.vae.to(torch.float16)
    with torch.no_grad():
        raw = pipe.vae.decode(_latents().half() / pipe.vae.config.scaling_factor).sample
    assert not torch.isfinite(raw).all()  # the unguarded fp16 decode is broken
    with caplog.at_level(logging.WARNING, logger="webui.speed.vae_guard"):
        got = decode_tensor(pipe.vae, _latents().half())
        again = decode_tensor(pipe.vae, _latents().half())
    assert torch.isfinite(got).all() and "fp32" in caplog.text
    assert caplog.text.count("NaN") == 1  # the second decode went straight to fp32
    assert pipe.vae.dtype == torch.float16 and decodes_in_fp32(pipe.vae)
    torch.testing.assert_close(got, reference, rtol=0, atol=2e-2)
    torch.testing.assert_close(again, got)


def test_nan_latents_or_a_broken_vae_raise_an_actionable_error():
    pipe = _tiny("sd15")
    bad = _latents()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLatentsError, match="--precision fp32"):
        decode_tensor(pipe.vae, bad)
    with torch.no_grad():
        pipe.vae.post_quant_conv.bias[0] = float("nan")
    with pytest.raises(VaeDecodeError, match="another VAE"):
        decode_tensor(pipe.vae, _latents())


# --- layout, attention, compile, tuner ---------------------------------------------------------------


def test_layout_choice_follows_the_measurement_per_module():
    pipe = _tiny("sd15")
    both = decide_channels_last(pipe, "auto", lambda block, **kw: (10.0, 8.0))
    assert both["unet"].channels_last and both["vae"].channels_last
    neither = decide_channels_last(pipe, "auto", lambda block, **kw: (10.0, 9.9))
    assert not neither["unet"].channels_last and not neither["vae"].channels_last
    # the VAE decoder block is timed at a decode-sized input: larger than the UNet's
    sizes = {}

    def vae_only(block, size, batch):
        sizes[size] = batch
        return (10.0, 5.0) if size >= 128 else (10.0, 12.0)

    mixed = decide_channels_last(pipe, "auto", vae_only)
    assert sizes == {32: 2, 128: 1}
    assert not mixed["unet"].channels_last and mixed["vae"].channels_last
    assert describe_layout(mixed) == (
        "channels_last: unet not faster (measured 12.0 vs 10.0 ms per UNet ResNet block),"
        " vae faster (measured 5.0 vs 10.0 ms per VAE decoder block)"
    )
    on = decide_channels_last(pipe, "on")
    assert all(d.channels_last for d in on.values()) and describe_layout(on) == "channels_last on (setting)"
    assert not any(d.channels_last for d in decide_channels_last(pipe, "off").values())
    sd3 = decide_channels_last(_tiny("sd3"), "auto", lambda block, **kw: (10.0, 5.0))
    assert list(sd3) == ["vae"]  # no UNet: only the VAE has convolutions
    with pytest.raises(ValueError, match="auto, on, off"):
        decide_channels_last(pipe, "maybe")


def test_tuner_applies_each_modules_own_layout():
    def vae_only(block, size, batch):
        return (10.0, 5.0) if size >= 128 else (10.0, 12.0)

    pipe = _tiny("sd15")
    report = SpeedTuner(DeviceChoice("cpu", "fp32", "test"), measure_layout=vae_only).apply(pipe, "sd15")
    assert "unet not faster" in report.layout and "vae faster" in report.layout
    assert pipe.unet.conv_in.weight.is_contiguous()
    assert pipe.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


def test_resnet_timing_leaves_the_block_as_it_was():
    from webui.speed.layout import _first_resnet

    block = _first_resnet(_tiny("sd15").unet)
    plain, last = time_resnet(block, size=8, batch=1, rounds=1)
    assert plain > 0 and last > 0
    assert all(p.is_contiguous() for p in block.parameters())


def test_tuner_measures_layout_once_per_family_and_applies_it():
    measured = []
    tuner = SpeedTuner(
        DeviceChoice("cpu", "fp32", "test"), measure_layout=lambda block, **kw: (measured.append(1), (10.0, 5.0))[1]
    )
    for _ in range(2):
        pipe = _tiny("sd15")
        report = tuner.apply(pipe, "sd15")
        assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert len(measured) == 2 and "faster" in report.layout and "SDPA" in report.attention  # UNet and VAE, once
    offloaded = SpeedTuner(DeviceChoice("cpu", "fp32", "test")).apply(_tiny("sd15"), "sd15", manages_placement=True)
    assert "not used: an offload mode" in offloaded.layout


def test_attention_choice_on_cuda_follows_the_measurement():
    from webui.speed.attention import choose_attention

    class Pipe:
        enabled = False

        def enable_xformers_memory_efficient_attention(self):
            self.enabled = True

    fast, slow = Pipe(), Pipe()
    assert "xformers" in choose_attention(
        fast, "cuda", None, xformers_installed=lambda: True, measure=lambda d, t: (2.0, 1.0)
    )
    assert fast.enabled
    assert "SDPA" in choose_attention(
        slow, "cuda", None, xformers_installed=lambda: True, measure=lambda d, t: (1.0, 1.0)
    )
    assert not slow.enabled
    assert "not installed" in choose_attention(slow, "cuda", None, xformers_installed=lambda: False)


def _failing_compile(fn, **kw):
    def compiled(*a, **k):
        raise RuntimeError("inductor: no C++ compiler")

    return compiled


def test_compile_regions_are_the_repeated_blocks():
    unet, mmdit = _tiny("sd15").unet, _tiny("sd3").transformer
    assert {type(m).__name__ for m in regions_of(unet)} == {"BasicTransformerBlock"}
    assert regions_of(mmdit) == list(mmdit.transformer_blocks)


@pytest.mark.parametrize("family", ["sd15", "sd3"])
def test_failed_compile_falls_back_to_the_same_image(references, family, caplog):
    pipe = _tiny(family)
    state = compile_denoiser(pipe, compile_fn=_failing_compile)
    assert state.regions and not state.failed
    with caplog.at_level(logging.WARNING, logger="webui.speed.compile"):
        image = _generate(pipe, family)
    assert "no C++ compiler" in state.failed and "without compilation" in caplog.text
    assert np.array_equal(image, references[family])
    assert all("forward" not in m.__dict__ for m, _ in state.regions)  # eager forwards restored


def test_compile_that_cannot_start_leaves_the_model_eager_and_uncompile_restores():
    def refuse(fn, **kw):
        raise RuntimeError("Dynamo is not supported on this Python")

    pipe = _tiny("sd15")
    assert "not supported" in compile_denoiser(pipe, compile_fn=refuse).failed
    assert all("forward" not in m.__dict__ for m in pipe.unet.modules())
    other = _tiny("sd15")
    state = compile_denoiser(other, compile_fn=lambda fn, **kw: fn)
    assert all("forward" in m.__dict__ for m, _ in state.regions)
    uncompile_denoiser(other)
    assert all("forward" not in m.__dict__ for m in other.unet.modules())


def test_errors_that_eager_mode_raises_too_are_raised():
    pipe = _tiny("sd15")
    state = compile_denoiser(pipe, compile_fn=_failing_compile)
    with pytest.raises(RuntimeError, match="size|shape|match"):
        pipe.unet(torch.zeros(1, 4, 8, 8), 1, torch.zeros(1, 77, 5))  # wrong text width: a real error
    assert not state.failed and all("forward" in m.__dict__ for m, _ in state.regions)


def test_tuner_reports_compile_state():
    tuner = SpeedTuner(
        DeviceChoice("cpu", "fp32", "test"), SpeedOptions("off", compile=True), compile_fn=lambda f, **k: f
    )
    assert "region" in tuner.apply(_tiny("sd15"), "sd15").compiled
    with pytest.raises(ValueError, match="channels_last"):
        SpeedOptions(channels_last="yes")


def test_timing_takes_turns_warms_up_once_and_keeps_the_best_round():
    from webui.speed.timing import best_ms

    order, costs = [], {"a": iter([0.05, 0.02, 0.01]), "b": iter([0.05, 0.002, 0.004])}

    def run(key):
        def call():
            order.append(key)
            time.sleep(next(costs[key]))

        return call

    slow_setup = []
    ms = best_ms({"a": run("a"), "b": run("b")}, 2, before=lambda key: (slow_setup.append(key), time.sleep(0.03)))
    assert order == ["a", "b"] * 3 and slow_setup == order  # interleaved; setup before every run
    assert 10 <= ms["a"] < 20 and 2 <= ms["b"] < 4  # the 50 ms warm-up and the 30 ms setups are not counted
