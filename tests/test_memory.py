"""Memory modes, the planner and applying plans to the tiny models of each family.

Images are compared as the pipeline's float output (``output_type="np"``, values in [0, 1]):
- model CPU offload and group offload: **bit-identical** to no mode;
- VAE slicing and attention slicing: ``allclose(atol=1e-5)`` (other kernels sum in another
  order; measured max difference 4.5e-6, far below one 8-bit level, 1/255 = 3.9e-3);
- fp8 weights and VAE tiling (with 32 px tiles so a 64 px image is tiled) declare
  ``changes_image`` and do change it.
GPU tests (marker ``gpu``) run only where CUDA is available.
"""

from __future__ import annotations

import numpy as np
import pytest

from webui.memory.apply import (
    IN_PLACE,
    REBUILD,
    apply_plan,
    change_plan,
    execution_device,
    rebuild_reasons,
    refresh_after_swap,
    share_offload_state,
    undo_plan,
    update_plan,
)
from webui.memory.modes import (
    BuiltinMemoryModes,
    MemoryMode,
    MemoryModeError,
    MemoryModeRegistry,
    builtin_memory_modes,
    register_builtin_modes,
)
from webui.memory.planner import (
    GIB,
    NO_PLAN,
    PlanError,
    auto_plan,
    escalate,
    is_out_of_memory,
    next_stronger,
    oom_message,
    plan,
)

FAMILIES = ("sd15", "sdxl", "sd3")
SAME_EXACT = ("model_cpu_offload", "group_offload")
SAME_CLOSE = ("vae_slicing", "attention_slicing")
CHANGES = ("fp8_weights", "vae_tiling")
SMALL_TILES = {"vae_tile_px": 32}  # a 64x64 image (8x8 latents) is then decoded in 4x4-latent tiles


@pytest.fixture
def registry() -> MemoryModeRegistry:
    reg = MemoryModeRegistry()
    register_builtin_modes(reg)
    return reg


def render(pipe, n: int = 2, seed: int = 1) -> np.ndarray:
    import torch

    pipe.set_progress_bar_config(disable=True)
    gens = [torch.Generator().manual_seed(seed + i) for i in range(n)]
    out = pipe(
        prompt=["a red cat"] * n,
        num_inference_steps=2,
        height=64,
        width=64,
        guidance_scale=5.0,
        generator=gens,
        output_type="np",
    )
    return out.images


@pytest.fixture(scope="module")
def baselines():
    """Reference images of each tiny family with no memory mode (built once per module)."""
    from webui.models.demo import build_tiny_pipeline

    return {family: render(build_tiny_pipeline(family)) for family in FAMILIES}


# --- registry and validation -------------------------------------------------------------------


def test_builtins_register_through_the_hook_like_an_extension():
    import pluggy

    from webui.hooks import PROJECT, HookSpecs

    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(HookSpecs)
    pm.register(BuiltinMemoryModes(), "memory-modes")  # validated against the real spec
    reg = MemoryModeRegistry()
    pm.hook.webui_register_memory_modes(registry=reg, options={})
    assert reg.names() == [m.name for m in builtin_memory_modes()]
    expected = {"drop_t5", "model_cpu_offload", "sequential_cpu_offload", "vae_tiling", "vae_slicing"}
    assert expected | {"attention_slicing", "xformers", "fp8_weights", "group_offload"} == set(reg.names())


def test_duplicate_and_mismatched_names_are_refused(registry):
    with pytest.raises(MemoryModeError, match="already registered"):
        registry.register(builtin_memory_modes()[0])
    with pytest.raises(MemoryModeError, match="named 'drop_t5'"):
        MemoryModeRegistry().register("other", builtin_memory_modes()[0])


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"phase": "later"}, "phase 'later'"),
        ({"apply": lambda pipe: None}, r"apply must be a function \(pipe, ctx\)"),
        ({"undo": "nope"}, "undo must be"),
        ({"changes_image": True, "image_note": ""}, "must say how"),
        ({"name": "Bad Name"}, "lower_case"),
        ({"name": "auto"}, "reserved"),
        ({"strength": -1}, "strength"),
        ({"conflicts": {"mine": "x"}}, "itself"),
    ],
)
def test_invalid_modes_are_refused_with_their_name(changes, message):
    fields = {"name": "mine", "label": "Mine", "description": "d", "apply": lambda pipe, ctx: None}
    fields.update(changes)
    with pytest.raises(MemoryModeError, match=message):
        MemoryModeRegistry().register(MemoryMode(**fields))


