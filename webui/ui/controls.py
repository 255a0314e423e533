"""The generation controls, built the same way in every generation tab (txt2img, img2img, inpaint).

``build_controls(backend, page, task, inputs_slot=None) -> Controls`` lays out A1111's page:

    [prompt / negative prompt + token counters]        [Generate] [Interrupt] [Skip] [↙]  error
    [LoRA browser (accordion)]
    [left column: inputs_slot(), sampler, size, batch,  [right column: progress, live preview,
     CFG, seed, hires fix / refiner / SD3 / inpaint     gallery, Send to img2img / inpaint,
     sections]                                          infotext of the selected image]

``inputs_slot()`` (img2img's image, inpaint's editor) is called at the top of the left column and
returns ``{key: component}``; its values reach the request builder under those keys (a key that is
a request field, e.g. ``init_image`` with ``gr.Image(type="pil")``, needs no conversion).
``sections`` add their own parts below the built-in ones (the ControlNet units: ``webui.control.ui``);
what they put in ``fields`` is restored by a paste, their ``read_infotext`` says how. Which sections exist
follows ``task``: hires fix only for txt2img (its denoising strength sits in
it); denoising strength and resize mode for img2img/inpaint; mask blur, mask mode, masked content,
inpaint area and padding for inpaint. Wire Generate with ``webui.ui.runner.attach_runner``.

Pure helpers (``request_from_values``, ``values_from_infotext`` ...) live in ``control_values``
and are re-exported here.

Element ids, with ``<t>`` the task (txt2img / img2img / inpaint):
  <t>_prompt, <t>_neg_prompt, <t>_token_counter, <t>_neg_token_counter, <t>_generate,
  <t>_interrupt, <t>_skip, <t>_paste, <t>_error, <t>_sampler, <t>_scheduler, <t>_steps, <t>_width,
  <t>_height, <t>_size_preset, <t>_swap_size, <t>_batch_count, <t>_batch_size, <t>_cfg_scale,
  <t>_seed, <t>_random_seed, <t>_reuse_seed, <t>_clip_skip, <t>_subseed, <t>_subseed_strength,
  <t>_denoising_strength, <t>_resize_mode, <t>_enable_hr, <t>_hr_upscaler, <t>_hr_scale,
  <t>_hr_second_pass_steps, <t>_hr_resize_x, <t>_hr_resize_y, <t>_hr_sampler, <t>_hr_scheduler,
  <t>_hr_prompt, <t>_hr_neg_prompt, <t>_refiner_checkpoint, <t>_refiner_switch_at, <t>_sd3_options,
  <t>_use_t5, <t>_shift, <t>_mask_blur, <t>_mask_mode, <t>_inpainting_fill, <t>_inpaint_full_res,
  <t>_inpaint_padding, and the results (runner): <t>_progress, <t>_preview, <t>_gallery,
  <t>_infotext, <t>_send_to_img2img, <t>_send_to_inpaint; the LoRA browser: <t>_lora_table,
  <t>_lora_refresh; the styles row (``webui.ui.styles_row``): <t>_styles, <t>_styles_apply, <t>_style_save ...
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from webui.backend import Backend
from webui.ui import choices as C
from webui.ui.control_values import (  # noqa: F401  (re-exported: the tabs import them from here)
    FIELD_LABELS,
    INPAINT_AREA_LABELS,
    MASK_MODE_LABELS,
    NO_REFINER,
    NUMBERS,
    clamp,
    error_text,
    has_parameters,
    request_from_values,
    token_counter_text,
    values_from_infotext,
)

# Element-id suffixes that differ from the request field name.
ELEM_NAMES = {
    "negative_prompt": "neg_prompt",
    "sampler_name": "sampler",
    "n_iter": "batch_count",
    "hr_sampler_name": "hr_sampler",
    "hr_negative_prompt": "hr_neg_prompt",
    "inpainting_mask_invert": "mask_mode",
    "inpaint_full_res_padding": "inpaint_padding",
}


def elem_id(task: str, name: str) -> str:
    return f"{task}_{ELEM_NAMES.get(name, name)}"


@dataclass
class Controls:
    """The components of one tab's generation controls."""

    task: str
    fields: dict[str, Any]  # request field name (or a section's key, e.g. controlnet_0_weight) -> component
    extra: dict[str, Any]  # inputs_slot() components
    generate: Any
    interrupt: Any
    skip: Any
    paste: Any
    error: Any
    results: Any  # webui.ui.runner.Results
    size_preset: Any = None
    sd3_options: Any = None
    widgets: dict[str, Any] = field(default_factory=dict)  # other buttons/labels by name
    sections: list[Any] = field(default_factory=list)  # built ``sections`` (e.g. ControlNet): read_infotext(text)

    def infotext_values(self, text: str) -> tuple[dict[str, Any], list[str]]:
        """(values to paste, notes) from an infotext: the request fields, then each section's own keys."""
        values, notes = dict(values_from_infotext(text or "")), []
        for section in self.sections:
            extra, said = section.read_infotext(text or "")
            values.update(extra)
            notes.extend(said)
        return values, notes

    def field_components(self) -> list[Any]:
        return list(self.fields.values())

    def inputs(self) -> list[Any]:
        """Components whose values ``values()`` reads: the fields, then the extra inputs."""
        return [*self.fields.values(), *self.extra.values()]

    def values(self, args: Sequence[Any]) -> dict[str, Any]:
        """``{key: value}`` from the values of ``inputs()`` in order."""
        keys = [*self.fields, *self.extra]
        if len(args) != len(keys):
            raise ValueError(f"expected {len(keys)} values, got {len(args)}")
        return dict(zip(keys, args))

    def updates(self, values: Mapping[str, Any], backend: Backend) -> list[Any]:
        """One update per field (``gr.update()`` where ``values`` has nothing usable for it)."""
        return self.paste_values(values, backend)[0]

    def paste_values(
        self, values: Mapping[str, Any], backend: Backend, current_sampler: str | None = None
    ) -> tuple[list[Any], list[str]]:
        """(one update per field, a note for each pasted value that had to change).

        The schedule type's update carries the choices of the pasted sampler (else
        ``current_sampler``'s) with its value, in one update: a value is never set on a dropdown
        whose choices lack it (Gradio would show it blank and refuse it at Generate).
        """
        import gradio as gr

        usable, notes = C.fit_values(backend, self.task, values, current_sampler)
        family = C.loaded_family(backend) if "scheduler" in usable else None
        updates = []
        for name in self.fields:
            if name not in usable:
                updates.append(gr.update())
            elif _is_update(usable[name]):  # a section's own update (a slider's range with its value)
                updates.append(usable[name])
            elif name == "scheduler":
                sampler = usable.get("sampler_name") or current_sampler
                names = C.schedules_for(backend, family, sampler)
                updates.append(gr.update(choices=names, value=usable[name]))
            else:
                value = clamp(name, usable[name])
                if value != usable[name]:
                    notes.append(f"{FIELD_LABELS.get(name, name)} {usable[name]} is outside the slider: {value}.")
                updates.append(gr.update(value=value))
        return updates, notes


