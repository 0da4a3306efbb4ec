"""Prompt formats: values a world hands out, never a process-wide switch."""

from offsetlab.method.prompts import CHATML, QA


def test_the_toy_format_puts_a_space_before_the_answer():
    assert QA.prompt("Who?") == "Q: Who?\nA:"
    assert QA.prompt("Who?") + QA.answer("Me.") == "Q: Who?\nA: Me."


def test_the_chat_format_wraps_the_question_in_chatml_turns():
    prompt = CHATML.prompt("Who?")
    assert prompt == "<|im_start|>user\nWho?<|im_end|>\n<|im_start|>assistant\n"
    assert CHATML.answer("Me.") == "Me."
