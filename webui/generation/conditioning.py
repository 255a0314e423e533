"""Text conditioning with A1111 prompt weights: the embeddings we pass to diffusers pipelines.

Diffusers does not parse ``(word:1.3)``; we tokenize with ``prompts.py``, encode each 77-token chunk,
weight it, and hand the pipeline ``prompt_embeds=`` (and ``pooled_prompt_embeds=``) ourselves.

Per family (its adapter's ``conditioning``, a ``webui.families.base.TextRecipe``):

* SD1.x / SD2.x: one CLIP; ``clip_skip`` n (A1111 meaning, 1 = no skip) takes ``hidden_states[-n]``
  through the encoder's final LayerNorm (n = 1 is ``last_hidden_state``).
* SDXL: CLIP-L and OpenCLIP-bigG, ``hidden_states[-(n + 1)]`` (the penultimate layer at n = 1, no
  LayerNorm, as diffusers and SGM), concatenated to 2048 wide; pooled = bigG's projected output of
  the first chunk (A1111). The refiner has only bigG (1280 wide). The pipeline's
  ``force_zeros_for_empty_prompt`` (True for SDXL) is honoured as diffusers does when no negative
  prompt is given: an empty negative prompt becomes all-zero embeddings and pooled output.
* SD3 / 3.5: CLIP-L and CLIP-G as SDXL (768 + 1280), zero-padded to the transformer's
  ``joint_attention_dim``, then the T5 tokens (256, weights applied) along the sequence, or zeros
  of that shape when T5 is not loaded or ``use_t5`` is False; pooled = both CLIP pooled outputs.
  An empty negative prompt is encoded (no zeros), as the SD3 pipeline does.

So in every family our ``clip_skip`` n equals diffusers' ``clip_skip=n - 1``. Weighting is A1111's
"Original" emphasis: each token's embedding is multiplied by its weight, then the chunk is rescaled
so its mean equals the unweighted mean. The rescale is done per prompt and chunk (A1111 takes the
mean over the whole batch, so its result for one prompt depends on the other prompts in the batch).

Textual-inversion embeddings (``embeddings=``, SD1/SD2/SDXL): the chunks hold placeholder tokens where a
name appears (``embedding_tokens.py``) and each CLIP's token embeddings there are replaced by the file's
vectors for that one call; the weights then apply to them as to any token.
"""

from __future__ import annotations

from typing import Any

from webui.families.base import ClipSlot, FamilyAdapter, TextRecipe
from webui.families.registry import family_ids
from webui.generation.prompts import (
    CHUNK_LENGTH,
    EMPTY_CHUNK,
    PromptChunk,
    chunk_fragments,
    parse_prompt_attention,
    tokenize_fragments,
)
from webui.generation.requests import RequestError

T5_MAX_LENGTH = 256  # diffusers' SD3 default max_sequence_length


def _recipe(family: FamilyAdapter) -> TextRecipe:
    recipe = getattr(family, "conditioning", None)
    if recipe is None:
        known = ", ".join(family_ids(lambda f: f.conditioning is not None))
        raise ValueError(f"no text conditioning is defined for model family {family.id!r}; known: {known}")
    return recipe


def _present_slots(pipe: Any, recipe: TextRecipe, family_id: str) -> list[ClipSlot]:
    slots = []
    for slot in recipe.slots:
        if getattr(pipe, slot.encoder, None) is not None and getattr(pipe, slot.tokenizer, None) is not None:
            slots.append(slot)
        elif slot.required:
            raise ValueError(
                f"the {family_id} pipeline has no {slot.encoder}/{slot.tokenizer}; load a checkpoint that "
                "includes its text encoders, or supply them separately"
            )
    return slots


# --- tensors -------------------------------------------------------------------------------------


def _emphasize(z: Any, weights: Any) -> Any:
    """A1111 "Original" emphasis on ``z`` [N, L, D] with ``weights`` [N, L], per row."""
    if bool((weights == 1).all()):
        return z
    original = z.mean(dim=(1, 2), keepdim=True)
    z = z * weights.unsqueeze(-1).to(z.dtype)
    new = z.mean(dim=(1, 2), keepdim=True)
    scale = original / new
    return z * scale.where(new != 0, scale.new_ones(()))


def _final_layer_norm(encoder: Any) -> Any:
    """The CLIP final LayerNorm: flat in transformers 5 ``CLIPTextModel``, under ``.text_model`` otherwise."""
    norm = getattr(encoder, "final_layer_norm", None) or getattr(
        getattr(encoder, "text_model", None), "final_layer_norm", None
    )
    if norm is None:
        raise ValueError(f"{type(encoder).__name__} has no final_layer_norm; clip skip needs a CLIP text encoder")
    return norm