def test_an_extension_mode_registers_and_plans(registry):
    mode = MemoryMode(name="my_mode", label="Mine", description="d", apply=lambda pipe, ctx: "done", phase="vae")
    registry.register(mode)
    assert plan(["my_mode", "vae_tiling"], registry, "sd15", "cpu").names == (
        "my_mode",
        "vae_tiling",
    )  # phase, then strength


# --- plan ----------------------------------------------------------------------------------------


def test_unknown_mode_lists_the_valid_ones(registry):
    with pytest.raises(PlanError, match="unknown memory mode 'turbo'; valid: drop_t5, fp8_weights"):
        plan(["turbo"], registry, "sd15", "cpu")


@pytest.mark.parametrize(
    "names, device, reason",
    [
        (["model_cpu_offload", "sequential_cpu_offload"], "cuda", "both decide where the weights live; pick one"),
        (["group_offload", "model_cpu_offload"], "cpu", "'Group offload' and 'Model CPU offload' cannot be combined"),
        (["attention_slicing", "my_xformers"], "cuda", "both replace the attention code"),
    ],
)
def test_conflicts_are_refused_with_the_reason(registry, names, device, reason):
    xformers = next(m for m in builtin_memory_modes() if m.name == "xformers")
    registry.register(
        MemoryMode(
            name="my_xformers",
            label="x",
            description="d",
            apply=xformers.apply,
            phase="attention",
            conflicts={"attention_slicing": "xformers and attention slicing both replace the attention code"},
        )
    )
    with pytest.raises(PlanError, match=reason):
        plan(names, registry, "sdxl", device)


def test_sequential_offload_is_refused_on_cpu_with_a_clear_message(registry):
    with pytest.raises(
        PlanError, match="'Sequential CPU offload' needs a CUDA device.*computes on cpu.*Settings > Memory"
    ):
        plan(["sequential_cpu_offload"], registry, "sdxl", "cpu")
    assert registry.get("sequential_cpu_offload").requires_cuda
    assert plan(["sequential_cpu_offload"], registry, "sdxl", "cuda").names == ("sequential_cpu_offload",)


@pytest.mark.parametrize(
    "name, family, device, note",
    [
        ("drop_t5", "sd15", "cpu", "'Drop T5 (SD3)' skipped: it applies to sd3, sd35_medium, sd35_large models"),
        ("attention_slicing", "sd3", "cpu", "'Attention slicing' skipped"),
        ("xformers", "sdxl", "cpu", "not available on cpu: PyTorch's SDPA attention is already used"),
    ],
)
def test_modes_for_other_families_or_unavailable_are_skipped_with_a_note(registry, name, family, device, note):
    result = plan([name], registry, family, device)
    assert result.modes == ()
    assert any(note in n for n in result.notes), result.notes


def test_plan_orders_dedupes_and_reads_a_comma_list(registry):
    result = plan("model_cpu_offload, vae_tiling,fp8_weights,vae_tiling, none", registry, "sdxl", "cpu")
    assert result.names == ("fp8_weights", "vae_tiling", "model_cpu_offload")
    assert result.manages_placement and result.load_device("cuda") == "cpu"
    assert plan(["vae_tiling"], registry, "sdxl", "cuda").load_device("cuda") == "cuda"
    assert not result.manages_attention and plan(["attention_slicing"], registry, "sdxl", "cpu").manages_attention
    assert result.changes_image and len(result.image_notes) == 2
    assert plan(["drop_t5"], registry, "sd3", "cpu").load_kwargs == {"text_encoder_3": None, "tokenizer_3": None}
    with pytest.raises(PlanError, match="auto_plan"):
        plan(["auto"], registry, "sdxl", "cpu")


# --- auto plan -----------------------------------------------------------------------------------

GB = 10**9