def _is_update(value: Any) -> bool:
    return isinstance(value, dict) and value.get("__type__") == "update"


def _slider(task: str, name: str, **overrides: Any) -> Any:
    import gradio as gr

    spec = NUMBERS[name]
    kwargs: dict[str, Any] = {"minimum": spec.minimum, "maximum": spec.maximum, "step": spec.step}
    kwargs.update(value=spec.default, label=spec.label)
    kwargs.update(overrides)
    return gr.Slider(elem_id=elem_id(task, name), **kwargs)


def _prompt_row(backend: Backend, page: Any, task: str, f: dict[str, Any], w: dict[str, Any]) -> None:
    import gradio as gr

    with gr.Row(elem_id=f"{task}_toprow"):
        with gr.Column(scale=6):
            # Each counter shares its prompt's frame (a Group has no gap), right under the text.
            with gr.Group(elem_classes="webui-prompt"):
                f["prompt"] = gr.Textbox(
                    label="Prompt",
                    lines=3,
                    elem_id=elem_id(task, "prompt"),
                    placeholder="Prompt (Ctrl+Enter to generate)",
                )
                w["token_counter"] = gr.HTML("0/75", elem_id=f"{task}_token_counter", js_on_load=None)
            with gr.Group(elem_classes="webui-prompt"):
                f["negative_prompt"] = gr.Textbox(
                    label="Negative prompt", lines=2, elem_id=elem_id(task, "negative_prompt")
                )
                w["neg_token_counter"] = gr.HTML("0/75", elem_id=f"{task}_neg_token_counter", js_on_load=None)
        with gr.Column(scale=1, min_width=180):
            w["generate"] = gr.Button("Generate", variant="primary", elem_id=f"{task}_generate")
            with gr.Row():
                w["interrupt"] = gr.Button("Interrupt", size="sm", elem_id=f"{task}_interrupt")
                w["skip"] = gr.Button("Skip", size="sm", elem_id=f"{task}_skip")
            w["paste"] = gr.Button("↙ Read parameters from the prompt box", size="sm", elem_id=f"{task}_paste")
            w["error"] = gr.Markdown("", elem_id=f"{task}_error")


