"""Prompt editing, alternation and wildcards through the real engine on tiny models: the conditioning the
denoiser receives at each step (a forward pre-hook on the UNet / transformer) is the encoding of that step's text."""

from __future__ import annotations

import pytest
import torch

from tests.app_services import tmp_services
from tests.tolerance import assert_close
from webui.generation.conditioning import encode_prompts
from webui.generation.requests import GenerationRequest
from webui.generation.service import DONE
from webui.models.demo import demo_checkpoint_name, write_demo_models

FAMILIES = ("sd15", "sdxl", "sd3")


@pytest.fixture(scope="module")
def services(tmp_path_factory, tiny_checkpoint):
    import shutil

    root = tmp_path_factory.mktemp("prompt_editing")
    write_demo_models(root / "models", FAMILIES, loras=True)
    shutil.copy(tiny_checkpoint("sdxl_refiner").path, root / "models" / "Stable-diffusion" / "sdxl-refiner.safetensors")
    cards = root / "models" / "wildcards"
    (cards / "places").mkdir(parents=True)
    (cards / "color.txt").write_text("red\ngreen\nblue\nyellow\nviolet\norange\n")
    (cards / "places" / "city.txt").write_text("in __color__ Paris\nin __color__ Rome\n")
    services = tmp_services(root)
    services.generation.start()
    yield services
    services.generation.stop()


def run(services, family="sd15", **fields):
    fields = {"prompt": "a cube", "seed": 3, "steps": 4, "width": 64, "height": 64, "save_images": False, **fields}
    job = services.generation.submit(GenerationRequest(sd_model_checkpoint=demo_checkpoint_name(family), **fields))
    assert job.wait(300)
    assert job.state == DONE, job.error
    return job


class Seen:
    """What the denoiser is called with, call by call (one call per step: CFG runs as one batch)."""

    def __init__(self, services, family):
        run(services, family)  # loads the model
        self.pipe = services.manager.pipeline("txt2img")
        self.family = services.manager.family
        self.calls: list[dict] = []
        denoiser = getattr(self.pipe, "unet", None) or self.pipe.transformer
        self.handle = denoiser.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        pooled = kwargs.get("pooled_projections")
        if pooled is None and kwargs.get("added_cond_kwargs"):
            pooled = kwargs["added_cond_kwargs"].get("text_embeds")
        self.calls.append({"embeds": kwargs["encoder_hidden_states"].clone(), "pooled": pooled})

    def expected(self, prompts, negatives):
        cond = encode_prompts(self.pipe, self.family, prompts, negatives)
        pooled = cond.get("pooled_prompt_embeds")
        return {
            "embeds": torch.cat([cond["negative_prompt_embeds"], cond["prompt_embeds"]]),
            "pooled": None if pooled is None else torch.cat([cond["negative_pooled_prompt_embeds"], pooled]),
        }

    def check(self, call, prompts, negatives, pooled=True):
        want = self.expected(prompts, negatives)
        assert call["embeds"].shape == want["embeds"].shape
        assert_close(call["embeds"], want["embeds"], max_diff=1e-4, mean_diff=1e-5)
        if pooled and want["pooled"] is not None:
            assert_close(call["pooled"], want["pooled"], max_diff=1e-4, mean_diff=1e-5)

    def close(self):
        self.handle.remove()


@pytest.fixture
def seen(services):
    made = []

    def make(family):
        made.append(Seen(services, family))
        return made[-1]

    yield make
    for s in made:
        s.close()


@pytest.mark.parametrize("family", FAMILIES)
def test_each_step_sees_its_edited_prompt_and_alternating_negative(services, seen, family):
    s = seen(family)
    job = run(services, family, prompt="a [dog:cat:2] photo", negative_prompt="[ugly|blurry] text")
    assert len(s.calls) == 4
    for step, call in enumerate(s.calls, start=1):
        prompt = "a dog photo" if step <= 2 else "a cat photo"
        negative = "ugly text" if step % 2 else "blurry text"
        s.check(call, [prompt], [negative])
    assert not torch.allclose(s.calls[1]["embeds"][1], s.calls[2]["embeds"][1], atol=1e-3)  # the switch is real
    assert job.result.infotexts[0].startswith("a [dog:cat:2] photo\nNegative prompt: [ugly|blurry] text\n")


def test_break_weights_and_long_prompts_switch_their_chunks(services, seen):
    s = seen("sd15")
    long = " ".join(["word"] * 80)
    prompt = f"a (red:1.3) [{long}::2] cat BREAK [photo|drawing]"
    run(services, prompt=prompt, negative_prompt="")
    texts = [f"a (red:1.3) {long} cat BREAK photo", f"a (red:1.3) {long} cat BREAK drawing"]
    texts += ["a (red:1.3)  cat BREAK photo", "a (red:1.3)  cat BREAK drawing"]
    assert [c["embeds"].shape[1] for c in s.calls] == [231, 231, 154, 154]  # 3 chunks, then 2
    for call, text in zip(s.calls, texts):
        s.check(call, [text], [""])


