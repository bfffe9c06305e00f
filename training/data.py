"""Training data: cleaning, mixing, splitting, reading media, and a resumable stream of batches.

- ``clean``: exact duplicates (the same conversation, media and text), near duplicates (the same
  media with near-identical text: MinHash over word 3-grams, then the exact Jaccard similarity),
  answer-length filters, and the identifier check (any text holding a fingerprinted identifier of
  the de-identification is dropped). Identical text about *different* images is kept: "No acute
  findings." is the right answer for many studies.
- ``mix``: sources to a mixture by weight (each repeated or subsampled to its share).
- ``split_by_group``: a held-out validation split that keeps a group (a study) on one side.
- ``MediaReader``: a conversation's files to processor messages (DICOM series and images, PNG/JPEG,
  audio, speech audio with its flow-target mel).
- ``ConversationStream``: per-rank shards of a shuffled order, each epoch reshuffled; its position is
  part of every checkpoint, so a resumed run reads exactly what the uninterrupted run would have.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medical_data.deid.fingerprints import IdentifierFingerprints
from medical_data.errors import MedicalDataError
from omni_core.configuration_omni import OmniConfig
from omni_core.processing_omni import Message, ModelInputs, Part, SpeechAudio
from training.config import DataConfig
from training.conversations import Conversation

UNUSABLE = (ValueError, OSError, MedicalDataError)
"""What reading a conversation's media may raise for one bad file: the item is skipped and counted."""
SHINGLE = 3
PERMUTATIONS = 64
BANDS = 16


@dataclass
class CleaningReport:
    read: int = 0
    kept: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    answer_too_short: int = 0
    answer_too_long: int = 0
    identifiers_found: int = 0
    """Conversations dropped because a text held a fingerprinted identifier (counts, never values)."""
    dropped_ids: list[str] = field(default_factory=list)
    """Which conversations the identifier check dropped (ids, so an operator can look at them)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def add(self, other: CleaningReport) -> None:
        """Count ``other``'s cleaning into this report (several sources, one account)."""
        for key, value in other.as_dict().items():
            setattr(self, key, getattr(self, key) + value)


def _shingles(text: str) -> set[str]:
    words = text.casefold().split()
    if len(words) < SHINGLE:
        return {" ".join(words)}
    return {" ".join(words[i : i + SHINGLE]) for i in range(len(words) - SHINGLE + 1)}