def _sampling(backend: Backend, task: str, f: dict[str, Any], w: dict[str, Any]) -> None:
    import gradio as gr

    max_side = int(getattr(backend.settings(), "max_image_size", 2048))
    start = C.family_view(backend, None, task)
    with gr.Row():
        f["sampler_name"] = gr.Dropdown(
            label="Sampling method", choices=start.samplers, value=start.sampler, elem_id=elem_id(task, "sampler_name")
        )
        f["scheduler"] = gr.Dropdown(
            label="Schedule type", choices=start.schedules, value="Automatic", elem_id=elem_id(task, "scheduler")
        )
        f["steps"] = _slider(task, "steps", value=start.steps)
    with gr.Row():
        with gr.Column(scale=3):
            f["width"] = _slider(task, "width", maximum=max_side, value=start.width)
            f["height"] = _slider(task, "height", maximum=max_side, value=start.height)
        with gr.Column(scale=1, min_width=140):
            w["size_preset"] = gr.Dropdown(
                label="Size preset", choices=start.presets, value=None, elem_id=f"{task}_size_preset"
            )
            w["swap_size"] = gr.Button("⇅ Swap", size="sm", elem_id=f"{task}_swap_size")
    with gr.Row():
        f["n_iter"] = _slider(task, "n_iter")
        f["batch_size"] = _slider(task, "batch_size")
    f["cfg_scale"] = _slider(task, "cfg_scale", value=start.cfg)
    if task != "txt2img":
        f["denoising_strength"] = _slider(task, "denoising_strength")
        f["resize_mode"] = gr.Radio(
            label="Resize mode", choices=list(C.RESIZE_MODES), value=C.RESIZE_MODES[0], elem_id=f"{task}_resize_mode"
        )
    with gr.Row():
        f["seed"] = gr.Number(label="Seed", value=-1, precision=0, elem_id=f"{task}_seed", scale=4)
        w["random_seed"] = gr.Button("⚄", size="sm", elem_id=f"{task}_random_seed", scale=0, min_width=40)
        w["reuse_seed"] = gr.Button("♻", size="sm", elem_id=f"{task}_reuse_seed", scale=0, min_width=40)
        f["clip_skip"] = _slider(task, "clip_skip", scale=2)
    with gr.Accordion("Variation seed", open=False), gr.Row():
        f["subseed"] = gr.Number(label="Variation seed", value=-1, precision=0, elem_id=f"{task}_subseed")
        f["subseed_strength"] = _slider(task, "subseed_strength")


def _hires(backend: Backend, task: str, f: dict[str, Any], w: dict[str, Any]) -> None:
    import gradio as gr

    start = C.family_view(backend, None, task)
    with gr.Accordion("Hires. fix", open=False, elem_id=f"{task}_hires_fix"):
        f["enable_hr"] = gr.Checkbox(label="Enable hires fix", value=False, elem_id=f"{task}_enable_hr")
        with gr.Row():
            f["hr_upscaler"] = gr.Dropdown(
                label="Upscaler", choices=C.hr_upscaler_choices(backend), value="Latent", elem_id=f"{task}_hr_upscaler"
            )
            f["hr_second_pass_steps"] = _slider(task, "hr_second_pass_steps")
            f["denoising_strength"] = _slider(task, "denoising_strength", value=0.7)
        with gr.Row():
            f["hr_scale"] = _slider(task, "hr_scale")
            f["hr_resize_x"] = _slider(task, "hr_resize_x")
            f["hr_resize_y"] = _slider(task, "hr_resize_y")
        with gr.Row():
            f["hr_sampler_name"] = gr.Dropdown(
                label="Hires sampling method",
                choices=start.hr_samplers,
                value=C.USE_SAME_SAMPLER,
                elem_id=elem_id(task, "hr_sampler_name"),
            )
            f["hr_scheduler"] = gr.Dropdown(
                label="Hires schedule type",
                choices=[C.USE_SAME_SCHEDULER, *start.all_schedules],
                value=C.USE_SAME_SCHEDULER,
                elem_id=f"{task}_hr_scheduler",
            )
        f["hr_prompt"] = gr.Textbox(label="Hires prompt (empty = same prompt)", lines=2, elem_id=f"{task}_hr_prompt")
        f["hr_negative_prompt"] = gr.Textbox(
            label="Hires negative prompt (empty = same)", lines=2, elem_id=elem_id(task, "hr_negative_prompt")
        )


