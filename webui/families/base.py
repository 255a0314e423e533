"""FamilyAdapter: everything the app knows about one model family, in one object.

A family (SD 1.x, SD 2.x, SDXL, SDXL refiner, SD3 ...) is one module in this package that builds one
adapter (``sd15.py``, ``sdxl.py`` ...). The adapter carries the family's data (label, sizes, prediction,
text encoders, pipeline classes: what ``FamilySpec`` carried) and answers every family question the rest
of the app asks: is this file or folder mine, what configs does a single file need, how are prompts
encoded, which samplers, which LoRAs fit, which memory modes apply, how is a tiny demo model built.
Code outside ``webui.families`` asks the adapter and never names a family id.

The shared behaviour of the two denoiser layouts lives in ``unet.py`` (SD1/SD2/SDXL) and ``sd3.py``
(the MMDiT); this module holds the base class and the plain data types the adapters are made of.
Nothing here imports torch or diffusers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from webui.models.safetensors_header import ModelFileError

TASKS = ("txt2img", "img2img", "inpaint")

# Key prefixes of the original single-file layouts (LDM / SGM / SD3) that every family shares.
DM = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."

# How specifically a family recognises a file, a folder or a LoRA. The detector asks every family and
# takes the highest answer (ties: the family registered first); NO_MATCH means "not mine".
NO_MATCH = 0
LAYOUT = 10  # the denoiser's layout alone: a UNet, an SD3-style MMDiT, a listed pipeline class
SHAPE = 20  # a telling width: the cross-attention context, the text encoder, qk-norm
STRUCTURE = 30  # a part only this family has: SDXL's added embedding, SD3.5 Medium's second attention
TEXT_ENCODERS_MATCH = 40  # the family's own text encoders at their place in the file
NAMES = 50  # names only this family's files use (SD3's joint blocks in a LoRA)


class UnsupportedModelError(ModelFileError):
    """The file is readable but is not something this app can use in that place."""


@dataclass(frozen=True)
class TextEncoderSpec:
    id: str
    label: str
    # "clip", "clip_with_projection" or "t5"
    kind: str
    hidden_size: int
    # token used for padding by the tokenizer of this slot
    pad_token: str


TEXT_ENCODERS: Mapping[str, TextEncoderSpec] = {
    "clip_l": TextEncoderSpec("clip_l", "CLIP ViT-L/14", "clip", 768, "<|endoftext|>"),
    "clip_g": TextEncoderSpec("clip_g", "OpenCLIP ViT-bigG/14", "clip_with_projection", 1280, "!"),
    "openclip_h": TextEncoderSpec("openclip_h", "OpenCLIP ViT-H/14", "clip", 1024, "!"),
    "t5xxl": TextEncoderSpec("t5xxl", "T5-XXL encoder", "t5", 4096, "<pad>"),
}


@dataclass(frozen=True)
class FilePart:
    """Where one part of a checkpoint sits in the family's original single-file layout."""

    component: str  # the diffusers pipeline attribute: "unet", "vae", "text_encoder_2" ...
    prefix: str  # key prefix of the part's tensors in the file
    # "unet" (LDM UNet), "mmdit" (SD3), "vae" (LDM VAE), "hf" (transformers CLIP keys under the prefix),
    # "openclip" (``transformer.resblocks.N``), "t5" (transformers T5 keys)
    layout: str
    marker: str = ""  # the prefix whose presence says the file carries the part ("" = prefix)
    logit_scale: bool = False  # OpenCLIP written with its logit_scale (SDXL base files carry it)

    @property
    def present_prefix(self) -> str:
        return self.marker or self.prefix


@dataclass(frozen=True)
class ClipSlot:
    """One CLIP text encoder of a pipeline and how its output is read (``webui.generation.conditioning``)."""

    tokenizer: str  # pipeline attribute names
    encoder: str
    # "last": hidden_states[-clip_skip] through final_layer_norm (SD1/SD2);
    # "penultimate": hidden_states[-(clip_skip + 1)] as is (SDXL, SD3)
    layer: str
    pooled: bool  # contributes its projected pooled output
    required: bool = True  # False: skipped when the pipeline has None there (SDXL refiner's CLIP-L)


@dataclass(frozen=True)
class TextRecipe:
    """How a family turns prompts into the embeddings its pipeline takes."""

    slots: tuple[ClipSlot, ...]
    pooled: bool  # the pipeline takes pooled_prompt_embeds
    t5: bool  # SD3: T5 tokens (or zeros) appended along the sequence
    zeros_for_empty_negative: bool  # honour pipe.config.force_zeros_for_empty_prompt


# (channels x RGB matrix, RGB bias) of the live preview's linear latent-to-RGB projection
PreviewFactors = tuple[list[list[float]], list[float]]


