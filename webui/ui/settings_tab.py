"""Settings tab: edit the persisted settings, apply them live where possible, reset to defaults.

Element ids follow A1111: ``setting_<name>`` for each control, ``settings_submit``/``settings_reset``
for the buttons, ``settings_result`` for the outcome; an error shows under its control in
``setting_<name>_error``. The logic lives in ``settings_apply``.

Every page load shows the settings as they are now (not as they were when the app started), and
Apply saves only the settings the user changed on this page since it showed them: a page left
open while another tab or an API client changed a setting never writes the old value back.
"""

from __future__ import annotations

from typing import Any

from webui.backend import Backend
from webui.config import Settings
from webui.ui import settings_apply
from webui.ui.settings_apply import SPECS, SettingSpec

NO_DEFAULT_MODEL = "(the first checkpoint found)"


def model_choices(backend: Backend) -> list[tuple[str, str]]:
    return [(NO_DEFAULT_MODEL, ""), *((n, n) for n in settings_apply.checkpoint_names(backend))]


def _control(spec: SettingSpec, value: Any, backend: Backend) -> Any:
    import gradio as gr

    kind = Settings.__dataclass_fields__[spec.name].type
    common: dict[str, Any] = {"label": spec.label, "elem_id": f"setting_{spec.name}", "value": value}
    if spec.info:
        common["info"] = spec.info
    if spec.name == "default_model":
        return gr.Dropdown(choices=model_choices(backend), **common)
    if spec.choices:
        return gr.Radio(choices=list(spec.choices), **common)
    if kind == "bool":
        common.pop("info", None)
        return gr.Checkbox(**common)
    if kind == "int":
        return gr.Number(precision=0, **common)
    if kind == "float":
        return gr.Number(**common)
    return gr.Textbox(max_lines=1, **common)


def _extension_control(spec: Any, value: Any) -> Any:
    """A control for an extension's ``webui.hooks.SettingSpec`` (type from its default)."""
    import gradio as gr

    common: dict[str, Any] = {"label": spec.label, "elem_id": f"setting_{spec.name}", "value": value}
    if spec.info:
        common["info"] = spec.info
    if spec.choices is not None:
        return gr.Dropdown(choices=list(spec.choices), **common)
    if isinstance(spec.default, bool):
        common.pop("info", None)
        return gr.Checkbox(**common)
    if isinstance(spec.default, (int, float)):
        return gr.Number(precision=0 if isinstance(spec.default, int) else None, **common)
    return gr.Textbox(max_lines=1, **common)


def same_value(shown: Any, now: Any) -> bool:
    """True when a control still holds the value the page showed (a number box may give 7.0 for 7)."""
    if shown is None or now is None:
        return (shown in (None, "")) and (now in (None, ""))
    if isinstance(shown, (int, float)) and isinstance(now, (int, float)) and not isinstance(now, bool):
        return float(shown) == float(now)
    return shown == now


def edited_values(names: list[str], raw: list[Any], shown: dict[str, Any], known: set[str]) -> dict[str, Any]:
    """The controls whose value differs from what the page showed: what Apply saves."""
    return {n: v for n, v in zip(names, raw) if n in known and not (n in shown and same_value(shown[n], v))}


def error_updates(names: list[str], errors: dict[str, str]) -> list[Any]:
    import gradio as gr

    return [
        gr.update(value=f"**{errors[name]}**", visible=True) if name in errors else gr.update(value="", visible=False)
        for name in names
    ]


def _sections() -> dict[str, list[SettingSpec]]:
    sections: dict[str, list[SettingSpec]] = {}
    for spec in SPECS:
        sections.setdefault(spec.section, []).append(spec)
    return sections


def _error_box(name: str) -> Any:
    import gradio as gr

    return gr.Markdown(visible=False, elem_id=f"setting_{name}_error", elem_classes="setting-error")