def _refiner_and_sd3(backend: Backend, task: str, f: dict[str, Any], w: dict[str, Any]) -> None:
    import gradio as gr

    with gr.Accordion("Refiner", open=False, elem_id=f"{task}_refiner"), gr.Row():
        f["refiner_checkpoint"] = gr.Dropdown(
            label="Refiner checkpoint",
            choices=C.refiner_choices(backend),
            value=NO_REFINER,
            elem_id=f"{task}_refiner_checkpoint",
        )
        f["refiner_switch_at"] = _slider(task, "refiner_switch_at")
    with gr.Accordion("SD3 options", open=True, visible=False, elem_id=f"{task}_sd3_options") as sd3, gr.Row():
        f["use_t5"] = gr.Checkbox(label="Use the T5 text encoder", value=True, elem_id=f"{task}_use_t5")
        f["shift"] = _slider(task, "shift")
    w["sd3_options"] = sd3


def _inpaint_options(task: str, f: dict[str, Any]) -> None:
    import gradio as gr

    with gr.Accordion("Inpaint options", open=True, elem_id=f"{task}_inpaint_options"):
        with gr.Row():
            f["mask_blur"] = _slider(task, "mask_blur")
            f["inpainting_mask_invert"] = gr.Radio(
                label="Mask mode",
                choices=list(MASK_MODE_LABELS),
                value=MASK_MODE_LABELS[0],
                elem_id=f"{task}_mask_mode",
            )
        f["inpainting_fill"] = gr.Radio(
            label="Masked content", choices=list(C.MASKED_CONTENT), value="original", elem_id=f"{task}_inpainting_fill"
        )
        with gr.Row():
            f["inpaint_full_res"] = gr.Radio(
                label="Inpaint area",
                choices=list(INPAINT_AREA_LABELS),
                value=INPAINT_AREA_LABELS[0],
                elem_id=f"{task}_inpaint_full_res",
            )
            f["inpaint_full_res_padding"] = _slider(task, "inpaint_full_res_padding")


# A section below the built-in ones in the left column: ``section(task, fields, extra) -> built`` adds its
# components to ``fields`` (pasted from the infotext) and ``extra`` (read only); ``built.read_infotext(text)``
# gives ``(values, notes)`` for its fields (``webui.control.ui.build_section`` is one).
Section = Callable[[str, dict[str, Any], dict[str, Any]], Any]


def build_controls(
    backend: Backend,
    page: Any,
    task: str,
    inputs_slot: Callable[[], Mapping[str, Any]] | None = None,
    sections: Sequence[Section] = (),
) -> Controls:
    """Build the controls and the results column for ``task``; wire everything but Generate."""
    import gradio as gr

    from webui.ui.embedding_browser import build_embedding_browser
    from webui.ui.lora_browser import build_lora_browser
    from webui.ui.runner import build_results
    from webui.ui.styles_row import STYLES_KEY, StylesPaste, build_styles_row

    f: dict[str, Any] = {}
    w: dict[str, Any] = {}
    _prompt_row(backend, page, task, f, w)
    f[STYLES_KEY] = build_styles_row(backend, page, task, f, w)  # not a request field: applied at Generate
    build_lora_browser(backend, page, task, f["prompt"])
    build_embedding_browser(backend, page, task, f["prompt"], f["negative_prompt"])
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            extra = dict(inputs_slot()) if inputs_slot else {}
            _sampling(backend, task, f, w)
            if task == "txt2img":
                _hires(backend, task, f, w)
            if task == "inpaint":
                _inpaint_options(task, f)
            _refiner_and_sd3(backend, task, f, w)
            built = [section(task, f, extra) for section in sections]
        with gr.Column(scale=1):
            results = build_results(task)
    controls = Controls(
        task=task,
        fields=f,
        extra=extra,
        generate=w["generate"],
        interrupt=w["interrupt"],
        skip=w["skip"],
        paste=w["paste"],
        error=w["error"],
        results=results,
        size_preset=w["size_preset"],
        sd3_options=w["sd3_options"],
        widgets=w,
        sections=[StylesPaste(backend), *(b for b in built if b is not None)],
    )
    _wire(backend, page, controls)
    return controls


def _wire(backend: Backend, page: Any, c: Controls) -> None:
    """Everything inside the controls: counters, seed buttons, sizes, sampler -> schedules, paste."""
    from webui.ui import control_events as E

    E.wire_token_counters(backend, page, c)
    E.wire_size_and_seed(backend, c)
    E.wire_sampler_schedules(backend, c)
    E.wire_paste(backend, page, c)
    E.follow_family(backend, page, c)
