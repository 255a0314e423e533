"""A1111 prompt syntax: attention weights, BREAK, <lora:...> tags, 75-token chunks (pure python)."""

from __future__ import annotations

import pytest

from webui.generation.prompts import (
    BREAK,
    CHUNK_LENGTH,
    LoraTag,
    chunk_fragments,
    count_tokens,
    extract_loras,
    parse_prompt_attention,
)

# --- attention -----------------------------------------------------------------------------------

# The examples of A1111's parse_prompt_attention docstring, then more cases of its rules.
ATTENTION_CASES = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", 1.5730000000000004),
            (" ", 1.1),
            ("on", 1.0),
            (" a ", 1.1),
            ("hill", 0.55),
            (", sun, ", 1.1),
            ("sky", 1.4641000000000006),
            (".", 1.1),
        ],
    ),
    ("[word]", [("word", 1 / 1.1)]),
    ("[[word]]", [("word", 1 / 1.1 / 1.1)]),
    ("((word))", [("word", 1.1 * 1.1)]),
    ("(word:1.3)", [("word", 1.3)]),
    ("(word: 0.5 )", [("word", 0.5)]),
    ("(word:-1)", [("word", -1.0)]),
    ("[unbalanced", [("unbalanced", 1 / 1.1)]),
    ("a ] b )", [("a ] b )", 1.0)]),
    ("word:1.2)", [("word:1.2)", 1.0)]),
    ("(a:b)", [("a:b", 1.1)]),
    ("(a:1.2.3)", [("a:1.2.3)", 1.1)]),
    ("\\\\", [("\\", 1.0)]),
    ("a\\b", [("ab", 1.0)]),
    ("\\(word\\)", [("(word)", 1.0)]),
    ("", [("", 1.0)]),
    ("a BREAK b", [("a", 1.0), BREAK, ("b", 1.0)]),
    ("BREAKING news", [("BREAKING news", 1.0)]),
    ("a break b", [("a break b", 1.0)]),
    # our one difference from A1111: a BREAK inside brackets still breaks
    ("(a BREAK b)", [("a", 1.1), BREAK, ("b", 1.1)]),
]


@pytest.mark.parametrize(("text", "expected"), ATTENTION_CASES, ids=[c[0] or "empty" for c in ATTENTION_CASES])
def test_parse_prompt_attention(text, expected):
    assert parse_prompt_attention(text) == expected


# --- <lora:...> ----------------------------------------------------------------------------------

LORA_CASES = [
    ("a <lora:x:0.5> b", "a  b", [LoraTag("x", 0.5)]),
    ("<lora:x>", "", [LoraTag("x", 1.0)]),
    ("<lyco:y:0.3>cat", "cat", [LoraTag("y", 0.3)]),
    ("<lora:x:0.6:0.2>", "", [LoraTag("x", 0.6)]),
    ("<lora:x:unet=0.2:te=0.4>", "", [LoraTag("x", 0.4)]),
    ("<lora: my lora : 0.7 >", "", [LoraTag("my lora", 0.7)]),
    ("<LoRA:x:-1>", "", [LoraTag("x", -1.0)]),
    ("<lora:x:0.5> <lora:y> <lora:x:0.8>", "  ", [LoraTag("x", 0.8), LoraTag("y", 1.0)]),
    ("cat <hypernet:h:1>", "cat <hypernet:h:1>", []),
    ("(cat:1.2)", "(cat:1.2)", []),
]


@pytest.mark.parametrize(("text", "cleaned", "loras"), LORA_CASES, ids=[c[0] for c in LORA_CASES])
def test_extract_loras(text, cleaned, loras):
    assert extract_loras(text) == (cleaned, loras)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<lora:x:abc>", "'abc' is not a number"),
        ("<lora:x:>", "'' is not a number"),
        ("<lora:x:nan>", "'nan' is not a number"),
        ("<lora:x:te=high>", "'high' is not a number"),
        ("<lora::0.5>", "has no LoRA name"),
    ],
)
def test_extract_loras_rejects_bad_tags(text, message):
    with pytest.raises(ValueError, match=message):
        extract_loras(text)


