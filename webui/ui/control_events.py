"""Events inside one tab's controls: token counters, size presets, seed buttons, sampler -> schedule
types, the ↙ paste button, and following the loaded model's family. Called by ``build_controls``."""

from __future__ import annotations

from typing import Any

from webui.backend import Backend, FamilyInfo
from webui.ui import choices as C
from webui.ui.control_values import has_parameters, token_counter_text


def count_text(backend: Backend, text: str) -> str:
    """``"12/75"`` for a prompt box; ``"?/75"`` when counting fails (never an error in the page).

    The backend counts with the bundled CLIP tokenizer (the loaded model's own is not needed).
    """
    try:
        count = backend.count_tokens(text or "")
    except Exception:  # noqa: BLE001 - a counter must never break the page
        return "?/75"
    return token_counter_text(count.used, count.limit)


def wire_token_counters(backend: Backend, page: Any, c: Any) -> None:
    pairs = (
        (c.fields["prompt"], c.widgets["token_counter"]),
        (c.fields["negative_prompt"], c.widgets["neg_token_counter"]),
    )
    for box, counter in pairs:
        box.change(
            lambda text: count_text(backend, text),
            inputs=[box],
            outputs=[counter],
            queue=False,
            show_progress="hidden",
            trigger_mode="always_last",
        )


def wire_size_and_seed(backend: Backend, c: Any) -> None:
    import gradio as gr

    width, height = c.fields["width"], c.fields["height"]

    def preset(value: str | None) -> tuple[Any, Any]:
        size = C.parse_preset(value)
        return (size[0], size[1]) if size else (gr.update(), gr.update())

    c.size_preset.input(preset, inputs=[c.size_preset], outputs=[width, height], queue=False, show_progress="hidden")
    c.widgets["swap_size"].click(lambda w, h: (h, w), inputs=[width, height], outputs=[width, height], queue=False)
    c.widgets["random_seed"].click(lambda: -1, outputs=[c.fields["seed"]], queue=False)


def wire_sampler_schedules(backend: Backend, c: Any) -> None:
    import gradio as gr

    sampler, scheduler = c.fields["sampler_name"], c.fields["scheduler"]

    def schedules(name: str, current: str) -> Any:
        names = C.schedules_for(backend, C.loaded_family(backend), name)
        return gr.update(choices=names, value=current if current in names else "Automatic")

    # Only when the user picks a sampler (``input``, not ``change``): a paste or a model switch sets the
    # sampler and its schedule type's choices and value in one response; a ``change`` handler would
    # then read the schedule type before its new value arrived and reset it.
    sampler.input(schedules, inputs=[sampler, scheduler], outputs=[scheduler], queue=False, show_progress="hidden")


def paste_updates(backend: Backend, c: Any, text: str, current_sampler: str | None = None) -> list[Any]:
    """Updates for the fields (+ the error box) from the infotext in the prompt box."""
    import gradio as gr

    if not has_parameters(text):
        gr.Info("Paste an image's parameters (the text under a generated image) into the prompt box, then press ↙.")
        return [gr.update() for _ in c.fields] + [gr.update()]
    values, said = c.infotext_values(text)
    updates, notes = c.paste_values(values, backend, current_sampler)
    note = " ".join([*said, *notes])
    if note:
        gr.Info(note)
    return updates + [note]


def wire_paste(backend: Backend, page: Any, c: Any) -> None:
    c.paste.click(
        lambda text, sampler: paste_updates(backend, c, text, sampler),
        inputs=[c.fields["prompt"], c.fields["sampler_name"]],
        outputs=[*c.field_components(), c.error],
        queue=False,
        show_progress="hidden",
    )


def family_updates(
    backend: Backend,
    c: Any,
    family: FamilyInfo | None,
    changed: bool,
    sampler: str | None = None,
    schedule: str | None = None,
    hr_sampler: str | None = None,
) -> list[Any]:
    """Updates for ``family_outputs(c)`` after a model switch.

    ``changed`` (the page load with a model): the family's defaults. Otherwise the user's steps,
    CFG, size and sampler stay (A1111); only a sampler, schedule type or hires sampler the family
    cannot use changes, and the error box says so. ``sampler``/``schedule``/``hr_sampler``: what the
    controls show now (None: not known, the family's default is used if needed).
    """
    import gradio as gr

    view = C.family_view(backend, family, c.task)
    keep = gr.update()
    if changed:
        new_sampler, new_schedule, new_hr, notes = view.sampler, "Automatic", C.USE_SAME_SAMPLER, []
    else:
        fitted = C.fit_to_family(backend, family, c.task, sampler, schedule, hr_sampler)
        new_sampler, new_schedule, new_hr, notes = fitted
    out = [
        gr.update(choices=view.samplers, value=new_sampler),
        gr.update(choices=C.schedules_for(backend, family, new_sampler), value=new_schedule),
        view.steps if changed else keep,
        view.cfg if changed else keep,
        view.width if changed else keep,
        view.height if changed else keep,
        gr.update(choices=view.presets, value=None),
        gr.update(choices=C.refiner_choices(backend)),
        gr.update(visible=view.is_flow),
    ]
    if "hr_sampler_name" in c.fields:
        out.append(gr.update(choices=view.hr_samplers, value=new_hr))
    out.append(" ".join(notes) if notes else keep)  # the error box: a job's message stays
    return out


def family_outputs(c: Any) -> list[Any]:
    f = c.fields
    out = [f["sampler_name"], f["scheduler"], f["steps"], f["cfg_scale"], f["width"], f["height"], c.size_preset]
    out += [f["refiner_checkpoint"], c.sd3_options]
    if "hr_sampler_name" in f:
        out.append(f["hr_sampler_name"])
    out.append(c.error)
    return out


def family_inputs(c: Any) -> list[Any]:
    """What ``family_updates`` checks against a new family: sampler, schedule type, hires sampler."""
    f = c.fields
    return [f["sampler_name"], f["scheduler"], *([f["hr_sampler_name"]] if "hr_sampler_name" in f else [])]


def follow_family(backend: Backend, page: Any, c: Any) -> None:
    page.on_family_change(
        family_outputs(c),
        lambda family, changed, *values: family_updates(backend, c, family, changed, *values),
        inputs=family_inputs(c),
    )
