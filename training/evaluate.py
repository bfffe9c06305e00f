"""Held-out evaluation of a model folder on conversations: loss, and exact answers to closed questions."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from omni_core.modeling_omni import DecodingOptions, OmniForConditionalGeneration
from omni_core.processing_omni import OmniProcessor
from training.conversations import Conversation
from training.data import MediaReader
from training.make_conversations import FINDINGS_QUESTION


@dataclass
class Evaluation:
    conversations: int
    loss: float | None
    """Mean next-token loss of the answers."""
    closed_questions: int
    closed_accuracy: float | None
    """Share of closed questions (header facts) answered exactly (case and punctuation aside)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _normalised(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.casefold()))


@torch.no_grad()
def evaluate(
    model: OmniForConditionalGeneration,
    tokenizer: Any,
    conversations: Sequence[Conversation],
    *,
    max_new_tokens: int = 24,
) -> Evaluation:
    model.eval()
    processor = OmniProcessor(model.config, tokenizer)
    reader = MediaReader(model.config)
    losses: list[float] = []
    closed = correct = 0
    options = processor.decoding_options(
        DecodingOptions(max_new_tokens=max_new_tokens, speech=False), speak_sentences=False
    )
    for conversation in conversations:
        messages = reader.messages(conversation)
        inputs = processor(messages)
        output = model(**inputs.forward_kwargs(), losses=("text",))
        losses.append(float(output.loss))
        question = conversation.turns[0].parts[-1]
        if question.kind == "text" and question.value != FINDINGS_QUESTION and len(conversation.turns) == 2:
            prompt = processor(messages[:1], add_generation_prompt=True)
            result = model.generate(prompt.input_ids, options=options, **prompt.model_kwargs())
            answer = tokenizer.decode([t for t in result.token_ids if t not in processor.control_ids])
            closed += 1
            correct += _normalised(answer) == _normalised(conversation.text(["assistant"]))
    return Evaluation(
        conversations=len(conversations),
        loss=sum(losses) / len(losses) if losses else None,
        closed_questions=closed,
        closed_accuracy=correct / closed if closed else None,
    )
