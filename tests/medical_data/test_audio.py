from __future__ import annotations

import io
import wave
from pathlib import Path

import av
import numpy as np
import pytest

from medical_data.audio import SAMPLE_RATE, AudioLimits, decode_audio
from medical_data.errors import AudioDecodeError, AudioLimitError

from .conftest import unseekable_stream

TONE_HZ = 440.0


def _tone(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)


def _encode(
    path: Path, container: str, codec: str, seconds: float = 1.0, rate: int = 48_000, channels: int = 2
) -> Path:
    """Write a 440 Hz tone with PyAV (no audio files are kept in the repo)."""
    layout = "stereo" if channels == 2 else "mono"
    with av.open(str(path), mode="w", format=container) as output:
        stream = output.add_stream(codec, rate=rate, layout=layout)
        samples = np.tile(_tone(seconds, rate), (channels, 1))
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout=layout)
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            output.mux(packet)
        for packet in stream.encode(None):
            output.mux(packet)
    return path


def _dominant_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(len(samples), 1 / SAMPLE_RATE)[np.argmax(spectrum)])


@pytest.mark.parametrize(
    ("suffix", "container", "codec"),
    [
        ("wav", "wav", "pcm_s16le"),
        ("flac", "flac", "flac"),
        ("ogg", "ogg", "libopus"),
        ("webm", "webm", "libopus"),
        ("mp3", "mp3", "libmp3lame"),
        ("m4a", "mp4", "aac"),
        ("aac", "adts", "aac"),
    ],
)
def test_formats_decode_to_16k_mono_float32(tmp_path: Path, suffix: str, container: str, codec: str) -> None:
    path = _encode(tmp_path / f"tone.{suffix}", container, codec)
    audio = decode_audio(path)
    assert audio.sample_rate == SAMPLE_RATE and audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    assert audio.duration_s == pytest.approx(1.0, abs=0.1)
    assert _dominant_hz(audio.samples) == pytest.approx(TONE_HZ, abs=5)


def test_wav_from_the_standard_library_and_bytes(tmp_path: Path) -> None:
    path = tmp_path / "mono.wav"
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(8000)
        handle.writeframes((_tone(0.5, 8000) * 32767).astype("<i2").tobytes())
    from_bytes = decode_audio(path.read_bytes())
    assert from_bytes.duration_s == pytest.approx(0.5, abs=0.02)
    np.testing.assert_allclose(decode_audio(path).samples, from_bytes.samples)


def test_over_long_audio_stops_with_a_limit_error(tmp_path: Path) -> None:
    path = _encode(tmp_path / "long.flac", "flac", "flac", seconds=3.0)
    with pytest.raises(AudioLimitError, match="limit"):
        decode_audio(path, limits=AudioLimits(max_seconds=1.0))


def test_oversized_upload_is_refused_before_decoding(tmp_path: Path) -> None:
    path = _encode(tmp_path / "tone.wav", "wav", "pcm_s16le")
    with pytest.raises(AudioLimitError, match="byte limit"):
        decode_audio(path, limits=AudioLimits(max_bytes=1000))


@pytest.mark.parametrize("data", [b"", b"this is a text file, not audio" * 10, b"RIFF\x00\x00\x00\x00WAVEfmt garbage"])
def test_non_audio_and_corrupt_files_are_typed(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "bad.wav"
    path.write_bytes(data)
    with pytest.raises((AudioDecodeError, AudioLimitError)):
        decode_audio(path)


def test_truncated_audio_decodes_what_is_there_or_fails_cleanly(tmp_path: Path) -> None:
    data = _encode(tmp_path / "tone.ogg", "ogg", "libopus", seconds=2.0).read_bytes()
    (tmp_path / "cut.ogg").write_bytes(data[: len(data) // 2])
    try:
        audio = decode_audio(tmp_path / "cut.ogg")
    except (AudioDecodeError, AudioLimitError):
        return
    assert 0.1 < audio.duration_s < 2.0


def test_a_file_without_audio_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "video.webm"
    with av.open(str(path), mode="w", format="webm") as output:
        stream = output.add_stream("libvpx", rate=5)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for _ in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode(None):
            output.mux(packet)
    with pytest.raises(AudioDecodeError, match="no audio stream"):
        decode_audio(path)


def test_playlists_and_unknown_containers_are_refused_before_ffmpeg_sees_them(tmp_path: Path) -> None:
    """FFmpeg's own probing would open an HLS or concat playlist and read the files it names."""
    secret = tmp_path / "secret.wav"
    _encode(secret, "wav", "pcm_s16le")
    playlist = tmp_path / "question.wav"
    for text in (f"#EXTM3U\n#EXTINF:1,\n{secret}\n", f"ffconcat version 1.0\nfile '{secret}'\n"):
        playlist.write_text(text)
        for source in (playlist, playlist.read_bytes()):
            with pytest.raises(AudioDecodeError, match="not a recognised audio container"):
                decode_audio(source)


@pytest.mark.parametrize("wrap", [io.BytesIO, unseekable_stream])
def test_streams_have_the_same_limits_as_paths(tmp_path: Path, wrap) -> None:  # type: ignore[no-untyped-def]
    data = _encode(tmp_path / "tone.wav", "wav", "pcm_s16le").read_bytes()
    assert decode_audio(wrap(data)).duration_s == pytest.approx(1.0, abs=0.05)
    with pytest.raises(AudioLimitError, match="byte limit"):
        decode_audio(wrap(data), limits=AudioLimits(max_bytes=1000))
    with pytest.raises(AudioDecodeError, match="empty"):
        decode_audio(wrap(b""))