# --- chunks --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    from webui.models.tokenizers import clip_tokenizer

    return clip_tokenizer("<|endoftext|>")


def _chunks(tokenizer, text):
    return chunk_fragments(tokenizer, parse_prompt_attention(text))


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_short_prompt_is_one_chunk_of_its_tokens(tokenizer):
    chunks, count = _chunks(tokenizer, "a photo of a cat")
    assert [list(c.tokens) for c in chunks] == [_ids(tokenizer, "a photo of a cat")]
    assert count == 5


def test_weights_follow_their_tokens(tokenizer):
    (chunk,), _ = _chunks(tokenizer, "a (cat:1.5) [dog]")
    assert chunk.tokens == tuple(_ids(tokenizer, "a cat dog"))
    assert chunk.weights == (1.0, 1.5, 1 / 1.1)


def test_prompt_over_75_tokens_gets_a_second_chunk(tokenizer):
    chunks, count = _chunks(tokenizer, "cat " * 80)
    assert [len(c.tokens) for c in chunks] == [75, 5]
    assert count == 80


def test_full_chunk_breaks_after_a_recent_comma(tokenizer):
    chunks, count = _chunks(tokenizer, "cat " * 70 + ", " + "dog " * 10)
    comma = _ids(tokenizer, ",")[0]
    assert [len(c.tokens) for c in chunks] == [71, 10]
    assert chunks[0].tokens[-1] == comma
    assert count == 75 + 10


def test_comma_further_back_than_20_tokens_is_ignored(tokenizer):
    chunks, _ = _chunks(tokenizer, "cat " * 50 + ", " + "dog " * 30)
    assert [len(c.tokens) for c in chunks] == [75, 6]


def test_break_starts_a_new_chunk(tokenizer):
    chunks, count = _chunks(tokenizer, "a cat BREAK a dog")
    assert [list(c.tokens) for c in chunks] == [_ids(tokenizer, "a cat"), _ids(tokenizer, "a dog")]
    assert count == 75 + 2


def test_padded_chunk_has_start_end_and_pad_tokens(tokenizer):
    (chunk,), _ = _chunks(tokenizer, "(cat:2)")
    ids, weights = chunk.padded(bos=49406, eos=49407, pad=0)
    assert len(ids) == len(weights) == CHUNK_LENGTH + 2
    assert ids[:3] == [49406, *chunk.tokens, 49407] and set(ids[3:]) == {0}
    assert weights[:3] == [1.0, 2.0, 1.0] and set(weights[3:]) == {1.0}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", (0, 75)),
        ("a photo of a cat", (5, 75)),
        ("a photo of a cat <lora:style:0.8>", (5, 75)),
        ("cat " * 75, (75, 75)),
        ("cat " * 80, (80, 150)),
        ("a BREAK b", (76, 150)),
    ],
)
def test_count_tokens(tokenizer, text, expected):
    assert count_tokens(tokenizer, text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("(" * 1000 + "x", "attention weight of 'x' is 2.47e+41"),  # issue 12: overflowed to a NaN image
        ("[" * 3 + "(cat:150)", "attention weight of 'cat'"),
        ("(cat:-101)", "is -101"),
        ("<lora:name:1e30> a cat", "<lora:name:...> has the weight 1e+30"),
        ("<lora:name:-1000>", "between -100 and 100"),
        ("<lora:name:nan>", "is not a number"),
        ("(" * 48 + "x", ""),  # 1.1**48 = 97: deep nesting is still fine
        ("(cat:100) [dog] <lora:slider:-8>", ""),
        ("a BREAK b", ""),
    ],
)
def test_weights_that_would_overflow_the_model_are_named(text, problem):
    from webui.generation.prompts import weight_problem

    found = weight_problem(text)
    assert (problem in found) if problem else found == "", found