@dataclass(frozen=True)
class DownloadDefault:
    """A checkpoint of the family the app offers to download when the user has none (``webui.models.download``)."""

    label: str
    url: str
    file_name: str
    size: int | None  # bytes; None when not known for sure
    sha256: str | None  # None when not known for sure: the safetensors header is checked instead
    license: str
    page: str  # the model card, where the licence is accepted/read


@dataclass(frozen=True)
class Recognised:
    """What a family read from a file or folder it recognised (``webui.models.identify`` makes the record)."""

    components: frozenset[str]  # "unet"/"transformer", "vae", and text encoder slot ids
    in_channels: int
    denoiser_prefix: str = ""  # key prefix of the denoiser in a single file ("" in a folder or a bare file)
    variant: str = ""  # "", "inpaint", "v_pred"
    notes: tuple[str, ...] = ()


# The control models a family can take (``webui.control.files``): ControlNet, T2I-Adapter, IP-Adapter.
CONTROL_MODEL_KINDS = ("controlnet", "t2i_adapter", "ip_adapter")


@dataclass(frozen=True)
class ControlFacts:
    """What a control model's tensor shapes say about the model it was made for (``match_control`` reads it)."""

    kind: str  # one of CONTROL_MODEL_KINDS
    denoiser: str  # "unet" or "mmdit"
    context_dim: int | None = None  # cross-attention width (UNet ControlNets, IP-Adapters)
    added_embedding: int | None = None  # input width of SDXL's added embedding (ControlNets); None: none
    downscale: int | None = None  # T2I-Adapter: the pixel-unshuffle factor of its first layer
    joint: bool = True  # SD3 ControlNets: has joint (text) blocks (SD3 Medium); False: SD3.5 Large style


