"""A1111 prompt editing and alternation as plain data: the text each step of a pass sees."""

from __future__ import annotations

import pytest

from webui.generation.prompt_editing import has_editing, prompt_schedule, text_at
from webui.generation.prompt_steps import stepped_cond
from webui.generation.prompts import parse_prompt_attention

WIKI = (
    "fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75][ in foreground::0.6]"
    "[ in background:0.25] [shoddy:masterful:0.5]"
)

# (prompt, steps, schedule): A1111's documented examples and the behaviour of its parser
TABLE = [
    ("a [dog:cat:0.5] photo", 20, [(10, "a dog photo"), (20, "a cat photo")]),
    ("a [dog:cat:10] photo", 20, [(10, "a dog photo"), (20, "a cat photo")]),
    ("a [fantasy:cyberpunk:16] landscape", 100, [(16, "a fantasy landscape"), (100, "a cyberpunk landscape")]),
    ("a [b:3]", 10, [(3, "a "), (10, "a b")]),
    ("a [b: 3]", 10, [(3, "a "), (10, "a b")]),
    ("a [b::3]", 10, [(3, "a b"), (10, "a ")]),
    ("a [b:.5] c", 10, [(5, "a  c"), (10, "a b c")]),
    ("a [[[b]]:2]", 10, [(2, "a "), (10, "a [[b]]")]),  # de-emphasis brackets inside are kept
    ("[(a:2):3]", 10, [(3, ""), (10, "(a:2)")]),
    ("a[b:[c:d:2]:1]e", 10, [(1, "abe"), (2, "ace"), (10, "ade")]),  # nested editing
    ("a (b [c:d:2]:1.2)", 4, [(2, "a (b c:1.2)"), (4, "a (b d:1.2)")]),  # editing inside an attention weight
    ("[a:(b:1.2):5]", 10, [(5, "a"), (10, "(b:1.2)")]),  # the weight's colon is not the bracket's
    ("[a|(b:1.1)]", 4, [(1, "a"), (2, "(b:1.1)"), (3, "a"), (4, "(b:1.1)")]),
    ("[fe|]male", 3, [(1, "female"), (2, "male"), (3, "female")]),
    ("[fe|||]male", 5, [(1, "female"), (4, "male"), (5, "female")]),
    ("[a|b|c] x", 4, [(1, "a x"), (2, "b x"), (3, "c x"), (4, "a x")]),
    ("[[a|b]:c:2]", 4, [(1, "a"), (2, "b"), (4, "c")]),  # alternation inside editing
    ("[a:b:30]", 20, [(20, "a")]),  # a step past the end: never switches
    ("[a:b:0]", 20, [(20, "b")]),
    # plain text: de-emphasis, a last part that is no number, escapes, unbalanced brackets
    ("a [word] b", 10, [(10, "a [word] b")]),
    ("[a:b]", 10, [(10, "[a:b]")]),
    ("x \\[a:b:3\\] (y:1.2)", 10, [(10, "x \\[a:b:3\\] (y:1.2)")]),
    ("[a\\:b:3]", 10, [(3, ""), (10, "a\\:b")]),
    ("a [unbalanced", 10, [(10, "a [unbalanced")]),
    ("((a][:b:c [d:3]", 10, [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("time: 5 [a|b:c]", 2, [(2, "time: 5 [a|b:c]")]),
    (
        WIKI,
        100,
        [
            (25, "fantasy landscape with a mountain and an oak in foreground shoddy"),
            (50, "fantasy landscape with a lake and an oak in foreground in background shoddy"),
            (60, "fantasy landscape with a lake and an oak in foreground in background masterful"),
            (75, "fantasy landscape with a lake and an oak in background masterful"),
            (100, "fantasy landscape with a lake and a christmas tree in background masterful"),
        ],
    ),
]


@pytest.mark.parametrize(("prompt", "steps", "expected"), TABLE)
def test_schedule(prompt, steps, expected):
    assert prompt_schedule(prompt, steps) == expected


def test_a_plain_bracket_stays_de_emphasis_for_the_attention_parser():
    ((_, text),) = prompt_schedule("a [dog] photo", 20)
    weights = dict(parse_prompt_attention(text))
    assert weights["dog"] == pytest.approx(1 / 1.1)


def test_lora_tags_and_break_pass_through_each_step():
    schedule = prompt_schedule("<lora:x:0.5> a [dog:cat:2] BREAK (red:1.3)", 4)
    assert schedule == [(2, "<lora:x:0.5> a dog BREAK (red:1.3)"), (4, "<lora:x:0.5> a cat BREAK (red:1.3)")]


def test_text_at_each_step():
    schedule = prompt_schedule("[a|b] [c:d:3]", 4)
    assert [text_at(schedule, step) for step in range(1, 5)] == ["a c", "b c", "a c", "b d"]


def test_has_editing():
    assert has_editing("a [b:c:2]") and has_editing("[a|b]")
    assert not has_editing("a [b] (c:1.2)") and not has_editing("[a:b]") and not has_editing("plain")


def test_deep_nesting_is_plain_text_not_a_crash():
    prompt = "[" * 3000 + "a:b:2" + "]" * 3000
    assert prompt_schedule(prompt, 4) == [(4, prompt)]
    assert prompt_schedule("[" * 5000 + "|", 3) == [(3, "[" * 5000 + "|")]


# --- one encoding per distinct text, the changes at the right steps ------------------------------


def test_each_distinct_text_is_encoded_once_and_switched_where_it_changes():
    calls = []

    def encode(pos, neg):
        calls.append((tuple(pos), tuple(neg)))
        return {"prompt_embeds": (tuple(pos), tuple(neg))}

    cond = stepped_cond(["[a|b] x"], ["[n:m:0.5]"], 6, encode)
    assert sorted(set(calls)) == sorted(calls)  # no text pair encoded twice
    assert cond["prompt_embeds"] == (("a x",), ("n",))
    assert {step: c["prompt_embeds"] for step, c in cond.changes.items()} == {
        2: (("b x",), ("n",)),
        3: (("a x",), ("n",)),
        4: (("b x",), ("m",)),
        5: (("a x",), ("m",)),
        6: (("b x",), ("m",)),
    }
    assert len(calls) == 4


def test_a_prompt_without_editing_gives_the_plain_embeddings():
    cond = stepped_cond(["a [b] c"], [""], 20, lambda pos, neg: {"prompt_embeds": pos[0]})
    assert type(cond) is dict and cond == {"prompt_embeds": "a [b] c"}


def test_an_offset_pass_starts_inside_the_schedule():
    cond = stepped_cond(["[a:b:6]"], [""], 10, lambda pos, neg: {"e": pos[0]}, offset=4)
    assert cond["e"] == "a" and {k: v["e"] for k, v in cond.changes.items()} == {3: "b"}


def test_the_token_counter_counts_the_longest_text_a_step_sees():
    from webui.generation.prompts import count_tokens
    from webui.models.tokenizers import clip_tokenizer

    tokenizer = clip_tokenizer("<|endoftext|>")
    short, _ = count_tokens(tokenizer, "a cat")
    edited, _ = count_tokens(tokenizer, "a [cat:" + "very " * 30 + "long dog:0.5]")
    assert edited == count_tokens(tokenizer, "a " + "very " * 30 + "long dog")[0] > short
    assert count_tokens(tokenizer, "[a cat|" + "x " * 80 + "]") == (80, 150)
