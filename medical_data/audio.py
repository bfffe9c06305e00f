"""Dictations and voice queries to 16 kHz mono float32, with PyAV (FFmpeg; no system ffmpeg needed).

Reads wav, flac, ogg/opus, webm/matroska, mp3, AAC and mp4/m4a (phones' voice memos). The container
is recognised from its first bytes and opened with that one demuxer: FFmpeg is never left to probe,
as its probing would also accept playlists (HLS, concat) that open other files. Size is checked
before decoding, for paths and streams alike, and duration while decoding, so an over-long upload
stops early instead of filling memory.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np

from medical_data.errors import AudioDecodeError, AudioLimitError
from medical_data.files import size_within

SAMPLE_RATE = 16_000
MiB = 1024 * 1024
ALLOWED_DEMUXERS = frozenset({"wav", "flac", "ogg", "matroska", "mp3", "aac", "mov"})
"""The only FFmpeg demuxers audio is opened with, chosen by ``container_of`` from the first bytes."""


def container_of(head: bytes) -> str | None:
    """The demuxer for a file that starts with ``head`` (its first 12 bytes or more), or None."""
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"\x1aE\xdf\xa3":
        return "matroska"
    if head[4:8] == b"ftyp":
        return "mov"
    if head[:3] == b"ID3":
        return "mp3"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:  # an MPEG audio frame sync
        return "aac" if head[1] & 0x06 == 0 else "mp3"  # layer bits 00: ADTS AAC
    return None


@dataclass(frozen=True)
class AudioLimits:
    max_bytes: int = 100 * MiB
    max_seconds: float = 600.0
    """Ten minutes covers a long dictation; the app uses a shorter limit for voice questions."""
    min_seconds: float = 0.1

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.max_seconds <= 0 or self.min_seconds < 0:
            raise ValueError("audio limits must be positive")


DEFAULT_AUDIO_LIMITS = AudioLimits()


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray = field(repr=False)
    """float32, mono, in [-1, 1], at SAMPLE_RATE."""
    sample_rate: int
    source_format: str

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


def decode_audio(
    source: str | os.PathLike[str] | bytes | BinaryIO,
    *,
    limits: AudioLimits = DEFAULT_AUDIO_LIMITS,
    sample_rate: int = SAMPLE_RATE,
) -> DecodedAudio:
    """Decode any audio file FFmpeg reads to mono float32 at ``sample_rate`` (16 kHz, what speech
    recognition and the audio tokenizer take; the speech decoder's targets are at 24 kHz).

    Raises:
        AudioLimitError: larger than ``max_bytes``, longer than ``max_seconds`` or shorter than ``min_seconds``.
        AudioDecodeError: not audio, corrupt, or holds no audio stream.
    """
    handle = _open_bounded(source, limits)
    demuxer = container_of(handle.read(12))
    handle.seek(0)
    if demuxer not in ALLOWED_DEMUXERS:
        raise AudioDecodeError("not a recognised audio container (wav, flac, ogg, webm, mp3, aac, m4a)")
    max_samples = int(limits.max_seconds * sample_rate)
    chunks: list[np.ndarray] = []
    total = 0
    try:
        with av.open(handle, mode="r", format=demuxer) as container:
            stream = next((s for s in container.streams if s.type == "audio"), None)
            if stream is None:
                raise AudioDecodeError("the file holds no audio stream")
            if stream.duration is not None and stream.time_base is not None:
                declared = float(stream.duration * stream.time_base)
                if declared > limits.max_seconds:
                    raise AudioLimitError(f"audio lasts {declared:.0f} s, over the {limits.max_seconds:.0f} s limit")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            source_format = container.format.name
            for frame in container.decode(stream):
                for converted in resampler.resample(frame):
                    total += _append(chunks, converted)
                if total > max_samples:
                    raise AudioLimitError(f"audio is longer than the {limits.max_seconds:.0f} s limit")
            for converted in resampler.resample(None):
                total += _append(chunks, converted)
    except (AudioDecodeError, AudioLimitError):
        raise
    except av.FFmpegError as exc:
        raise AudioDecodeError(f"not decodable audio ({type(exc).__name__})") from None
    except (ValueError, OSError, UnicodeDecodeError, IndexError) as exc:
        raise AudioDecodeError(f"not decodable audio ({type(exc).__name__})") from None
    if total > max_samples:
        raise AudioLimitError(f"audio is longer than the {limits.max_seconds:.0f} s limit")
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    if len(samples) < limits.min_seconds * sample_rate:
        raise AudioLimitError(f"audio is shorter than {limits.min_seconds} s")
    if not np.all(np.isfinite(samples)):
        raise AudioDecodeError("decoded audio holds invalid samples")
    return DecodedAudio(np.clip(samples, -1.0, 1.0), sample_rate, source_format)


def _append(chunks: list[np.ndarray], frame: av.AudioFrame) -> int:
    array = frame.to_ndarray().reshape(-1).astype(np.float32, copy=False)
    chunks.append(array)
    return len(array)


def _open_bounded(source: str | os.PathLike[str] | bytes | BinaryIO, limits: AudioLimits) -> BinaryIO:
    """A seekable stream over at most ``limits.max_bytes`` bytes, whatever the source.

    Paths are measured before they are opened; other streams are read into memory one byte past the
    limit at most, so a stream costs no more than a file of the same size.
    """
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        size_within(path, limits.max_bytes, what="audio", limit_error=AudioLimitError, read_error=AudioDecodeError)
        try:
            source = path.read_bytes()
        except OSError as exc:
            raise AudioDecodeError(f"cannot read the audio file ({exc.strerror})") from None
    elif not isinstance(source, bytes):
        try:
            source = source.read(limits.max_bytes + 1)
        except (OSError, ValueError) as exc:
            raise AudioDecodeError(f"cannot read the audio stream ({type(exc).__name__})") from None
        if not isinstance(source, bytes):
            raise AudioDecodeError("the audio stream is not binary")
    if len(source) > limits.max_bytes:
        raise AudioLimitError(f"audio holds over {limits.max_bytes} bytes, the byte limit")
    if not source:
        raise AudioDecodeError("the audio is empty")
    return io.BytesIO(source)