@pytest.mark.parametrize(
    "free, weights, family, device, t5, expected",
    [
        (24 * GIB, 2.1 * GB, "sd15", "cuda", 0, ()),  # fits with margin (<= 50%)
        (3.5 * GIB, 2.1 * GB, "sd15", "cuda", 0, ("vae_slicing", "vae_tiling")),  # tight (50%..70%)
        (8 * GIB, 6.9 * GB, "sdxl", "cuda", 0, ("vae_slicing", "vae_tiling", "model_cpu_offload")),
        (6 * GIB, 6.9 * GB, "sdxl", "cuda", 0, ("vae_slicing", "vae_tiling", "group_offload")),  # UNet > 70% free
        (3 * GIB, 6.9 * GB, "sdxl", "cuda", 0, ("vae_slicing", "vae_tiling", "group_offload")),
        (1.5 * GIB, 6.9 * GB, "sdxl", "cuda", 0, ("vae_slicing", "vae_tiling", "sequential_cpu_offload")),
        (24 * GIB, 15.4 * GB, "sd3", "cuda", 9.5 * GB, ("vae_slicing", "vae_tiling")),  # keeps T5
        (16 * GIB, 15.4 * GB, "sd3", "cuda", 9.5 * GB, ("vae_slicing", "vae_tiling", "model_cpu_offload")),
        (12 * GIB, 15.4 * GB, "sd3", "cuda", 9.5 * GB, ("drop_t5",)),  # T5 alone > 70% free
        (8 * GIB, 15.4 * GB, "sd3", "cuda", 9.5 * GB, ("drop_t5", "vae_slicing", "vae_tiling")),
        (6 * GIB, 15.4 * GB, "sd3", "cuda", 9.5 * GB, ("drop_t5", "vae_slicing", "vae_tiling", "group_offload")),
        (None, 6.9 * GB, "sdxl", "cpu", 0, ()),  # on CPU: nothing
        (2 * GIB, 6.9 * GB, "sdxl", "mps", 0, ()),
    ],
)
def test_auto_plan_table(registry, free, weights, family, device, t5, expected):
    # SD3: T5 (9.5 GB) is its largest model; elsewhere the planner assumes 80% of the weights
    largest = int(t5) or None
    result = auto_plan(
        int(free) if free else None, int(weights), family, device, registry, t5_bytes=int(t5), largest_bytes=largest
    )
    assert result.names == expected
    assert result.auto and result.notes[0].startswith("auto:")


# --- out of memory ----------------------------------------------------------------------------


def test_next_stronger_follows_the_strength_order(registry):
    order, current = [], NO_PLAN
    while (mode := next_stronger(current, registry, "sdxl", "cuda", batch_size=2)) is not None:
        order.append(mode.name)
        current = escalate(current, registry, "sdxl", "cuda", batch_size=2)
        assert mode.name in current.names
    expected = ["vae_slicing", "vae_tiling", "model_cpu_offload", "group_offload", "sequential_cpu_offload"]
    assert order == expected
    # the offload modes replaced each other; the VAE modes stayed
    assert current.names == ("vae_slicing", "vae_tiling", "sequential_cpu_offload")


@pytest.mark.parametrize(
    "family, device, batch, first",
    [
        ("sdxl", "cuda", 1, "vae_tiling"),  # slicing only splits batches
        ("sd15", "mps", 1, "vae_tiling"),
        ("sd3", "cuda", 2, "vae_slicing"),
    ],
)
def test_next_stronger_skips_modes_that_cannot_help(registry, family, device, batch, first):
    assert next_stronger(NO_PLAN, registry, family, device, batch_size=batch).name == first


def test_attention_slicing_is_a_step_only_where_it_helps(registry):
    tiled = plan(["vae_tiling"], registry, "sd15", "mps")
    assert next_stronger(tiled, registry, "sd15", "mps").name == "attention_slicing"
    assert next_stronger(tiled, registry, "sd15", "cuda").name == "model_cpu_offload"
    assert next_stronger(tiled, registry, "sd15", "cpu") is None  # offloads do nothing on the CPU


