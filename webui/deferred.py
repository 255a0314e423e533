"""A value made once on a background thread: start-up work that the first page need not wait for.

``Deferred(make, name)`` does nothing when built; ``start()`` runs ``make`` on a daemon thread (once),
``get()`` waits for its value (starting it if nobody has) and raises what it raised, ``ready()`` says
whether it has finished. The app builds one in ``webui.app`` for importing torch and diffusers and choosing
the device, and starts it once the server listens.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Deferred(Generic[T]):
    def __init__(self, make: Callable[[], T], name: str) -> None:
        self._make = make
        self._name = name
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._value: T | None = None
        self._error: BaseException | None = None

    def start(self) -> Deferred[T]:
        """Begin the work on its own thread (a second call does nothing)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self._value = self._make()
        except BaseException as exc:  # kept for get(), which raises it in the caller's thread
            self._error = exc
        finally:
            self._done.set()

    def get(self) -> T:
        """The value, once made (waits; starts the work if nobody has); raises what making it raised."""
        self.start()
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    def ready(self) -> bool:
        """Whether the work has finished (with a value or an error): ``get()`` would not wait."""
        return self._done.is_set()

    def error(self) -> BaseException | None:
        """What making the value raised, once finished; None while it runs or when it succeeded."""
        return self._error if self._done.is_set() else None
