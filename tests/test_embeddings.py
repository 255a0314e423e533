"""Textual-inversion embeddings: the file formats, the family check, the encoding, the job, the API listing.

The tiny demo models' text encoders are 64 (CLIP-L) and 128 (CLIP-G) wide, so the embeddings written
here have those widths; a file with other widths or parts is "made for another family".
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from tests.app_services import tmp_services
from webui.families.registry import default_families
from webui.generation.conditioning import encode_prompts
from webui.generation.embedding_tokens import NameTable, chunk_with_embeddings, used_names
from webui.generation.prompts import parse_prompt_attention
from webui.generation.requests import GenerationRequest
from webui.models.demo import CLIP_G_HIDDEN, CLIP_L_HIDDEN, demo_checkpoint_name, write_demo_models
from webui.models.embeddings import EmbeddingLibrary, fit, read_embedding, text_widths


def get_family(family_id: str):
    return default_families().get(family_id)


# Mean absolute difference (0-255) an embedding must make to the image: one that is not applied makes 0
# (the same request twice on one machine is the same computation); random vectors make several units.
EMBEDDING_EFFECT = 0.5


def _vectors(n: int, width: int, seed: int) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed)) * 0.5


def write_a1111_pt(path, width=CLIP_L_HIDDEN, n=2, seed=1):
    torch.save(
        {
            "string_to_token": {"*": 265},
            "string_to_param": {"*": _vectors(n, width, seed)},
            "name": path.stem,
            "step": 1500,
            "sd_checkpoint": "a9263745",
            "sd_checkpoint_name": "v1-5-pruned",
        },
        path,
    )


def write_emb_params(path, width=CLIP_L_HIDDEN, n=3, seed=2):
    import safetensors.torch

    safetensors.torch.save_file({"emb_params": _vectors(n, width, seed)}, str(path))


def write_diffusers_bin(path, width=CLIP_L_HIDDEN, seed=3):
    torch.save({"<my-token>": _vectors(1, width, seed)[0]}, path)


def write_sdxl(path, n=2, seed=4, widths=(CLIP_L_HIDDEN, CLIP_G_HIDDEN)):
    import safetensors.torch

    safetensors.torch.save_file(
        {"clip_l": _vectors(n, widths[0], seed), "clip_g": _vectors(n, widths[1], seed + 1)}, str(path)
    )


class _Code:  # a pickle that would run something when unpickled without weights_only
    def __reduce__(self):
        return (print, ("this ran",))


# --- reading -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "writer, file_name, vectors, shape",
    [
        (write_a1111_pt, "a1111.pt", 2, CLIP_L_HIDDEN),
        (write_emb_params, "kohya.safetensors", 3, CLIP_L_HIDDEN),
        (write_diffusers_bin, "learned_embeds.bin", 1, CLIP_L_HIDDEN),
        (write_sdxl, "xl.safetensors", 2, CLIP_L_HIDDEN + CLIP_G_HIDDEN),
    ],
)
def test_each_format_is_read_with_its_vectors_and_shape(tmp_path, writer, file_name, vectors, shape):
    path = tmp_path / file_name
    writer(path)
    embedding = read_embedding(path)
    assert embedding.error == ""
    assert (embedding.name, embedding.vectors, embedding.shape) == (path.stem, vectors, shape)


def test_a_pickle_with_code_is_refused_and_not_run(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"string_to_param": {"*": _Code()}}, f)
    embedding = read_embedding(path)
    assert "safe loader refuses" in embedding.error
    assert "this ran" not in capsys.readouterr().out


def test_a_file_that_is_no_embedding_says_what_it_is(tmp_path):
    import safetensors.torch

    path = tmp_path / "lora.safetensors"
    safetensors.torch.save_file(
        {"lora_unet_down.lora_up.weight": torch.zeros(2, 2), "lora_unet_down.lora_down.weight": torch.zeros(2, 2)},
        str(path),
    )
    assert "not a textual-inversion embedding" in read_embedding(path).error


# --- the family check --------------------------------------------------------------------------------

TINY_SD15 = {"clip_l": CLIP_L_HIDDEN}
TINY_SDXL = {"clip_l": CLIP_L_HIDDEN, "clip_g": CLIP_G_HIDDEN}


@pytest.mark.parametrize(
    "writer, family, widths, reason",
    [
        (write_a1111_pt, "sd15", TINY_SD15, ""),
        (write_sdxl, "sdxl", TINY_SDXL, ""),
        (write_sdxl, "sd15", TINY_SD15, "an SDXL embedding"),
        (write_a1111_pt, "sdxl", TINY_SDXL, "needs clip_l and clip_g"),
        (lambda p: write_a1111_pt(p, width=1024), "sd15", TINY_SD15, "1024 wide"),
        (write_sdxl, "sd3", None, "not supported for SD3"),
    ],
)
def test_fit_accepts_the_right_family_and_says_why_not_otherwise(tmp_path, writer, family, widths, reason):
    path = tmp_path / ("e.safetensors" if writer is write_sdxl else "e.pt")
    writer(path)
    got = fit(read_embedding(path), get_family(family), widths)
    assert (got == "") if not reason else (reason in got), got


def test_released_widths_are_the_default(tmp_path):
    path = tmp_path / "e.pt"
    write_a1111_pt(path, width=768)
    assert fit(read_embedding(path), get_family("sd15")) == ""
    assert "768 wide" in fit(read_embedding(path), get_family("sd2"))


def test_the_a1111_embeddings_folder_beside_models_is_read(tmp_path):
    (tmp_path / "models" / "Stable-diffusion").mkdir(parents=True)
    (tmp_path / "embeddings").mkdir()
    write_a1111_pt(tmp_path / "embeddings" / "beside.pt")
    assert [e.name for e in EmbeddingLibrary(tmp_path / "models").all()] == ["beside"]


# --- tokens and encoding -----------------------------------------------------------------------------


def test_an_embedding_takes_its_vector_count_of_positions_with_the_fragment_weight(fresh_tiny_pipe):
    tokenizer = fresh_tiny_pipe("sd15").tokenizer
    table = NameTable(tokenizer, {"mystyle": 3})
    fragments = parse_prompt_attention("a photo, (MyStyle:1.2)")
    (chunk,), used = chunk_with_embeddings(tokenizer, fragments, table)
    plain = tokenizer(["a photo,"], add_special_tokens=False)["input_ids"][0]
    assert used == ["mystyle"]
    assert chunk.fixes == ((len(plain), "mystyle"),)
    assert len(chunk.tokens) == len(plain) + 3
    assert chunk.weights[-3:] == pytest.approx((1.2, 1.2, 1.2))


def test_an_embedding_does_not_straddle_two_chunks(fresh_tiny_pipe):
    tokenizer = fresh_tiny_pipe("sd15").tokenizer
    table = NameTable(tokenizer, {"mystyle": 4})
    prompt = " ".join(["cat"] * 73) + " mystyle"
    chunks, _ = chunk_with_embeddings(tokenizer, parse_prompt_attention(prompt), table)
    assert len(chunks) == 2 and chunks[1].fixes == ((0, "mystyle"),)


def test_used_names_are_found_in_prompt_and_negative_on_tokens(fresh_tiny_pipe):
    tokenizer = fresh_tiny_pipe("sd15").tokenizer
    assert used_names(tokenizer, ["a cat", "ugly, BadHands"], ["badhands", "other"]) == ["badhands"]
    assert used_names(tokenizer, ["a badhandsome cat"], ["badhands"]) == []


def _library(tmp_path, *writers):
    folder = tmp_path / "models" / "embeddings"
    folder.mkdir(parents=True, exist_ok=True)
    for writer, name in writers:
        writer(folder / name)
    return EmbeddingLibrary(tmp_path / "models")


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_encoding_puts_the_vectors_in_and_leaves_the_model_unchanged(tmp_path, fresh_tiny_pipe, family):
    pipe = fresh_tiny_pipe(family)
    spec = get_family(family)
    writer = write_a1111_pt if family == "sd15" else write_sdxl
    library = _library(tmp_path, (writer, "mystyle.safetensors" if family == "sdxl" else "mystyle.pt"))
    found = library.for_family(spec, text_widths(pipe, spec))
    assert list(found.loaded) == ["mystyle"], found.skipped

    def encode(prompt, embeddings=None):
        return encode_prompts(pipe, spec, [prompt], [""], device="cpu", embeddings=embeddings)["prompt_embeds"]

    before = encode("a mystyle cat")
    weights_before = pipe.text_encoder.get_input_embeddings().weight.clone()
    with_embedding = encode("a mystyle cat", found.loaded)
    after = encode("a mystyle cat")
    assert not torch.equal(with_embedding, before)
    torch.testing.assert_close(after, before, rtol=0, atol=0)  # same computation: the hook is gone
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight, weights_before)
    assert torch.equal(encode("a cat", found.loaded), encode("a cat"))  # unnamed: nothing changes
    writer(library.folders()[0] / next(iter(found.loaded.values())).path.name, seed=40)  # other vectors
    other = library.for_family(spec, text_widths(pipe, spec)).loaded
    assert not torch.equal(encode("a mystyle cat", other), with_embedding)  # the vectors are what is put in


# --- through a job -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    root = tmp_path_factory.mktemp("embeddings")
    write_demo_models(root / "models", ("sd15", "sdxl"), loras=False)
    folder = root / "models" / "embeddings"
    folder.mkdir(parents=True, exist_ok=True)
    write_a1111_pt(folder / "tinystyle.pt", n=2, seed=11)
    write_sdxl(folder / "tinyxl.safetensors", n=2, seed=12)
    svc = tmp_services(root)
    svc.generation.start()
    yield svc
    svc.generation.stop()


def _run(services, family: str, prompt: str, negative: str = ""):
    request = GenerationRequest(
        prompt=prompt,
        negative_prompt=negative,
        steps=2,
        width=64,
        height=64,
        seed=5,
        sd_model_checkpoint=demo_checkpoint_name(family),
    )
    job = services.generation.submit(request, source="test")
    assert job.wait(120) and job.state == "done", job.error
    return np.asarray(job.result.images[0], dtype=np.float64), job.result


@pytest.mark.parametrize("family, name", [("sd15", "tinystyle"), ("sdxl", "tinyxl")])
def test_an_embedding_changes_the_image_and_its_removal_restores_it(services, family, name):
    plain, _ = _run(services, family, "a lighthouse")
    used, result = _run(services, family, f"a lighthouse, {name}")
    again, _ = _run(services, family, "a lighthouse")
    assert np.abs(used - plain).mean() > EMBEDDING_EFFECT
    assert np.array_equal(again, plain)  # the same computation: the model was left as it was
    digest = services.hashes.get(services.embeddings.for_family(None).loaded[name].path)[:12]
    assert f'TI hashes: "{name}: {digest}"' in result.infotexts[0]


def test_an_embedding_added_or_changed_on_disk_is_used_by_the_next_job_not_a_cached_encoding(services):
    folder = services.paths.models / "embeddings"
    before, result = _run(services, "sd15", "a lighthouse, latestyle")  # not installed yet: plain text
    assert "TI hashes" not in result.infotexts[0]
    write_a1111_pt(folder / "latestyle.pt", seed=21)
    added, result = _run(services, "sd15", "a lighthouse, latestyle")
    assert np.abs(added - before).mean() > EMBEDDING_EFFECT and "latestyle: " in result.infotexts[0]
    write_a1111_pt(folder / "latestyle.pt", seed=22)  # the same name, other vectors
    changed, _ = _run(services, "sd15", "a lighthouse, latestyle")
    assert np.abs(changed - added).mean() > EMBEDDING_EFFECT
    (folder / "latestyle.pt").unlink()  # removed: the word is plain text again, the image as before
    removed, result = _run(services, "sd15", "a lighthouse, latestyle")
    assert np.array_equal(removed, before) and "TI hashes" not in result.infotexts[0]


def test_an_embedding_in_the_negative_prompt_changes_the_image(services):
    plain, _ = _run(services, "sd15", "a lighthouse", "blurry")
    used, result = _run(services, "sd15", "a lighthouse", "blurry, (tinystyle:1.2)")
    assert np.abs(used - plain).mean() > EMBEDDING_EFFECT
    assert "TI hashes" in result.infotexts[0]


def test_a_wrong_family_embedding_is_not_applied_and_the_job_says_why(services):
    _, result = _run(services, "sdxl", "a lighthouse tinystyle")
    warnings = result.info.get("warnings", [])
    assert any("'tinystyle' was not applied" in w and "clip_l and clip_g" in w for w in warnings), warnings
    assert "TI hashes" not in result.infotexts[0]


# --- the API ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(services):
    import httpx

    from tests.api_server import serve_api

    with serve_api(services) as url, httpx.Client(base_url=url, timeout=120) as client:
        yield client


def _load(client, family: str) -> None:
    r = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": demo_checkpoint_name(family)})
    assert r.status_code == 200, r.text


def test_the_api_lists_loaded_and_skipped_for_the_loaded_family_in_a1111_shape(client):
    _load(client, "sd15")
    listed = client.get("/sdapi/v1/embeddings").json()
    assert listed["loaded"] == {
        "tinystyle": {
            "step": 1500,
            "sd_checkpoint": "a9263745",
            "sd_checkpoint_name": "v1-5-pruned",
            "shape": CLIP_L_HIDDEN,
            "vectors": 2,
        }
    }
    assert listed["skipped"]["tinyxl"]["shape"] == CLIP_L_HIDDEN + CLIP_G_HIDDEN
    _load(client, "sdxl")
    listed = client.get("/sdapi/v1/embeddings").json()
    assert set(listed["loaded"]) == {"tinyxl"} and set(listed["skipped"]) == {"tinystyle"}


def test_txt2img_through_the_api_writes_ti_hashes_that_png_info_reads_back(client, services):
    from webui.outputs.infotext import parse_hashes

    body = {"prompt": "a lighthouse, tinystyle", "width": 64, "height": 64, "steps": 2, "seed": 3}
    r = client.post(
        "/sdapi/v1/txt2img", json={**body, "override_settings": {"sd_model_checkpoint": demo_checkpoint_name("sd15")}}
    )
    assert r.status_code == 200, r.text
    image = r.json()["images"][0]
    parsed = client.post("/sdapi/v1/png-info", json={"image": image}).json()["parameters"]
    digest = services.hashes.get(services.embeddings.for_family(None).loaded["tinystyle"].path)[:12]
    assert parse_hashes(parsed["TI hashes"]) == {"tinystyle": digest}


def test_the_token_counter_counts_an_embeddings_vectors(client, services):
    from webui.models.tokenizers import clip_tokenizer

    _load(client, "sd15")
    tokenizer = clip_tokenizer("<|endoftext|>")
    path = services.paths.models / "embeddings" / "countstyle.pt"
    write_a1111_pt(path, n=7)
    try:
        counted = services.backend.count_tokens("a cat countstyle")
        plain = services.backend.count_tokens("a cat tinyxl")  # another family's: its name is plain text
    finally:
        path.unlink()
    assert counted.used == 2 + 7
    assert plain.used == 2 + len(tokenizer(["tinyxl"], add_special_tokens=False)["input_ids"][0])


def test_an_embedding_inside_prompt_editing_is_applied_at_the_steps_that_use_it(services):
    folder = services.paths.models / "embeddings"
    prompt = "a lighthouse, [editstyle:harbor:1]"  # step 1 sees the embedding, step 2 "harbor"
    before, result = _run(services, "sd15", prompt)  # not installed yet: plain text
    assert "TI hashes" not in result.infotexts[0]
    write_a1111_pt(folder / "editstyle.pt", seed=23)
    try:
        used, result = _run(services, "sd15", prompt)
    finally:
        (folder / "editstyle.pt").unlink()
    assert np.abs(used - before).mean() > EMBEDDING_EFFECT and "editstyle: " in result.infotexts[0]
    assert "[editstyle:harbor:1]" in result.infotexts[0]  # the prompt as written
