"""Cleaning, mixing, splitting, packing and the resumable stream."""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from omni_core import OmniConfig, OmniForConditionalGeneration, OmniProcessor
from omni_core.processing_omni import Message, OmniCollator, Part, SpeechAudio, pack
from omni_core.tokenization import character_tokenizer
from training.conversations import ContentPart, Conversation, Turn
from training.data import ConversationStream, clean, mix, split_by_group


def _conversation(answer: str, *, image: str = "", ident: str = "", group: str = "") -> Conversation:
    user = [ContentPart("text", "Describe the findings.")]
    if image:
        user.insert(0, ContentPart("image", image))
    return Conversation((Turn("user", tuple(user)), Turn("assistant", (ContentPart("text", answer),))), ident, group)


REPORT = "The lungs are clear. No pleural effusion or pneumothorax. The heart size is normal for age and habitus."


def test_cleaning_drops_duplicates_of_one_image_but_keeps_the_same_words_about_another() -> None:
    items = [
        _conversation(REPORT, image="a.png", ident="1"),
        _conversation(REPORT, image="a.png", ident="2"),  # exact duplicate (ids aside)
        _conversation(REPORT.replace("The lungs", "the  lungs"), image="a.png", ident="3"),  # near: case, spacing
        _conversation(REPORT, image="b.png", ident="4"),  # another study, the same normal report
        _conversation("", image="c.png", ident="5"),
        _conversation("x" * 50, image="d.png", ident="6"),
    ]
    kept, report = clean(items, min_answer_chars=2, max_answer_chars=40 * 4)
    assert [c.id for c in kept] == ["1", "4", "6"]
    assert (report.exact_duplicates, report.near_duplicates, report.answer_too_short) == (1, 1, 1)
    kept, report = clean(items, deduplicate=False, min_answer_chars=0)
    assert report.kept == 6


def test_mixing_gives_each_source_its_weighted_share() -> None:
    a = [_conversation(f"a{i}", ident=f"a{i}") for i in range(10)]
    b = [_conversation(f"b{i}", ident=f"b{i}") for i in range(30)]
    mixed = mix([(a, 3.0), (b, 1.0)], seed=1)
    counts = Counter(c.id[0] for c in mixed)
    assert counts == {"a": 30, "b": 10}  # 40 in all, three to one
    assert len({c.id for c in mixed if c.id[0] == "a"}) == 10  # a repeated, not just one item


def test_the_validation_split_keeps_every_study_on_one_side() -> None:
    items = [_conversation(f"answer {i}", ident=str(i), group=f"study{i // 3}") for i in range(30)]
    train, validation = split_by_group(items, 0.2, seed=0)
    assert len(train) + len(validation) == 30 and validation
    assert not {c.group for c in train} & {c.group for c in validation}
    assert len({c.group for c in validation}) == 2  # 20% of 10 studies
    assert split_by_group(items, 0.2, seed=0) == (train, validation)  # deterministic


def test_the_stream_resumes_where_it_stopped_and_ranks_never_share_an_item() -> None:
    items = [_conversation(f"answer {i}", ident=str(i)) for i in range(11)]
    ranks = [ConversationStream(items, rank=r, world_size=2, seed=3) for r in range(2)]
    first = [[ranks[r].next().id for _ in range(5)] for r in range(2)]
    assert not set(first[0]) & set(first[1])
    state = ranks[0].state_dict()
    expected = [ranks[0].next().id for _ in range(9)]  # crosses into the next epoch
    again = ConversationStream(items, rank=0, world_size=2, seed=3)
    again.load_state_dict(state)
    assert [again.next().id for _ in range(9)] == expected


def test_packed_conversations_give_the_logits_they_give_alone() -> None:
    config = OmniConfig.from_preset("tiny")
    torch.manual_seed(0)
    model = OmniForConditionalGeneration(config).eval()
    processor = OmniProcessor(config, character_tokenizer())
    speech = np.random.default_rng(0).normal(0, 0.1, 8000).astype(np.float32)
    conversations = [
        [
            Message("user", [Part("image", torch.rand(1, 1, 56, 56)), Part("text", "hi")]),
            Message("assistant", [Part("text", "ok")]),
        ],
        [
            Message("user", [Part("text", "what?")]),
            Message("assistant", [Part("text", "no"), Part("speech", SpeechAudio(speech))]),
        ],
        [Message("user", [Part("text", "third")]), Message("assistant", [Part("text", "yes")])],
    ]
    items = [processor(c) for c in conversations]
    rows = pack(items, max_tokens=items[0].input_ids.shape[1] + items[1].input_ids.shape[1])
    assert [row.segment_ids.max().item() for row in rows] == [2, 1]
    batch = OmniCollator(pad_token_id=0)(rows)
    with torch.no_grad():
        alone = [model(**item.forward_kwargs(), return_logits=True).logits[0] for item in items]
        packed = model(**batch.forward_kwargs(), return_logits=True).logits
    first = items[0].input_ids.shape[1]
    assert torch.allclose(packed[0, :first], alone[0], atol=1e-4)
    assert torch.allclose(packed[0, first : first + len(alone[1])], alone[1], atol=1e-4)
    assert torch.allclose(packed[1, : len(alone[2])], alone[2], atol=1e-4)
