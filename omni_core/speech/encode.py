"""Audio to bytes for the browser and files: 16-bit WAV, and Ogg/Opus (PyAV), one chunk per sentence.

Each chunk is a complete file, so a client can play chunk 1 while chunk 2 is on its way.
"""

from __future__ import annotations

import io
import wave

import av
import numpy as np

OPUS_RATE = 48_000
OPUS_BITRATE = 32_000


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(sample_rate)
        handle.writeframes(pcm.tobytes())
    return buffer.getvalue()


def ogg_opus_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """A complete Ogg/Opus file (48 kHz mono, ~32 kbit/s) of ``samples``."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=OPUS_RATE, layout="mono")
        stream.bit_rate = OPUS_BITRATE
        resampler = av.AudioResampler(format="s16", layout="mono", rate=OPUS_RATE)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples, dtype=np.float32)[np.newaxis], format="flt", layout="mono"
        )
        frame.sample_rate = sample_rate
        for converted in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(converted):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()
