"""How a question becomes a prompt, and what follows it before the answer.

A prompt format belongs to a *world*: the toy models were trained on ``Q: …\\nA: …``,
an instruction-tuned model answers facts only inside its chat template. So a format is a
value the world hands to everything that writes prompts (training, scoring, decoding),
never a process-wide setting: a toy lab and a SmolLM2 lab can live in one process.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PromptFormat:
    name: str
    template: str  # holds "{question}"
    answer_prefix: str  # what precedes the answer text, e.g. " " after "A:"

    def prompt(self, question: str) -> str:
        return self.template.format(question=question)

    def answer(self, answer: str) -> str:
        """The continuation that follows ``prompt(question)``."""
        return self.answer_prefix + answer


# The answer follows as " " + answer (then the tokenizer's EOS during training), so the
# answer's first word carries its leading space, as it does inside any sentence.
QA = PromptFormat("qa", "Q: {question}\nA:", " ")
CHATML = PromptFormat("chatml", "<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n", "")
