"""One conversation format for every training dataset: JSON lines, one conversation per line.

In the spirit of LLaVA's and ShareGPT's formats, with typed content parts::

    {"id": "study-17-findings", "group": "1.2.826...",
     "messages": [
       {"role": "system", "content": "You are a radiology assistant."},
       {"role": "user", "content": [
         {"type": "series", "series": "dataset/dicom/STUDY/SERIES"},
         {"type": "image", "image": "images/chest.png"},
         {"type": "audio", "audio": "dictations/q17.wav"},
         {"type": "text", "text": "Describe the findings."}]},
       {"role": "assistant", "content": [
         {"type": "text", "text": "No focal consolidation."},
         {"type": "speech", "audio": "speech/a17.wav"}]}]}

- ``content`` is a string (one text part) or a list of parts; a part is an object with ``type``
  and exactly one value key, named after the type (``text``, ``image``, ``series``, ``audio``;
  ``speech`` names its ``audio`` file).
- ``series``: a series folder of an ingested dataset (``omniclinic ingest``: ``dicom/STUDY/SERIES``);
  ``image``: a DICOM file or a PNG/JPEG; ``audio``: input audio (a question, a dictation);
  ``speech``: the audio the assistant should say (its codes train the audio head, its mel the
  speech decoder). Speech belongs to assistant turns, input audio and images to user turns.
- Relative paths are relative to the file's folder. ``id`` names the conversation in errors and
  metrics; ``group`` (a study, a patient) keeps related conversations on one side of a split.
- A conversation needs at least one assistant turn with content: that is what is learnt.

``load_conversations`` validates every line and names the line that is wrong; it never loads a
pixel or a sample (datasets do that when they read an item).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

PartKind = Literal["text", "image", "series", "audio", "speech"]
PART_KEYS: dict[str, str] = {"text": "text", "image": "image", "series": "series", "audio": "audio", "speech": "audio"}
ROLES = ("system", "user", "assistant")
USER_ONLY = frozenset({"image", "series", "audio"})
ASSISTANT_ONLY = frozenset({"speech"})
MAX_LINE_BYTES = 1024 * 1024
"""A conversation line longer than this is refused (text is short; media are referenced, not inlined)."""


class ConversationFormatError(ValueError):
    """A conversation file's line is malformed; the message names the file and the line."""

    def __init__(self, source: str, line: int, reason: str) -> None:
        super().__init__(f"{source} line {line}: {reason}")
        self.source, self.line, self.reason = source, line, reason


@dataclass(frozen=True)
class ContentPart:
    kind: PartKind
    value: str
    """The text, or the resolved path of the file or series folder."""

    def to_json(self, relative_to: Path | None = None) -> dict[str, str]:
        value = self.value
        if self.kind != "text" and relative_to is not None:
            value = os.path.relpath(value, relative_to)
        return {"type": self.kind, PART_KEYS[self.kind]: value}


@dataclass(frozen=True)
class Turn:
    role: Literal["system", "user", "assistant"]
    parts: tuple[ContentPart, ...]


@dataclass(frozen=True)
class Conversation:
    turns: tuple[Turn, ...]
    id: str = ""
    group: str = ""
    source: str = field(default="", compare=False)
    """Where it was read: ``FILE line N``."""

    def text(self, roles: Iterable[str] = ROLES) -> str:
        """Every text part of the given roles, in order (what cleaning and de-duplication read)."""
        wanted = set(roles)
        return "\n".join(p.value for t in self.turns if t.role in wanted for p in t.parts if p.kind == "text")

    def media(self) -> list[ContentPart]:
        return [part for turn in self.turns for part in turn.parts if part.kind != "text"]

    def to_json(self, relative_to: Path | None = None) -> dict[str, object]:
        record: dict[str, object] = {}
        if self.id:
            record["id"] = self.id
        if self.group:
            record["group"] = self.group
        record["messages"] = [
            {"role": turn.role, "content": [part.to_json(relative_to) for part in turn.parts]} for turn in self.turns
        ]
        return record


