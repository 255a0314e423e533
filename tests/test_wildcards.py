"""Wildcards: ``__name__`` is a line of wildcards/name.txt, chosen by the seed, never a file outside the folder."""

from __future__ import annotations

import os

import pytest

from webui.generation.wildcards import MAX_DEPTH, Wildcards


@pytest.fixture
def cards(tmp_path):
    folder = tmp_path / "wildcards"
    (folder / "animals").mkdir(parents=True)
    (folder / "color.txt").write_text("# a comment\nred\n\ngreen\nblue\nyellow\nviolet\n")
    (folder / "animals" / "pets.txt").write_text("cat\ndog\nhamster\n")
    (folder / "outfit.txt").write_text("__color__ coat\n__color__ hat\n")
    (folder / "loop.txt").write_text("again __loop__\n")
    (tmp_path / "secret.txt").write_text("the secret\n")
    return Wildcards(folder)


def test_the_same_seed_chooses_the_same_lines_and_other_seeds_vary(cards):
    prompt = "a __color__ __animals/pets__, __outfit__"
    first = cards.resolve(prompt, 1234).text
    assert cards.resolve(prompt, 1234).text == first
    assert Wildcards(cards.folder).resolve(prompt, 1234).text == first  # a new instance, the same choice
    assert "__" not in first
    chosen = {cards.resolve(prompt, seed).text for seed in range(40)}
    assert len(chosen) > 10


def test_lines_come_from_the_file_without_comments_or_blank_lines(cards):
    colors = {cards.resolve("__color__", seed).text for seed in range(200)}
    assert colors == {"red", "green", "blue", "yellow", "violet"}
    pets = {cards.resolve("__animals/pets__", seed).text for seed in range(100)}
    assert pets == {"cat", "dog", "hamster"}


def test_nested_wildcards_are_replaced_and_self_reference_stops(cards):
    outfit = cards.resolve("__outfit__", 5).text
    assert outfit.split()[0] in {"red", "green", "blue", "yellow", "violet"}
    loop = cards.resolve("__loop__", 5).text
    assert loop.count("again") == MAX_DEPTH and loop.endswith("__loop__")


def test_the_negative_prompt_draws_apart_from_the_prompt(cards):
    differs = [
        cards.resolve("__color__", s, "prompt").text != cards.resolve("__color__", s, "negative_prompt").text
        for s in range(30)
    ]
    assert any(differs)


@pytest.mark.parametrize("name", ["../secret", "animals/../../secret", "/etc/passwd", "..", "a\\b", "animals//pets"])
def test_names_never_leave_the_folder(cards, name):
    assert cards.path_of(name) is None
    found = cards.resolve(f"x __{name}__ y", 1)
    assert "secret" not in found.text or "__" in found.text


def test_a_symlink_out_of_the_folder_is_not_read(cards, tmp_path):
    os.symlink(tmp_path / "secret.txt", cards.folder / "leak.txt")
    assert cards.path_of("leak") is None
    assert cards.resolve("__leak__", 1).text == "__leak__"


def test_an_unknown_name_stays_and_is_reported(cards):
    found = cards.resolve("a __nothing__ here", 1)
    assert found.text == "a __nothing__ here" and found.missing == ["nothing"]


def test_names_lists_sub_folders(cards):
    assert cards.names() == ["animals/pets", "color", "loop", "outfit"]