def test_img2img_counts_the_requested_steps_and_hires_fix_its_own(services, seen):
    from PIL import Image

    s = seen("sd15")
    image = Image.new("RGB", (64, 64), (120, 30, 200))
    run(services, task="img2img", init_image=image, denoising_strength=0.5, steps=8, prompt="[dog:cat:2]")
    assert len(s.calls) == 4  # int(8 * 0.5) steps run; the schedule counts 8 (as A1111)
    for step, call in enumerate(s.calls, start=1):
        s.check(call, ["dog" if step <= 2 else "cat"], [""])
    s.calls.clear()
    run(
        services,
        prompt="[dog:cat:0.5]",
        steps=6,
        enable_hr=True,
        hr_scale=2,
        hr_upscaler="Latent",
        hr_second_pass_steps=4,
        denoising_strength=1.0,
    )
    first, hires = s.calls[:6], s.calls[6:]
    assert len(hires) == 4
    for step, call in enumerate(first, start=1):
        s.check(call, ["dog" if step <= 3 else "cat"], [""])
    for step, call in enumerate(hires, start=1):
        s.check(call, ["dog" if step <= 2 else "cat"], [""])


def test_the_refiner_goes_on_with_the_first_passs_schedule(services, seen):
    s = seen("sdxl")
    fields = {"prompt": "[dog:cat:3]", "refiner_checkpoint": "sdxl-refiner.safetensors", "refiner_switch_at": 0.5}
    run(services, "sdxl", **fields)  # loads the refiner
    refiner, family = services.manager.secondary("sdxl-refiner.safetensors")
    calls = []
    handle = refiner.unet.register_forward_pre_hook(
        lambda m, a, kw: calls.append(kw["encoder_hidden_states"].clone()), with_kwargs=True
    )
    try:
        s.calls.clear()
        run(services, "sdxl", **fields)
    finally:
        handle.remove()
    assert len(s.calls) == 2 and len(calls) == 2  # steps 1-2 on the base, 3-4 on the refiner
    for call in s.calls:
        s.check(call, ["dog"], [""])
    for call, text in zip(calls, ["dog", "cat"]):
        cond = encode_prompts(refiner, family, [text], [""])
        want = torch.cat([cond["negative_prompt_embeds"], cond["prompt_embeds"]])
        assert_close(call, want, max_diff=1e-4, mean_diff=1e-5)


def test_inpaint_with_a_lora_tag_switches_too(services, seen):
    from PIL import Image

    s = seen("sd15")
    image = Image.new("RGB", (64, 64), (120, 30, 200))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    job = run(
        services,
        task="inpaint",
        init_image=image,
        mask=mask,
        denoising_strength=1.0,
        prompt="<lora:demo-sd15-lora:0.8> a [dog:cat:2]",
    )
    assert "demo-sd15-lora" in job.result.infotexts[0]
    assert len(s.calls) == 4
    rows = [call["embeds"][1] for call in s.calls]  # the positive row (the LoRA may change the text encoder)
    assert torch.equal(rows[0], rows[1]) and torch.equal(rows[2], rows[3])
    assert not torch.allclose(rows[1], rows[2], atol=1e-3)


def test_wildcards_follow_each_images_seed_into_conditioning_and_infotext(services, seen):
    s = seen("sd15")
    prompt = "a __color__ cube __places/city__, [day:night:2]"
    job = run(services, prompt=prompt, seed=100, batch_size=2)
    texts = [t.split("\n")[0] for t in job.result.infotexts]
    assert all("__" not in t and t.endswith(", [day:night:2]") for t in texts)
    for call_index, step in ((0, 1), (3, 4)):
        shown = [t.replace("[day:night:2]", "day" if step <= 2 else "night") for t in texts]
        s.check(s.calls[call_index], shown, ["", ""])
    again = run(services, prompt=prompt, seed=101, batch_size=1)  # the second image alone: the same choice
    assert again.result.infotexts[0].split("\n")[0] == texts[1]
    many = {
        run(services, prompt="__color__", seed=seed, steps=1).result.infotexts[0].split("\n")[0] for seed in range(8)
    }
    assert len(many) > 2 and many <= {"red", "green", "blue", "yellow", "violet", "orange"}


def test_an_unknown_wildcard_stays_and_the_job_says_so(services):
    job = run(services, prompt="a __nope__ cube", steps=1)
    assert job.result.infotexts[0].startswith("a __nope__ cube")
    assert any("__nope__" in w for w in job.result.info["warnings"])
