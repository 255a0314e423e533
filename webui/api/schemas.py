"""Pydantic models of the A1111-compatible ``/sdapi/v1`` API: requests, responses, errors.

Field names and defaults are A1111's (``modules/api/models.py`` in A1111 1.10), so existing
clients send what they always sent. Every field also accepts ``null`` (some clients send it
for "not set"): ``None`` means "the app's default" (the loaded family's steps, CFG and size).
Fields we do not support (restore_faces, tiling, eta, s_churn ...) are accepted and ignored;
a few extra fields of ours (rng, use_t5, shift, SDXL size conditioning) use the names of
``GenerationRequest``. Unknown keys are accepted too (``extra="allow"``) and logged.

No torch here: the OpenAPI docs and the UI may import this module freely.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class Txt2ImgRequest(_Lenient):
    """``POST /sdapi/v1/txt2img``. None = the loaded model's default (A1111: 512x512, 50 steps, CFG 7)."""

    prompt: str | None = ""
    negative_prompt: str | None = ""
    styles: list[str] | None = Field(None, description="names of styles.csv's prompt styles, applied in order")
    seed: int | None = -1
    subseed: int | None = -1
    subseed_strength: float | None = 0.0
    seed_resize_from_h: int | None = -1
    seed_resize_from_w: int | None = -1
    sampler_name: str | None = Field(None, description="e.g. 'Euler a', 'DPM++ 2M' (None = Euler, A1111's API default)")
    sampler_index: str | None = Field(None, description="legacy name of sampler_name; used when that is empty")
    scheduler: str | None = Field(None, description="schedule type, e.g. 'Karras' (None = Automatic)")
    batch_size: int | None = 1
    n_iter: int | None = 1
    steps: int | None = None
    cfg_scale: float | None = None
    width: int | None = None
    height: int | None = None
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool | None = False
    do_not_save_grid: bool | None = False
    eta: float | None = None
    denoising_strength: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = Field(
        None,
        description="sd_model_checkpoint, sd_vae, CLIP_stop_at_last_layers, randn_source, sd3_enable_t5, "
        "samples_format are applied; other keys are ignored",
    )
    override_settings_restore_afterwards: bool | None = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool | None = False
    firstpass_image: str | None = None
    comments: dict[str, Any] | None = None
    enable_hr: bool | None = False
    firstphase_width: int | None = 0
    firstphase_height: int | None = 0
    hr_scale: float | None = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int | None = 0
    hr_resize_x: int | None = 0
    hr_resize_y: int | None = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str | None = ""
    hr_negative_prompt: str | None = ""
    force_task_id: str | None = None
    script_name: str | None = Field(None, description="'x/y/z plot' (script_args: A1111's 18 x/y/z arguments); any other is refused")
    script_args: list[Any] | None = None
    alwayson_scripts: dict[str, Any] | None = None
    send_images: bool | None = True
    save_images: bool | None = False
    infotext: str | None = Field(None, description="A1111 infotext; its values fill the fields not given")
    # ours (GenerationRequest names)
    rng: str | None = Field(None, description="'GPU' or 'CPU' noise (A1111: override_settings.randn_source)")
    use_t5: bool | None = Field(None, description="SD3: use the T5 text encoder")
    shift: float | None = Field(None, description="SD3 flow shift (0 = the model's own)")
    original_width: int | None = None
    original_height: int | None = None
    crop_left: int | None = None
    crop_top: int | None = None
    target_width: int | None = None
    target_height: int | None = None


class Img2ImgRequest(Txt2ImgRequest):
    """``POST /sdapi/v1/img2img``; a ``mask`` makes it an inpaint job (white = repaint)."""

    init_images: list[str] | None = Field(None, description="base64 images (a data: URL prefix is fine)")
    resize_mode: int | None = 0
    image_cfg_scale: float | None = None
    denoising_strength: float | None = 0.75
    mask: str | None = Field(None, description="base64 mask; white = repaint (an RGBA mask uses its alpha)")
    mask_blur_x: int | None = 4
    mask_blur_y: int | None = 4
    mask_blur: int | None = None
    mask_round: bool | None = True
    inpainting_fill: int | None = Field(0, description="0 fill, 1 original, 2 latent noise, 3 latent nothing")
    inpaint_full_res: bool | None = Field(True, description="True = only the masked area (A1111's API default)")
    inpaint_full_res_padding: int | None = 0
    inpainting_mask_invert: int | None = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool | None = Field(False, description="echo init_images and mask in 'parameters'")


class GenerationResponse(BaseModel):
    images: list[str] = Field(description="base64 PNGs with the infotext in their 'parameters' text chunk")
    parameters: dict[str, Any] = Field(description="the request as received (image payloads left out)")
    info: str = Field(description="JSON string: A1111's Processed.js() fields")


class ProgressState(BaseModel):
    skipped: bool = False
    interrupted: bool = False
    stopping_generation: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0
    queue_size: int = Field(0, description="jobs waiting behind the running one (ours)")


class ProgressResponse(BaseModel):
    progress: float = Field(description="0..1 over the whole job")
    eta_relative: float = Field(description="seconds left (estimate)")
    state: ProgressState
    current_image: str | None = Field(None, description="base64 PNG of the latest live preview")
    textinfo: str | None = None


class ControlResponse(BaseModel):
    """Interrupt/skip: A1111 returns ``{}``; we say whether a running job was found."""

    done: bool
    job: str = ""


class SdModelItem(BaseModel):
    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None
    family: str | None = None


class VaeItem(BaseModel):
    model_name: str
    filename: str


class LoraItem(BaseModel):
    name: str
    alias: str
    path: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class SamplerItem(BaseModel):
    name: str
    aliases: list[str] = Field(default_factory=list)
    options: dict[str, Any] = Field(default_factory=dict)


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float = -1
    need_inner_model: bool = False


class UpscalerItem(BaseModel):
    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class PromptStyleItem(BaseModel):
    name: str
    prompt: str | None = None
    negative_prompt: str | None = None


class RefreshResponse(BaseModel):
    count: int = Field(description="entries of that kind after the rescan")


class OptionsUpdateResponse(BaseModel):
    """A1111 returns null; we list what was applied and what was ignored (and logged)."""

    applied: list[str]
    ignored: list[str]


class PngInfoRequest(BaseModel):
    image: str = Field(description="base64 image (PNG, JPEG or WebP)")


class PngInfoResponse(BaseModel):
    info: str = Field(description="the infotext ('' when the image has none)")
    items: dict[str, Any] = Field(description="the image's other text chunks")
    parameters: dict[str, Any] = Field(description="the infotext parsed into A1111's keys")


class ErrorResponse(BaseModel):
    error: str = Field(description="RequestError, NotFound, QueueFull, GenerationFailed or ServerError")
    detail: str
    field: str | None = None
    valid: list[str] | None = None


# The options GET returns and POST accepts. POST applies the writable ones; the rest are ignored.
WRITABLE_OPTIONS = (
    "sd_model_checkpoint",
    "sd_vae",
    "CLIP_stop_at_last_layers",
    "sd_checkpoints_limit",
    "samples_format",
    "show_progress_every_n_steps",
    "randn_source",
    "sd3_enable_t5",
)


class EmbeddingItem(BaseModel):
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    shape: int
    vectors: int


class EmbeddingsResponse(BaseModel):
    """A1111's ``GET /sdapi/v1/embeddings``: the embeddings the loaded model uses, and those it skips."""

    loaded: dict[str, EmbeddingItem]
    skipped: dict[str, EmbeddingItem]