def _build_controls(backend: Backend) -> dict[str, tuple[Any, Any]]:
    """(control, error box) by setting name: ours by section, then each extension section."""
    import gradio as gr

    values = settings_apply.current_values(backend)
    built: dict[str, tuple[Any, Any]] = {}
    for section, specs in _sections().items():
        with gr.Group():
            gr.Markdown(f"### {section}")
            for spec in specs:
                built[spec.name] = (_control(spec, values[spec.name], backend), _error_box(spec.name))
    by_section: dict[str, list[tuple[str, Any]]] = {}
    for extension, spec in settings_apply.extension_settings(backend):
        by_section.setdefault(spec.section, []).append((extension, spec))
    for section, specs in by_section.items():
        with gr.Group():
            gr.Markdown(f"### {section}")
            for extension, spec in specs:
                control = _extension_control(spec, values[spec.name])
                built[spec.name] = (control, _error_box(spec.name))
    return built


def build(backend: Backend, page: Any) -> None:
    import gradio as gr

    with gr.Row():
        submit = gr.Button("Apply settings", variant="primary", elem_id="settings_submit")
        reset = gr.Button("Reset to defaults", elem_id="settings_reset")
    result = gr.Markdown(elem_id="settings_result")
    device_line = gr.Markdown(settings_apply.device_summary(backend, wait=False), elem_id="settings_device")
    memory = gr.Markdown(settings_apply.memory_summary(backend), elem_id="settings_memory")
    built = _build_controls(backend)
    names = list(built)
    controls = [built[name][0] for name in names]
    errors = [built[name][1] for name in names]
    gr.Markdown(f"Settings are saved in `{backend.folders().config_file}`. Command-line flags override the file.")
    shown = gr.State(now_values(backend, names))  # what this page showed: Apply saves what differs from it

    def current() -> tuple[list[Any], dict[str, Any]]:
        """(an update per control with the value it has now, those values) for ``shown``."""
        values = now_values(backend, names)
        updates = [values[n] if n in values else gr.update() for n in names]  # an extension turned off: as is
        updates[names.index("default_model")] = gr.update(
            value=values["default_model"], choices=model_choices(backend)
        )
        return updates, values

    def refresh() -> list[Any]:
        updates, values = current()
        return [*updates, *error_updates(names, {}), "", values]

    def apply(shown_values: dict[str, Any], *raw: Any) -> list[Any]:
        edited = edited_values(names, list(raw), shown_values or {}, settings_apply.known_names(backend))
        outcome = settings_apply.save_settings(backend, edited)
        if not outcome.ok:  # nothing was saved: the user's values stay in the controls to be fixed
            unchanged = [gr.update() for _ in names]
            return [*unchanged, *error_updates(names, outcome.errors), outcome.message(), gr.update()]
        updates, values = current()
        return [*updates, *error_updates(names, {}), outcome.message(), values]

    def reset_all() -> list[Any]:
        defaults = settings_apply.default_values(backend)
        outcome = settings_apply.save_settings(backend, {n: defaults[n] for n in names if n in defaults}, reset=True)
        message = "Defaults restored. " + outcome.message() if outcome.ok else outcome.message()
        updates, values = current()
        return [*updates, *error_updates(names, outcome.errors), message, values]

    def memory_now() -> str:
        return settings_apply.memory_summary(backend)

    outputs = [*controls, *errors, result, shown]
    submit.click(apply, inputs=[shown, *controls], outputs=outputs, concurrency_limit=None).then(
        memory_now, outputs=memory, concurrency_limit=None  # a new RAM cache size applies at once
    )
    reset.click(reset_all, outputs=outputs, concurrency_limit=None).then(
        memory_now, outputs=memory, concurrency_limit=None
    )
    if page.blocks is not None:  # built inside the page: every load shows the settings as they are now
        page.on_load(refresh, outputs=outputs)
        page.on_load(memory_now, outputs=[memory])
        # The page is built before torch is imported: each load fills the device line in once it is chosen
        # (queued, as it may wait a few seconds for the import).
        page.after_build(
            lambda: page.blocks.load(
                lambda: settings_apply.device_summary(backend), outputs=device_line, show_progress="hidden"
            )
        )


def now_values(backend: Backend, names: list[str]) -> dict[str, Any]:
    """The current value of each setting the page shows (extension settings from the host's options)."""
    values = settings_apply.current_values(backend)
    return {name: values[name] for name in names if name in values}