def test_oom_message_names_the_mode_that_would_help(registry):
    current = plan(["vae_tiling"], registry, "sdxl", "cuda")
    text = oom_message(current, registry, "sdxl", "cuda", width=1024, height=1024)
    assert text.startswith("Out of GPU memory at 1024x1024 (memory modes: VAE tiling).")
    assert "Turn on 'Model CPU offload' in Settings > Memory" in text
    assert "the app keeps running" in text
    last = plan(["vae_slicing", "vae_tiling", "sequential_cpu_offload"], registry, "sdxl", "cuda")
    assert "no stronger memory mode is left" in oom_message(last, registry, "sdxl", "cuda", batch_size=2)
    assert "differ slightly" in oom_message(NO_PLAN, registry, "sdxl", "cuda")  # tiling says it changes images


def test_is_out_of_memory():
    import torch

    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory"))
    assert not is_out_of_memory(ValueError("bad size"))


# --- change classification --------------------------------------------------------------------


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ([], ["vae_tiling", "vae_slicing", "attention_slicing"], IN_PLACE),
        (["vae_tiling", "attention_slicing"], [], IN_PLACE),
        ([], ["model_cpu_offload"], IN_PLACE),
        (["model_cpu_offload"], [], IN_PLACE),
        (["model_cpu_offload"], ["group_offload"], IN_PLACE),
        ([], ["group_offload", "fp8_weights"], IN_PLACE),
        (["model_cpu_offload"], ["model_cpu_offload", "fp8_weights"], IN_PLACE),  # offload re-installed
        (["group_offload"], ["group_offload", "vae_tiling"], IN_PLACE),
        (["group_offload"], [], REBUILD),
        (["group_offload"], ["group_offload", "fp8_weights"], REBUILD),  # fp8 must go under the offload
        (["fp8_weights"], [], REBUILD),
        ([], ["drop_t5"], REBUILD),  # load-time argument
        (["drop_t5"], [], REBUILD),
    ],
)
def test_change_plan_classification(registry, old, new, expected):
    a, b = plan(old, registry, "sd3", "cpu"), plan(new, registry, "sd3", "cpu")
    assert change_plan(a, b) == expected
    assert bool(rebuild_reasons(a, b)) == (expected == REBUILD)


# --- modes on the tiny models ------------------------------------------------------------------


def _cpu_modes(registry, family):
    return [n for n in registry.names() if n != "sequential_cpu_offload" and plan([n], registry, family, "cpu").modes]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_mode_applies_to_each_family_and_keeps_its_promise(registry, baselines, fresh_tiny_pipe, family):
    base = baselines[family]
    tried = []
    for name in _cpu_modes(registry, family):
        pipe = fresh_tiny_pipe(family)
        current = plan([name], registry, family, "cpu")
        apply_plan(pipe, current, "cpu", family=family, options=SMALL_TILES)
        image = render(pipe)
        mode = registry.get(name)
        tried.append(name)
        if name in SAME_EXACT:
            assert np.array_equal(image, base), name
        elif name in SAME_CLOSE:
            assert np.allclose(image, base, atol=1e-5, rtol=0), name
        elif name in CHANGES:
            assert mode.changes_image and mode.image_note
            assert not np.allclose(image, base, atol=1e-5, rtol=0), name
        elif name == "drop_t5":
            assert pipe.text_encoder_3 is None and pipe.tokenizer_3 is None
        assert image.shape == base.shape and np.isfinite(image).all()
    expected = {"fp8_weights", "vae_slicing", "vae_tiling", "model_cpu_offload", "group_offload"}
    expected |= {"drop_t5"} if family == "sd3" else {"attention_slicing"}
    assert set(tried) == expected


@pytest.mark.parametrize("family, share", [("sd15", 0.26), ("sd3", 0.56)])
def test_fp8_shrinks_the_stored_weights(registry, fresh_tiny_pipe, family, share):
    from webui.memory.apply import pipeline_bytes

    pipe = fresh_tiny_pipe(family)
    name = "unet" if family == "sd15" else "transformer"
    before = pipeline_bytes(pipe)[name]
    apply_plan(pipe, plan(["fp8_weights"], registry, family, "cpu"), "cpu")
    # fp32 -> 1 byte per weight; the tiny MMDiT's skipped position embedding is a large share of it
    assert pipeline_bytes(pipe)[name] < share * before


