"""What every tab's ``build(backend, page)`` shares: the tabs, the model bar, paste targets, deferred wiring.

The shell makes one ``PageContext`` per UI, builds the model bar (which fills ``checkpoint``, ``vae``
and ``family``), then each tab inside ``page.tabs``, then calls ``page.finish()``, which runs the
functions queued with ``after_build`` (in the order they were queued). Nothing here is global: a
second ``build_ui`` gets its own context.

API for tab authors (stable):

* ``page.tabs``: the ``gr.Tabs``; tab ids are ``TAB_IDS`` ("txt2img", "img2img", "inpaint",
  "png_info", "outputs", "extensions", "settings", "models"). ``gr.Tabs(selected="img2img")`` as an output
  update switches tab.
* ``page.checkpoint`` / ``page.vae``: the model bar's dropdowns (values: catalog names; the VAE
  "Automatic" = the checkpoint's own). ``page.family``: a ``gr.State`` with the id of the family this
  browser page shows ("" while no model is loaded).
* ``page.register_paste_target(PasteTarget(tab, controls, image, image_value))``: a generation tab
  that other tabs can fill ("Send to img2img", PNG Info's "Send to ..."). ``image`` is the component
  that receives the image (None for txt2img); ``image_value(pil) -> value`` converts the PIL image
  to that component's value (default: the PIL image itself; an ImageEditor wants a dict).
* ``page.send_button(button, target_tab, inputs, read)``: wires ``button`` (after the build, so the
  target may be built later) to fill ``target_tab`` from ``read(*input_values) -> (pil_or_None,
  infotext)`` and switch to it. A missing target makes the button hidden, never an error. A pasted
  value the target cannot use is named in the target's ``<t>_error`` box, never dropped silently.
* ``page.backend``: the ``webui.backend.Backend`` the page talks to (plain data in and out).
* ``page.on_family_change(outputs, fn, inputs=())``: ``fn(family_or_None, changed, *input_values) ->
  one update per output`` (``family``: a ``webui.backend.FamilyInfo``) runs after every model switch (and on page load, and after each
  generation); ``changed`` is True only on page load when a model is loaded: the moment to show the
  family's defaults. After a switch the user's values stay (A1111); ``inputs`` give ``fn`` the
  values to check against the new family. Register during the build, not in ``after_build``.
* ``page.follow_model(event, reset_defaults=False, status=False)``: chain the model sync after an
  event (the model bar and the runner's Generate do this; a job may load a checkpoint).
* ``page.on_load(fn, inputs, outputs)``: run ``fn`` on every page load (e.g. the Settings tab shows
  the current values, not those of start-up). ``page.blocks`` is the ``gr.Blocks``.
* ``page.after_build(fn)``: run ``fn()`` once every tab exists (inside the Blocks context).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from webui.backend import Backend

TAB_IDS = ("txt2img", "img2img", "inpaint", "extras", "png_info", "outputs", "extensions", "settings", "models")


@dataclass
class PasteTarget:
    """A tab whose controls can be filled from an infotext (and whose image input can be set)."""

    tab: str
    controls: Any  # webui.ui.controls.Controls
    image: Any = None  # component receiving a sent image (gr.Image, gr.ImageEditor) or None
    image_value: Callable[[Any], Any] | None = None  # PIL image -> value for ``image``


@dataclass
class FamilyListener:
    outputs: list[Any]
    fn: Callable[..., Sequence[Any]]  # (FamilyInfo | None, changed, *input values) -> one update per output
    inputs: list[Any] = field(default_factory=list)


@dataclass
class PageContext:
    backend: Backend
    blocks: Any = None
    tabs: Any = None
    checkpoint: Any = None
    vae: Any = None
    model_status: Any = None
    model_details: Any = None  # the loaded model's memory/speed notes, folded away under the status line
    family: Any = None
    paste_targets: dict[str, PasteTarget] = field(default_factory=dict)
    image_targets: dict[str, Any] = field(default_factory=dict)  # tab -> image input that takes a sent image (Extras)
    family_listeners: list[FamilyListener] = field(default_factory=list)
    # Per-UI caches (no globals).
    cache: dict[str, Any] = field(default_factory=dict)
    _deferred: list[Callable[[], None]] = field(default_factory=list)
    _finished: bool = False

    # -- registries -------------------------------------------------------------------------------
    def register_paste_target(self, target: PasteTarget) -> None:
        if target.tab in self.paste_targets:
            raise ValueError(f"tab {target.tab!r} registered a paste target twice")
        self.paste_targets[target.tab] = target

    def on_family_change(
        self, outputs: Sequence[Any], fn: Callable[..., Sequence[Any]], inputs: Sequence[Any] = ()
    ) -> None:
        if self._finished:
            raise RuntimeError("register family listeners while the tabs are built, not after")
        self.family_listeners.append(FamilyListener(list(outputs), fn, list(inputs)))

    def on_load(self, fn: Callable[..., Any], inputs: Sequence[Any] = (), outputs: Sequence[Any] = ()) -> None:
        """Run ``fn`` each time a browser loads the page (outside the queue: it must be quick)."""

        def wire() -> None:
            self.blocks.load(fn, inputs=list(inputs), outputs=list(outputs), queue=False, show_progress="hidden")

        self.after_build(wire)

    def after_build(self, fn: Callable[[], None]) -> None:
        if self._finished:
            fn()
        else:
            self._deferred.append(fn)

    def finish(self) -> None:
        """Run the deferred wiring (the shell calls this once, inside the Blocks context)."""
        while self._deferred:
            self._deferred.pop(0)()
        self._finished = True

    # -- model sync -------------------------------------------------------------------------------
    def sync_inputs(self) -> list[Any]:
        """The family this page shows, then every listener's inputs (``sync_updates``' arguments)."""
        inputs = [self.family]
        for listener in self.family_listeners:
            inputs.extend(listener.inputs)
        return inputs

    def sync_outputs(self) -> list[Any]:
        outputs = [self.checkpoint, self.family, self.model_status, self.model_details]
        for listener in self.family_listeners:
            outputs.extend(listener.outputs)
        return outputs

    def sync_updates(
        self, shown_family: str | None, *values: Any, reset_defaults: bool = True, status: bool = True
    ) -> list[Any]:
        """Updates for ``sync_outputs()``: the checkpoint list, the family id, the status line and its
        details, every listener.

        ``values``: the listeners' input values in ``sync_inputs()`` order (missing ones are None).
        Listeners see ``changed`` True only with ``reset_defaults`` (the page load) and a family that
        differs from ``shown_family``. ``status`` rewrites the status line when the family changed
        (the load event writes its own).
        """
        import gradio as gr

        from webui.ui.model_bar import checkpoint_update, details_text, status_line

        loaded = self.backend.loaded()  # asked once: every update below describes the same model
        family = loaded.family if loaded is not None else None
        family_id = family.id if family is not None else ""
        changed = family_id != (shown_family or "")
        line = status_line(loaded) if status and changed and family is not None else gr.update()
        name = loaded.name if loaded is not None else None
        details = details_text(loaded.notes if loaded is not None else ())
        updates: list[Any] = [checkpoint_update(self.backend, name), family_id, line, details]
        values = list(values)
        for listener in self.family_listeners:
            mine = [values.pop(0) if values else None for _ in listener.inputs]
            got = list(listener.fn(family, changed and reset_defaults, *mine))
            if len(got) != len(listener.outputs):
                raise ValueError(f"a family listener returned {len(got)} updates for {len(listener.outputs)} outputs")
            updates.extend(got)
        return updates

    def follow_model(self, event: Any, *, reset_defaults: bool = False, status: bool = False) -> None:
        """Chain the model sync after ``event`` (wired once every tab exists).

        ``reset_defaults``: a family change resets steps/CFG/size/sampler to the family's defaults
        (only the page load does this); False keeps the user's values and changes only what the new
        family cannot use (A1111 keeps them across a switch).
        """

        def sync(shown: str | None, *values: Any) -> list[Any]:
            return self.sync_updates(shown, *values, reset_defaults=reset_defaults, status=status)

        def wire() -> None:
            event.then(
                sync, inputs=self.sync_inputs(), outputs=self.sync_outputs(), queue=False, show_progress="hidden"
            )

        self.after_build(wire)

    # -- sending infotext + image to a tab ---------------------------------------------------------
    def send_button(
        self, button: Any, target_tab: str, inputs: Sequence[Any], read: Callable[..., tuple[Any, str]]
    ) -> None:
        """Fill ``target_tab`` from ``read(*values) -> (image or None, infotext)`` and switch to it."""

        def wire() -> None:
            import gradio as gr

            target = self.paste_targets.get(target_tab)
            if target is None:
                button.visible = False
                return
            c = target.controls
            outputs = [*c.field_components(), *([target.image] if target.image else []), c.error, self.tabs]

            def send(*values: Any) -> list[Any]:
                *values, sampler = values  # the target's sampler: the schedule type is checked against it
                image, text = read(*values)
                updates, notes = self.paste_parts(target, image, text, sampler)
                return [*updates, " ".join(notes), gr.Tabs(selected=target.tab)]

            sampler = c.fields["sampler_name"]
            button.click(send, inputs=[*inputs, sampler], outputs=outputs, show_progress="hidden")

        self.after_build(wire)

    def send_image_button(
        self, button: Any, target_tab: str, inputs: Sequence[Any], read: Callable[..., tuple[Any, str]]
    ) -> None:
        """Like ``send_button`` for a tab with no generation controls (Extras): only the image goes."""

        def wire() -> None:
            import gradio as gr

            target = self.image_targets.get(target_tab)
            if target is None:
                button.visible = False
                return

            def send(*values: Any) -> list[Any]:
                image, _ = read(*values)
                if image is None:
                    gr.Info("Generate or select an image first.")
                    return [gr.update(), gr.update()]
                return [image, gr.Tabs(selected=target_tab)]

            button.click(send, inputs=list(inputs), outputs=[target, self.tabs], show_progress="hidden")

        self.after_build(wire)

    def paste_updates(self, target: PasteTarget, image: Any, text: str, current_sampler: str | None = None) -> list:
        """Updates for ``target``'s fields (+ its image when it has one) from an infotext."""
        return self.paste_parts(target, image, text, current_sampler)[0]

    def paste_parts(
        self, target: PasteTarget, image: Any, text: str, current_sampler: str | None = None
    ) -> tuple[list[Any], list[str]]:
        """(``paste_updates``, a note for each pasted value the target cannot use as it is)."""
        import gradio as gr

        values, said = target.controls.infotext_values(text or "")
        updates, notes = target.controls.paste_values(values, self.backend, current_sampler)
        notes = [*said, *notes]
        if target.image is not None:
            if image is None:
                updates.append(gr.update())
            else:
                updates.append(target.image_value(image) if target.image_value else image)
        return updates, notes