def _minhash(shingles: set[str]) -> tuple[int, ...]:
    hashes = np.array(
        [int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little") for s in shingles],
        dtype=np.uint64,
    )
    rng = np.random.default_rng(12345)
    a = rng.integers(1, 2**61 - 1, PERMUTATIONS, dtype=np.uint64) | np.uint64(1)
    b = rng.integers(0, 2**61 - 1, PERMUTATIONS, dtype=np.uint64)
    with np.errstate(over="ignore"):
        permuted = hashes[None, :] * a[:, None] + b[:, None]  # (PERMUTATIONS, shingles), modulo 2**64
    return tuple(int(v) for v in permuted.min(axis=1))


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def clean(
    conversations: Sequence[Conversation],
    *,
    min_answer_chars: int = 1,
    max_answer_chars: int = 20_000,
    deduplicate: bool = True,
    near_duplicate_threshold: float = 0.9,
    fingerprints: IdentifierFingerprints | None = None,
) -> tuple[list[Conversation], CleaningReport]:
    """Drop what should not be trained on; the report counts each reason."""
    report = CleaningReport(read=len(conversations))
    kept: list[Conversation] = []
    seen_exact: set[str] = set()
    buckets: dict[tuple[str, int, tuple[int, ...]], list[int]] = {}
    shingles: list[set[str]] = []
    for conversation in conversations:
        answer = conversation.text(["assistant"])
        speaks = any(p.kind == "speech" for t in conversation.turns for p in t.parts)
        if len(answer.strip()) < min_answer_chars and not speaks:
            report.answer_too_short += 1
            continue
        if len(answer) > max_answer_chars:
            report.answer_too_long += 1
            continue
        if fingerprints is not None and fingerprints.matches(conversation.text()):
            report.identifiers_found += 1
            report.dropped_ids.append(conversation.id)
            continue
        if deduplicate:
            exact = json.dumps(conversation.to_json() | {"id": "", "group": ""}, sort_keys=True)
            if exact in seen_exact:
                report.exact_duplicates += 1
                continue
            seen_exact.add(exact)
            media = json.dumps([p.value for p in conversation.media()])
            own = _shingles(conversation.text())
            signature = _minhash(own)
            rows = PERMUTATIONS // BANDS
            candidates = {
                index
                for band in range(BANDS)
                for index in buckets.get((media, band, signature[band * rows : (band + 1) * rows]), [])
            }
            if any(_jaccard(own, shingles[index]) >= near_duplicate_threshold for index in candidates):
                report.near_duplicates += 1
                continue
            for band in range(BANDS):
                buckets.setdefault((media, band, signature[band * rows : (band + 1) * rows]), []).append(len(kept))
            shingles.append(own)
        kept.append(conversation)
    report.kept = len(kept)
    return kept, report


def clean_as_configured(
    conversations: Sequence[Conversation], data: DataConfig, fingerprints: IdentifierFingerprints | None
) -> tuple[list[Conversation], CleaningReport]:
    """``clean`` with a recipe's ``data`` settings."""
    return clean(
        conversations,
        min_answer_chars=data.min_answer_chars,
        max_answer_chars=data.max_answer_chars,
        deduplicate=data.deduplicate,
        near_duplicate_threshold=data.near_duplicate_threshold,
        fingerprints=fingerprints,
    )


def mix(sources: Sequence[tuple[Sequence[Conversation], float]], seed: int = 0) -> list[Conversation]:
    """A mixture where each source has its weight's share of the total count (repeated or subsampled)."""
    total = sum(len(items) for items, _ in sources)
    weight_sum = sum(weight for _, weight in sources)
    rng = random.Random(seed)
    mixed: list[Conversation] = []
    for items, weight in sources:
        if not items:
            continue
        target = max(1, round(total * weight / weight_sum))
        whole, remainder = divmod(target, len(items))
        mixed += list(items) * whole + rng.sample(list(items), remainder)
    return mixed


def split_by_group(
    conversations: Sequence[Conversation], fraction: float, seed: int = 0
) -> tuple[list[Conversation], list[Conversation]]:
    """(train, validation): whole groups (``group``, else the conversation's id) held out by a seeded
    hash, so that no study is on both sides; with ``fraction`` > 0 and two or more groups, at
    least one group is held out and at least one trains."""
    if fraction <= 0:
        return list(conversations), []
    groups = sorted({c.group or c.id for c in conversations})
    ranked = sorted(groups, key=lambda g: hashlib.sha256(f"{seed}\0{g}".encode()).digest())
    count = min(len(groups) - 1, max(1, round(fraction * len(groups)))) if len(groups) > 1 else 0
    held = set(ranked[:count])
    train = [c for c in conversations if (c.group or c.id) not in held]
    validation = [c for c in conversations if (c.group or c.id) in held]
    return train, validation


class MediaReader:
    """A conversation's media, read into processor messages."""

    def __init__(self, config: OmniConfig, *, flow_targets: bool = False) -> None:
        self.config = config
        self.flow_targets = flow_targets
        self._datasets: dict[Path, tuple[Any, dict[str, int]]] = {}

    def messages(self, conversation: Conversation) -> list[Message]:
        return [
            Message(turn.role, [self._part(part.kind, part.value) for part in turn.parts])
            for turn in conversation.turns
        ]

    def _part(self, kind: str, value: str) -> Part:
        from medical_data.audio import decode_audio

        if kind == "text":
            return Part("text", value)
        if kind == "audio":
            return Part("audio", decode_audio(value).samples)
        if kind == "speech":
            mel = None
            if self.flow_targets:
                from omni_core.modeling_speech_decoder import speech_log_mel

                speech = self.config.speech
                audio = decode_audio(value, sample_rate=speech.sampling_rate).samples
                mel = speech_log_mel(torch.from_numpy(audio), speech)
            return Part("speech", SpeechAudio(decode_audio(value).samples, mel))
        if kind == "series":
            return Part("image", self._series(Path(value)))
        return Part("image", self._image(Path(value)))

    def _image(self, path: Path) -> torch.Tensor:
        with open(path, "rb") as handle:
            head = handle.read(132)
        if head[128:132] == b"DICM" or path.suffix.lower() in (".dcm", ".dicom"):
            from medical_data.study import load_image

            return load_image(path)
        from PIL import Image

        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L" if image.mode in ("L", "I", "I;16", "1") else "RGB"))
        tensor = torch.from_numpy(pixels.astype(np.float32) / 255.0)
        return tensor[None] if tensor.dim() == 2 else tensor.permute(2, 0, 1)  # (C, H, W)

    def _series(self, folder: Path) -> torch.Tensor:
        """A series folder of an ingested dataset, from its cache (what inference sees); a plain
        folder of DICOM slices is loaded directly."""
        root = folder.parent.parent.parent
        if (root / "manifest.jsonl").is_file():
            if root not in self._datasets:
                from medical_data.ingest import cached_dataset

                dataset = cached_dataset(root)
                index = {str(record["series_uid"]): i for i, record in enumerate(dataset.data)}
                self._datasets[root] = (dataset, index)
            dataset, index = self._datasets[root]
            if folder.name in index:
                return dataset[index[folder.name]]["image"]
        from medical_data.study import load_series

        files = sorted(p for p in folder.iterdir() if p.is_file())
        if not files:
            raise ValueError("an empty series folder")
        from medical_data.study import load_image

        return load_image(files[0]) if len(files) == 1 else load_series(files)


@dataclass
class StreamState:
    epoch: int = 0
    position: int = 0


class ConversationStream:
    """This rank's shard of a per-epoch shuffled order, read one conversation at a time."""

    def __init__(self, conversations: Sequence[Conversation], *, rank: int, world_size: int, seed: int) -> None:
        if len(conversations) < world_size:
            raise ValueError(f"{len(conversations)} conversations cannot feed {world_size} processes")
        self.conversations = list(conversations)
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.state = StreamState()
        self._order = self._shard(0)

    def _shard(self, epoch: int) -> list[int]:
        order = list(range(len(self.conversations)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        usable = len(order) - len(order) % self.world_size  # equal shards: ranks stay in step
        return order[self.rank : usable : self.world_size]

    def next(self) -> Conversation:
        if self.state.position >= len(self._order):
            self.state = StreamState(self.state.epoch + 1, 0)
            self._order = self._shard(self.state.epoch)
        conversation = self.conversations[self._order[self.state.position]]
        self.state.position += 1
        return conversation

    def back(self) -> None:
        """Un-read the last conversation (it did not fit this batch; the next batch starts with it)."""
        self.state.position -= 1

    def state_dict(self) -> dict[str, int]:
        return asdict(self.state)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.state = StreamState(int(state["epoch"]), int(state["position"]))
        self._order = self._shard(self.state.epoch)


@dataclass
class Batch:
    rows: list[ModelInputs]
    ids: list[str]
    """The conversations in it (named when a loss is not finite)."""
    skipped: Counter[str] = field(default_factory=Counter)


def next_batch(
    stream: ConversationStream,
    prepare: Callable[[Conversation], ModelInputs],
    *,
    batch_size: int,
    max_tokens: int,
    pack: bool,
    max_skips: int = 1000,
) -> Batch:
    """``batch_size`` conversations (or, packed, as many as fill ``batch_size`` rows of ``max_tokens``).

    A conversation that cannot be prepared (an unreadable file) or is longer than ``max_tokens``
    is skipped and counted by reason.
    """
    from omni_core.processing_omni import pack as pack_rows

    items: list[ModelInputs] = []
    ids: list[str] = []
    skipped: Counter[str] = Counter()
    while True:
        conversation = stream.next()
        try:
            item = prepare(conversation)
        except UNUSABLE as exc:
            skipped[type(exc).__name__] += 1
            item = None
        if item is not None and item.input_ids.shape[1] > max_tokens:
            skipped["longer_than_max_tokens"] += 1
            item = None
        if sum(skipped.values()) > max_skips:
            raise ValueError(f"{max_skips} conversations in a row could not be used ({dict(skipped)})")
        if item is None:
            continue
        if pack and items and len(pack_rows([*items, item], max_tokens)) > batch_size:
            stream.back()
            break
        items.append(item)
        ids.append(conversation.source or conversation.id)
        if not pack and len(items) == batch_size:
            break
    rows = pack_rows(items, max_tokens) if pack else items
    return Batch(rows, ids, skipped)
