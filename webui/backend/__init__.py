"""The backend: everything the UI and the API ask of the app, as plain data in and out.

``Backend`` (``protocol``) is the set of methods; ``records`` holds the data they take and return
and the errors they raise; ``LocalBackend`` (``local``) implements them in this process over the
app's services. ``webui.app`` builds the one backend; the UI and the API get it and nothing else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from webui.backend.output_records import OutputEntry, OutputInfo, OutputPage, OutputTrashed
from webui.backend.protocol import Backend
from webui.backend.records import (
    VAE_NONE,
    BackendError,
    Busy,
    ControlResult,
    DownloadChoice,
    ExtensionSetting,
    FamilyChoices,
    FamilyInfo,
    Folders,
    JobOutcome,
    JobProgress,
    JobSnapshot,
    LoadedModel,
    LoadReport,
    LoraInfo,
    MemoryUsage,
    ModelInfo,
    NotEnoughMemory,
    NotFound,
    QueueEntry,
    QueueFull,
    QueueList,
    QueueState,
    Refusal,
    Refused,
    RuntimeOptions,
    SamplerInfo,
    ScheduleInfo,
    Step,
    StyledPrompt,
    StyleInfo,
    TaskFailed,
    TokenCount,
)

if TYPE_CHECKING:
    from webui.backend.local import LocalBackend

__all__ = [
    "VAE_NONE",
    "Backend",
    "BackendError",
    "Busy",
    "ControlResult",
    "DownloadChoice",
    "ExtensionSetting",
    "FamilyChoices",
    "FamilyInfo",
    "Folders",
    "JobOutcome",
    "JobProgress",
    "JobSnapshot",
    "LoadReport",
    "LoadedModel",
    "LocalBackend",
    "LoraInfo",
    "MemoryUsage",
    "ModelInfo",
    "NotEnoughMemory",
    "NotFound",
    "OutputEntry",
    "OutputInfo",
    "OutputPage",
    "OutputTrashed",
    "QueueEntry",
    "QueueFull",
    "QueueList",
    "QueueState",
    "Refusal",
    "Refused",
    "RuntimeOptions",
    "SamplerInfo",
    "ScheduleInfo",
    "Step",
    "StyleInfo",
    "StyledPrompt",
    "TaskFailed",
    "TokenCount",
]


def __getattr__(name: str) -> Any:  # LocalBackend on first use: the UI and API need only the protocol
    if name == "LocalBackend":
        from webui.backend.local import LocalBackend

        return LocalBackend
    raise AttributeError(f"module 'webui.backend' has no attribute {name!r}")