def _part(raw: object, role: str, base: Path, check_files: bool) -> ContentPart:
    if isinstance(raw, str):
        raw = {"type": "text", "text": raw}
    if not isinstance(raw, dict):
        raise ValueError("a content part must be an object with a type")
    kind = raw.get("type")
    if kind not in PART_KEYS:
        raise ValueError(f"unknown part type {kind!r}; types are {', '.join(PART_KEYS)}")
    key = PART_KEYS[kind]
    extra = set(raw) - {"type", key}
    if extra:
        raise ValueError(f"a {kind} part takes only 'type' and '{key}', not {', '.join(sorted(map(str, extra)))}")
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"a {kind} part needs a non-empty string '{key}'")
    if kind in USER_ONLY and role == "assistant":
        raise ValueError(f"a {kind} part belongs to a user turn (the model reads it, it does not write it)")
    if kind in ASSISTANT_ONLY and role != "assistant":
        raise ValueError("a speech part belongs to an assistant turn (it is what the model says)")
    if kind == "text":
        return ContentPart("text", value)
    path = Path(value).expanduser()
    path = Path(os.path.normpath(path if path.is_absolute() else base / path))
    if check_files:
        # the path itself is not repeated: a hospital's folder names may hold identifiers
        if kind == "series" and not path.is_dir():
            raise ValueError("its series folder does not exist")
        if kind != "series" and not path.is_file():
            raise ValueError(f"its {kind} file does not exist")
    return ContentPart(kind, str(path))


def parse_conversation(record: object, *, base: Path, check_files: bool = True) -> Conversation:
    """One decoded JSON line to a ``Conversation``; raises ValueError saying what is wrong."""
    if not isinstance(record, dict):
        raise ValueError("a line must be a JSON object with 'messages'")
    extra = set(record) - {"id", "group", "messages"}
    if extra:
        raise ValueError(f"unknown keys {', '.join(sorted(map(str, extra)))}; a line has id, group and messages")
    for key in ("id", "group"):
        if not isinstance(record.get(key, ""), str):
            raise ValueError(f"'{key}' must be a string")
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    turns = []
    for index, message in enumerate(messages, start=1):
        if not isinstance(message, dict):
            raise ValueError(f"message {index} must be an object with role and content")
        unknown = set(message) - {"role", "content"}
        if unknown:
            raise ValueError(f"message {index} has unknown keys {', '.join(sorted(map(str, unknown)))}")
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"message {index} has role {role!r}; roles are {', '.join(ROLES)}")
        content = message.get("content")
        raw_parts = [content] if isinstance(content, str) else content
        if not isinstance(raw_parts, list) or not raw_parts:
            raise ValueError(f"message {index} needs content: a string or a non-empty list of parts")
        try:
            parts = tuple(_part(raw, role, base, check_files) for raw in raw_parts)
        except ValueError as exc:
            raise ValueError(f"message {index}: {exc}") from None
        turns.append(Turn(role, parts))
    if not any(turn.role == "assistant" for turn in turns):
        raise ValueError("no assistant turn: nothing to learn")
    if turns[-1].role != "assistant":
        raise ValueError("the last message must be the assistant's (what follows it is never learnt)")
    return Conversation(tuple(turns), id=record.get("id", ""), group=record.get("group", ""))


def iter_conversations(path: str | os.PathLike[str], *, check_files: bool = True) -> Iterator[Conversation]:
    """Read and validate ``path`` line by line (blank lines are skipped)."""
    path = Path(path)
    base = path.resolve().parent
    try:
        handle = open(path, "rb")  # noqa: SIM115 (closed by the with below; the open error is named first)
    except OSError as exc:
        raise ConversationFormatError(path.name, 0, f"cannot read the file ({exc.strerror})") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            if len(raw) > MAX_LINE_BYTES:
                raise ConversationFormatError(path.name, number, f"longer than {MAX_LINE_BYTES} bytes")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ConversationFormatError(path.name, number, "not UTF-8 text") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConversationFormatError(path.name, number, f"not JSON ({exc.msg})") from None
            try:
                conversation = parse_conversation(record, base=base, check_files=check_files)
            except ValueError as exc:
                raise ConversationFormatError(path.name, number, str(exc)) from None
            yield Conversation(
                conversation.turns,
                id=conversation.id or f"{path.stem}:{number}",
                group=conversation.group,
                source=f"{path.name} line {number}",
            )


def load_conversations(path: str | os.PathLike[str], *, check_files: bool = True) -> list[Conversation]:
    """Every conversation in a JSON-lines file, validated; the first bad line raises
    ``ConversationFormatError`` naming it."""
    conversations = list(iter_conversations(path, check_files=check_files))
    if not conversations:
        raise ConversationFormatError(Path(path).name, 0, "holds no conversation")
    return conversations


def write_conversations(path: str | os.PathLike[str], conversations: Iterable[Conversation]) -> int:
    """Write conversations as JSON lines (paths relative to the file's folder), atomically."""
    from omniclinic_common.files import write_atomically

    path = Path(path)
    base = path.resolve().parent
    lines = [json.dumps(c.to_json(relative_to=base), ensure_ascii=False) for c in conversations]
    write_atomically(path, "".join(line + "\n" for line in lines))
    return len(lines)