def _hidden(encoder: Any, output: Any, slot: ClipSlot, clip_skip: int) -> Any:
    if slot.layer == "last" and clip_skip == 1:
        return output.last_hidden_state
    depth = clip_skip if slot.layer == "last" else clip_skip + 1
    states = output.hidden_states
    if depth > len(states):
        raise RequestError(
            "clip_skip",
            f"clip skip {clip_skip} is too large for {slot.encoder} ({len(states) - 1} layers); "
            f"use at most {len(states) - (slot.layer != 'last')}"
        )
    return _final_layer_norm(encoder)(states[-depth]) if slot.layer == "last" else states[-depth]


def _encode_slot(
    pipe: Any, slot: ClipSlot, rows: list[list[PromptChunk]], clip_skip: int, device: Any, vectors: Any = None
):
    """Encode every row's chunks with one CLIP: ([R, n*77, D], pooled of chunk 0 [R, P] or None).

    ``vectors``: embedding name -> [n, D] vectors of this encoder, put where the chunks placed the embeddings."""
    import torch

    from webui.generation.embedding_tokens import inserted

    tokenizer, encoder = getattr(pipe, slot.tokenizer), getattr(pipe, slot.encoder)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    padded = [chunk.padded(tokenizer.bos_token_id, tokenizer.eos_token_id, pad) for row in rows for chunk in row]
    ids = torch.tensor([p[0] for p in padded], dtype=torch.long, device=device)
    weights = torch.tensor([p[1] for p in padded], dtype=torch.float32, device=device)
    need_states = slot.layer == "penultimate" or clip_skip > 1
    flat = [chunk for row in rows for chunk in row]
    fixes = [(i, 1 + at, vectors[name]) for i, c in enumerate(flat) for at, name in getattr(c, "fixes", ())]
    with inserted(encoder, fixes):
        output = encoder(ids, output_hidden_states=need_states)
    z = _emphasize(_hidden(encoder, output, slot, clip_skip), weights)
    n_rows, n_chunks = len(rows), len(rows[0])
    z = z.reshape(n_rows, n_chunks * (CHUNK_LENGTH + 2), z.shape[-1]).to(device=device, dtype=encoder.dtype)
    if not slot.pooled:
        return z, None
    pooled = getattr(output, "text_embeds", None)
    if pooled is None:
        raise ValueError(f"{slot.encoder} gives no projected pooled output; it must be a CLIPTextModelWithProjection")
    return z, pooled.reshape(n_rows, n_chunks, -1)[:, 0].to(device=device, dtype=encoder.dtype)


def _t5_ids(tokenizer: Any, fragments: list[tuple[str, float]], max_length: int) -> tuple[list[int], list[float]]:
    """T5 tokens of one prompt with weights: fragments joined (BREAK ignored), ``</s>``, padding."""
    ids: list[int] = []
    weights: list[float] = []
    for (_, weight), tokens in zip(fragments, tokenize_fragments(tokenizer, fragments)):
        ids += tokens
        weights += [weight] * len(tokens)
    ids, weights = ids[: max_length - 1] + [tokenizer.eos_token_id], weights[: max_length - 1] + [1.0]
    fill = max_length - len(ids)
    return ids + [tokenizer.pad_token_id] * fill, weights + [1.0] * fill


def _t5_embeds(pipe: Any, parsed: list[list[tuple[str, float]]], use_t5: bool, device: Any, dtype: Any) -> Any:
    """[R, 256, joint_attention_dim]: weighted T5 output, or zeros when T5 is absent or off (as diffusers)."""
    import torch

    encoder, tokenizer = getattr(pipe, "text_encoder_3", None), getattr(pipe, "tokenizer_3", None)
    if encoder is None or tokenizer is None or not use_t5:
        width = pipe.transformer.config.joint_attention_dim
        return torch.zeros((len(parsed), T5_MAX_LENGTH, width), device=device, dtype=dtype)
    rows = [_t5_ids(tokenizer, fragments, T5_MAX_LENGTH) for fragments in parsed]
    ids = torch.tensor([r[0] for r in rows], dtype=torch.long, device=device)
    weights = torch.tensor([r[1] for r in rows], dtype=torch.float32, device=device)
    return _emphasize(encoder(ids)[0], weights).to(device=device, dtype=dtype)


def _append_t5(clip: Any, t5: Any) -> Any:
    """SD3: CLIP embeddings zero-padded to the T5 width, then the T5 tokens after them."""
    import torch

    extra = t5.shape[-1] - clip.shape[-1]
    if extra < 0:
        raise ValueError(
            f"the CLIP embeddings are {clip.shape[-1]} wide but the T5/joint width is {t5.shape[-1]}; "
            "the text encoders do not match this transformer"
        )
    return torch.cat([torch.nn.functional.pad(clip, (0, extra)), t5], dim=-2)