def test_group_offload_keeps_the_vae_whole(registry, fresh_tiny_pipe):
    # SDXL upcasts its fp16 VAE to fp32 to decode; group hooks would copy the fp16 weights back
    pipe = fresh_tiny_pipe("sdxl")
    apply_plan(pipe, plan(["group_offload"], registry, "sdxl", "cpu"), "cpu")

    def hooked(module):
        return any(hasattr(m, "_diffusers_hook") for m in module.modules())

    assert hooked(pipe.unet) and hooked(pipe.text_encoder) and not hooked(pipe.vae)


def test_fp8_keeps_t5_usable(registry, fresh_tiny_pipe):
    import torch

    pipe = fresh_tiny_pipe("sd3")
    apply_plan(pipe, plan(["fp8_weights"], registry, "sd3", "cpu"), "cpu")
    t5 = pipe.text_encoder_3
    assert t5.encoder.block[0].layer[0].SelfAttention.q.weight.dtype == torch.float8_e4m3fn
    # transformers reads T5's dtype from its first weight (the embedding): it must stay the compute dtype
    assert t5.dtype == torch.float32 and t5.shared.weight.dtype == torch.float32
    assert np.isfinite(render(pipe, n=1)).all()  # diffusers' own T5 path runs too


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_undo_restores_the_same_image(registry, baselines, fresh_tiny_pipe, family):
    names = ["attention_slicing", "vae_slicing", "vae_tiling", "model_cpu_offload"]
    pipe = fresh_tiny_pipe(family)
    current = plan(names, registry, family, "cpu")
    apply_plan(pipe, current, "cpu", options=SMALL_TILES)
    assert not np.array_equal(render(pipe), baselines[family])  # the small tiles changed it
    undo_plan(pipe, current, "cpu")
    assert np.array_equal(render(pipe), baselines[family])
    assert not pipe.vae.use_tiling and pipe.vae.tile_sample_min_size == pipe.vae.config.sample_size


def test_undo_refuses_modes_that_cannot_be_undone(registry, fresh_tiny_pipe):
    pipe = fresh_tiny_pipe("sd15")
    current = plan(["vae_tiling", "fp8_weights"], registry, "sd15", "cpu")
    apply_plan(pipe, current, "cpu")
    with pytest.raises(MemoryModeError, match="fp8 weight storage cannot be turned off"):
        undo_plan(pipe, current, "cpu")
    assert pipe.vae.use_tiling  # nothing was touched


def test_update_plan_in_place_then_back(registry, baselines, fresh_tiny_pipe):
    pipe = fresh_tiny_pipe("sdxl")
    steps = [
        [],
        ["vae_slicing", "model_cpu_offload"],
        ["group_offload", "vae_slicing"],  # model offload replaced by group offload
        ["group_offload", "vae_slicing", "attention_slicing"],
    ]
    old = NO_PLAN
    for names in steps:
        new = plan(names, registry, "sdxl", "cpu")
        update_plan(pipe, old, new, "cpu")
        assert np.allclose(render(pipe), baselines["sdxl"], atol=1e-5, rtol=0), names
        old = new
    with pytest.raises(MemoryModeError, match="must be reloaded.*'Group offload' cannot be turned off"):
        update_plan(pipe, old, NO_PLAN, "cpu")


def test_update_plan_reinstalls_offload_around_added_fp8(registry, fresh_tiny_pipe):
    pipe = fresh_tiny_pipe("sd15")
    old = plan(["model_cpu_offload"], registry, "sd15", "cpu")
    apply_plan(pipe, old, "cpu")
    new = plan(["model_cpu_offload", "fp8_weights"], registry, "sd15", "cpu")
    notes = update_plan(pipe, old, new, "cpu")
    assert any("fp8" in n for n in notes)
    assert hasattr(pipe.unet, "_hf_hook") and len(pipe._all_hooks) > 0
    assert np.isfinite(render(pipe, n=1)).all()