@dataclass(frozen=True)
class FamilyAdapter:
    """One model family: its data, and the answers to every family question.

    The fields up to ``reference`` are the family's data as ``FamilySpec`` held it; the rest say how the
    family's behaviour differs where code used to branch on its id. Subclasses (``unet.UnetFamily``,
    ``sd3.Sd3Family``) implement recognition, config inference and the tiny demo model.
    """

    id: str
    label: str
    # "unet" or "mmdit": which denoiser the checkpoint carries.
    denoiser: str
    # diffusers pipeline class per task.
    pipelines: Mapping[str, str]
    default_size: tuple[int, int]
    # "eps", "v" or "flow".
    prediction: str
    latent_channels: int
    vae_scaling_factor: float
    vae_shift_factor: float | None
    # Text encoder slots in pipeline order; each is a TEXT_ENCODERS key.
    text_encoders: tuple[str, ...]
    # LoRAs made for this group fit (SDXL base and refiner differ; SD3 and SD3.5 share a group
    # only when their transformers have the same shapes, which the LoRA loader checks).
    lora_group: str
    default_steps: int = 20
    default_cfg: float = 7.0
    # (width, height) sizes the model was trained on; the UI offers them as presets.
    resolution_presets: tuple[tuple[int, int], ...] = ()
    # Configuration values of the reference model; the loader overrides any that
    # the checkpoint's tensor shapes say are different.
    reference: Mapping[str, object] = field(default_factory=dict)

    # --- behaviour as data ---------------------------------------------------------------------------
    # Sampler kind (webui.generation.samplers): "noise" (eps / v models) or "flow" (rectified flow).
    sampler_kind: str = "noise"
    # Part name ("unet"/"transformer", "vae", text encoder slot) -> where it sits in a single file, in file order.
    file_parts: Mapping[str, FilePart] = field(default_factory=dict)
    # model_index.json ``_class_name`` values of diffusers folders this family reads.
    folder_classes: tuple[str, ...] = ()
    # Pipeline flags and never-loaded components written into the config folder of a single file.
    index_flags: Mapping[str, object] = field(default_factory=dict)
    null_components: tuple[str, ...] = ()
    # The scheduler config the family's diffusers repository ships (prediction type and shift added per file).
    scheduler: Mapping[str, object] = field(default_factory=dict)
    conditioning: TextRecipe | None = None
    # Takes textual-inversion embeddings (webui.models.embeddings): one vector set per text encoder slot.
    textual_inversion: bool = False
    preview_factors: PreviewFactors | None = None
    # diffusers' AysSchedules table for the Align Your Steps schedule ("" = none was measured for the family).
    ays_table: str = ""
    # Memory modes made for some families only that this one can use (webui.memory.modes).
    memory_modes: tuple[str, ...] = ()
    # The LoRA group's name for people, and the LoRA groups this family can use (default: its own).
    lora_label: str = ""
    lora_accepts: tuple[str, ...] = ()
    # SDXL's added size conditioning: how many numbers the UNet reads (base 6, refiner 5; 0 = none).
    added_time_ids: int = 0
    # Families whose checkpoints can take over the last steps of this one (the SDXL refiner hand-off).
    refiners: tuple[str, ...] = ()
    # SD2: attention computed in fp32 (its released config says so; shapes cannot).
    upcast_attention: bool = False
    # SD3 reads CLIP-L's pooled output unprojected: a CLIPTextModelWithProjection with an identity projection.
    pooled_clip_l: bool = False
    # The VAE has quant convs (SD1/SDXL; SD3's 16-channel VAE has none).
    vae_quant_conv: bool = True
    # Key prefixes a text encoder cut out of this family's checkpoint keeps (SD3: text_encoders.<slot>.transformer.).
    text_encoder_file_prefixes: tuple[str, ...] = ()
    # Tiny random-weight model (webui.models.demo): buildable, with an inpaint variant, offered as a demo model.
    tiny: bool = False
    tiny_inpaint: bool = False
    demo: bool = False
    # The pipeline components the family's demo LoRA targets (webui.models.demo_lora).
    demo_lora_components: tuple[str, ...] = ()
    # Written back in the original layout by webui.models.ldm_export.
    exportable: bool = False
    download: DownloadDefault | None = None
    # Control models (CONTROL_MODEL_KINDS) the family can use, and its T2I-Adapters' unshuffle factor (0 = none).
    control_kinds: tuple[str, ...] = ()
    t2i_downscale: int = 0

    # The denoiser's pipeline attribute and its name for people (set by the subclasses).
    denoiser_component = "unet"
    denoiser_label = "UNet"

    @property
    def is_flow(self) -> bool:
        return self.prediction == "flow"

    @property
    def takes_size_conditioning(self) -> bool:
        """The pipeline takes SDXL's original_size / target_size / crops_coords_top_left."""
        return self.added_time_ids > 0

    def text_slots(self) -> dict[str, str]:
        """Text encoder slot id -> pipeline component name (``text_encoder``, ``text_encoder_2`` ...)."""
        return {slot: self.file_parts[slot].component for slot in self.text_encoders}

    def text_parts(self) -> dict[str, FilePart]:
        return {slot: self.file_parts[slot] for slot in self.text_encoders}

    def pipeline_for(self, record: Any) -> str:
        """The pipeline class that loads a checkpoint of this family (``record``: its ``ModelRecord``)."""
        return self.pipelines["txt2img"]

    def accepts_refiner(self, other: FamilyAdapter) -> bool:
        """A checkpoint of ``other`` can take over this family's last steps (the refiner hand-off)."""
        return other.id in self.refiners

    def applies_memory_mode(self, name: str) -> bool:
        return name in self.memory_modes

    # --- recognition (implemented by the layout classes) ----------------------------------------------
    def match_file(self, header: Any) -> int:
        """How specifically this family recognises a single file's header (NO_MATCH ... NAMES)."""
        return NO_MATCH

    def read_file(self, header: Any) -> Recognised:
        raise NotImplementedError

    def match_folder(self, folder: Any) -> int:
        """How specifically this family recognises a diffusers folder (a ``identify.FolderView``)."""
        return NO_MATCH

    def read_folder(self, folder: Any) -> Recognised:
        raise NotImplementedError

    def match_control(self, facts: ControlFacts) -> int:
        """How specifically this family recognises a control model from its ``ControlFacts`` (NO_MATCH ... NAMES)."""
        return NO_MATCH

    # --- configs for single files -----------------------------------------------------------------------
    def denoiser_config(self, shapes: Mapping[str, tuple[int, ...]], record: Any) -> dict:
        """The diffusers config of the denoiser, read from a single file's tensor shapes."""
        raise NotImplementedError

    def scheduler_config(self, variant: str = "") -> dict:
        """The family's original scheduler config; ``variant`` "v_pred" for a v-prediction file."""
        config = dict(self.scheduler)
        v = self.prediction == "v" or variant == "v_pred"
        config["prediction_type"] = "v_prediction" if v else "epsilon"
        return config

    # --- LoRA --------------------------------------------------------------------------------------------
    def lora_evidence(self, layers: list[Any]) -> int:
        """How specifically a LoRA's layers (``lora_keys.LoraLayer``) say it was trained for this family."""
        return NO_MATCH

    def accepts_lora_group(self, group: str) -> bool:
        return group in (self.lora_accepts or (self.lora_group,))

    def kohya_lora_targets(self, name: str, in_features: int, out_features: int) -> tuple[tuple[str, ...], int] | None:
        """The module paths one kohya denoiser layer patches and the out features of each, or None
        (only for denoisers whose kohya names diffusers does not map itself)."""
        return None

    def convert_kohya_lora(self, state_dict: Mapping, te_aliases: Mapping) -> tuple[dict, list[str]] | None:
        """A kohya LoRA state dict in diffusers keys (state dict, skipped names); None: diffusers reads it."""
        return None

    # --- tiny demo model ------------------------------------------------------------------------------
    def tiny_parts(self, inpaint: bool) -> dict:
        """The modules of the tiny random-weight pipeline (``webui.models.demo``), scheduler excepted."""
        raise NotImplementedError(f"{self.label} has no tiny demo model")