def _slot_vectors(family: FamilyAdapter, slot: ClipSlot, embeddings: Any) -> dict[str, Any] | None:
    """Each embedding's vectors for the text encoder of ``slot`` (None: no embeddings)."""
    if not embeddings:
        return None
    from webui.models.embeddings import vectors_for

    slot_id = next((sid for sid, component in family.text_slots().items() if component == slot.encoder), "")
    return {name: vectors_for(e, slot_id) for name, e in embeddings.items()}


# --- public --------------------------------------------------------------------------------------


def _slot_chunks(tokenizer: Any, parsed: list[list[tuple[str, float]]], embeddings: Any) -> list:
    if not embeddings:
        return [chunk_fragments(tokenizer, fragments)[0] for fragments in parsed]
    from webui.generation.embedding_tokens import NameTable, chunk_with_embeddings

    table = NameTable(tokenizer, {name: e.vectors for name, e in embeddings.items()})
    return [chunk_with_embeddings(tokenizer, fragments, table)[0] for fragments in parsed]


def _chunk_rows(pipe: Any, slots: list[ClipSlot], parsed: list[list[tuple[str, float]]], embeddings: Any = None):
    """Each slot's chunks per row (``embeddings`` placed), all padded with empty chunks to the same count."""
    per_slot = [_slot_chunks(getattr(pipe, s.tokenizer), parsed, embeddings) for s in slots]
    n_chunks = max(len(row) for rows in per_slot for row in rows)
    return [[row + [EMPTY_CHUNK] * (n_chunks - len(row)) for row in rows] for rows in per_slot]


def _check_args(prompts: list[str], negative_prompts: list[str], clip_skip: int) -> None:
    if not prompts:
        raise ValueError("encode_prompts needs at least one prompt (one per image of the batch)")
    if len(prompts) != len(negative_prompts):
        raise ValueError(
            f"got {len(prompts)} prompts and {len(negative_prompts)} negative prompts; pass one negative "
            "prompt per prompt (repeat it for a batch)"
        )
    if clip_skip < 1:
        raise ValueError(f"clip_skip must be 1 (no skip) or more, got {clip_skip}")


def _zero_empty_negatives(pipe: Any, recipe: TextRecipe, negatives: list[str], embeds: Any, pooled: Any) -> None:
    """SDXL: rows whose negative prompt is empty become zeros, as diffusers' force_zeros_for_empty_prompt."""
    if not (recipe.zeros_for_empty_negative and getattr(pipe.config, "force_zeros_for_empty_prompt", False)):
        return
    for row, text in enumerate(negatives):
        if not text.strip():
            embeds[row] = 0
            if pooled is not None:
                pooled[row] = 0


def encode_prompts(
    pipe: Any,
    family: FamilyAdapter,
    prompts: list[str],
    negative_prompts: list[str],
    *,
    clip_skip: int = 1,
    use_t5: bool = True,
    device: Any = None,
    embeddings: Any = None,
) -> dict[str, Any]:
    """The pipeline-call kwargs for these prompts: ``prompt_embeds``, ``negative_prompt_embeds``
    (+ ``pooled_prompt_embeds``, ``negative_pooled_prompt_embeds`` for SDXL and SD3).

    One row per prompt; ``prompts`` must already be free of ``<lora:...>`` tags. ``clip_skip`` has
    A1111's meaning (1 = no skip). Positive and negative rows get the same number of 77-token chunks.
    ``device`` defaults to the pipeline's execution device; tensors take the text encoders' dtype.
    ``embeddings``: name -> ``webui.models.embeddings.Embedding`` that fit this model, used where named.
    """
    import torch

    _check_args(prompts, negative_prompts, clip_skip)
    recipe = _recipe(family)
    slots = _present_slots(pipe, recipe, family.id)
    device = torch.device(device) if device is not None else pipe._execution_device
    parsed = [parse_prompt_attention(text) for text in [*prompts, *negative_prompts]]
    with torch.no_grad():
        rows_per_slot = _chunk_rows(pipe, slots, parsed, embeddings)
        encoded = [
            _encode_slot(pipe, s, rows, clip_skip, device, _slot_vectors(family, s, embeddings))
            for s, rows in zip(slots, rows_per_slot)
        ]
        dtype = encoded[-1][0].dtype
        embeds = torch.cat([z.to(dtype) for z, _ in encoded], dim=-1)
        pooled = torch.cat([p.to(dtype) for _, p in encoded if p is not None], dim=-1) if recipe.pooled else None
        if recipe.t5:
            embeds = _append_t5(embeds, _t5_embeds(pipe, parsed, use_t5, device, dtype))
        n = len(prompts)
        _zero_empty_negatives(pipe, recipe, negative_prompts, embeds[n:], None if pooled is None else pooled[n:])
    kwargs = {"prompt_embeds": embeds[:n], "negative_prompt_embeds": embeds[n:]}
    if pooled is not None:
        kwargs.update(pooled_prompt_embeds=pooled[:n], negative_pooled_prompt_embeds=pooled[n:])
    return kwargs