def test_task_pipelines_share_the_offload(registry, fresh_tiny_pipe):
    from PIL import Image

    from webui.models.manager import derive_pipeline

    pipe = fresh_tiny_pipe("sd15")
    apply_plan(pipe, plan(["model_cpu_offload"], registry, "sd15", "cpu"), "cpu")
    img2img = derive_pipeline(pipe, "StableDiffusionImg2ImgPipeline")
    share_offload_state(pipe, img2img)
    assert img2img._all_hooks is pipe._all_hooks
    img2img.set_progress_bar_config(disable=True)
    out = img2img(prompt="x", image=Image.new("RGB", (64, 64)), strength=0.5, num_inference_steps=2, output_type="np")
    assert out.images.shape == (1, 64, 64, 3)
    assert img2img._all_hooks  # re-armed after the call
    assert execution_device(pipe).type == "cpu"


def test_a_new_vae_gets_the_vae_modes_and_the_offload(registry, baselines, fresh_tiny_pipe):
    import copy

    pipe = fresh_tiny_pipe("sd15")
    current = plan(["vae_slicing", "vae_tiling", "model_cpu_offload"], registry, "sd15", "cpu")
    apply_plan(pipe, current, "cpu")
    new_vae = copy.deepcopy(pipe.vae)
    new_vae.disable_tiling()
    new_vae.disable_slicing()
    pipe.register_modules(vae=new_vae)  # what a VAE override does
    refresh_after_swap(pipe, current, "cpu")
    assert pipe.vae.use_tiling and pipe.vae.use_slicing and hasattr(pipe.vae, "_hf_hook")
    assert np.allclose(render(pipe), baselines["sd15"], atol=1e-5, rtol=0)  # 64 px: tiles do not engage


def test_drop_t5_load_kwargs_load_sd3_without_t5(registry, tiny_checkpoint):
    from diffusers import StableDiffusion3Pipeline

    ckpt = tiny_checkpoint("sd3")
    kwargs = plan(["drop_t5"], registry, "sd3", "cpu").load_kwargs
    pipe = StableDiffusion3Pipeline.from_single_file(str(ckpt.path), config=str(ckpt.config_dir), **kwargs)
    assert pipe.text_encoder_3 is None and pipe.tokenizer_3 is None
    assert np.isfinite(render(pipe, n=1)).all()


def test_a_failing_mode_is_reported_by_name(registry, fresh_tiny_pipe):
    def broken(pipe, ctx):
        raise RuntimeError("kernel missing\nmore")

    registry.register(MemoryMode(name="broken", label="Broken mode", description="d", apply=broken, phase="vae"))
    with pytest.raises(MemoryModeError, match=r"could not turn on 'Broken mode' \(RuntimeError: kernel missing\)"):
        apply_plan(fresh_tiny_pipe("sd15"), plan(["broken"], registry, "sd15", "cpu"), "cpu")


# --- on a CUDA GPU ---------------------------------------------------------------------------


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


gpu = pytest.mark.skipif("not _cuda()", reason="needs a CUDA GPU")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("family", FAMILIES)
def test_gpu_offload_modes_keep_the_image(registry, fresh_tiny_pipe, family):
    reference = fresh_tiny_pipe(family).to("cuda")
    base = render(reference)
    del reference
    for names in (["model_cpu_offload"], ["group_offload"], ["sequential_cpu_offload"]):
        pipe = fresh_tiny_pipe(family)
        current = plan(names, registry, family, "cuda")
        assert current.load_device("cuda") == "cpu"
        apply_plan(pipe, current, "cuda")
        assert execution_device(pipe).type == "cuda"
        assert np.array_equal(render(pipe), base), names
        if current.modes[0].undoable:
            undo_plan(pipe, current, "cuda")
            assert np.array_equal(render(pipe), base), names


@pytest.mark.gpu
@gpu
def test_gpu_fp8_loaded_on_cpu_then_moved(registry, fresh_tiny_pipe):
    import torch

    pipe = fresh_tiny_pipe("sd3").to(torch.bfloat16)
    apply_plan(pipe, plan(["fp8_weights", "vae_tiling"], registry, "sd3", "cuda"), "cuda", dtype=torch.bfloat16)
    assert pipe.transformer.device.type == "cuda"
    assert np.isfinite(render(pipe, n=1)).all()
