"""The clinician app's latency, on loopback, with the model `make serve` loads (demo-cpu: SmolLM2-135M
backbone; OMNICLINIC_BENCH_PRESET=tiny for a quick run).

- text asks, one client: p50/p95 of POST /ask (whole answer, spoken answer made too): the baseline;
- text asks under load (8 clients for 30 s): p50/p95 of the answered ones, how many got 503, and the
  ratio of the loaded p50 to the baseline (the queue serialises generation: about the queue length);
- voice asks (a Piper recording of a question), one client: p50/p95 of the whole ask, and of the
  streamed ask from the end of the upload (the end of the clinician's question) to the first audio
  of the answer, both to the spoken caution (said before the model writes) and to the first spoken
  sentence of the model's own answer.
"""

from __future__ import annotations

import os
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
PASSWORD = "loopback timing passphrase"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def line(name: str, values: list[float]) -> str:
    return (
        f"{name:<48} n={len(values):<4} p50 {statistics.median(values):6.2f} s   p95 {percentile(values, 0.95):6.2f} s"
    )


def main() -> None:
    import uvicorn
    from pydicom.data import get_testdata_file

    from app.core.config import Settings
    from app.core.db import open_database
    from app.main import create_app
    from app.services.auditing import Actor
    from app.services.users import add_user
    from omni_core.speech.encode import wav_bytes
    from omni_core.speech.tts import load_synthesizer, speak

    preset = os.environ.get("OMNICLINIC_BENCH_PRESET", "demo-cpu")
    data = Path(tempfile.mkdtemp(prefix="bench-app-"))
    models = Path(os.environ.get("OMNICLINIC_BENCH_MODELS", Path.home() / ".cache" / "omniclinic-bench-models"))
    settings = Settings(data_dir=data, model_preset=preset, queue_depth=4, max_new_tokens=48)
    settings.models_dir.parent.mkdir(parents=True, exist_ok=True)
    models.mkdir(parents=True, exist_ok=True)
    if not settings.models_dir.exists():
        settings.models_dir.symlink_to(models)  # the demo model is built once across runs
    engine = open_database(settings)
    add_user(engine, "bench", "clinician", PASSWORD, Actor("bench", "cli"))
    engine.dispose()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(settings, ui=False)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.1)
    base = f"http://127.0.0.1:{port}"
    token = httpx.post(f"{base}/api/v1/auth/token", data={"username": "bench", "password": PASSWORD}).json()
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    dicom = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    study = httpx.post(
        f"{base}/api/v1/studies", files=[("files", ("a.dcm", dicom))], headers=headers, timeout=300
    ).json()["studies"][0]["study_uid"]
    synthesizer = load_synthesizer("auto", deterministic=True)
    question = wav_bytes(speak(synthesizer, "Is there a pleural effusion?"), synthesizer.sample_rate)
    ask = f"{base}/api/v1/studies/{study}/ask"
    client = httpx.Client(headers=headers, timeout=600)
    client.post(ask, data={"text": "warm up"})

    single = []
    for _ in range(8):
        started = time.perf_counter()
        assert client.post(ask, data={"text": "Is there a nodule?"}).status_code == 200
        single.append(time.perf_counter() - started)

    loaded: list[float] = []
    refused = 0
    lock = threading.Lock()
    stop = time.monotonic() + 30

    def worker() -> None:
        nonlocal refused
        with httpx.Client(headers=headers, timeout=600) as session:
            while time.monotonic() < stop:
                started = time.perf_counter()
                response = session.post(ask, data={"text": "Is there a nodule?"})
                with lock:
                    if response.status_code == 200:
                        loaded.append(time.perf_counter() - started)
                    else:
                        refused += 1
                if response.status_code == 503:
                    time.sleep(float(response.headers.get("Retry-After", "1")))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    voice, to_caution, to_answer_audio = [], [], []
    for _ in range(5):
        started = time.perf_counter()
        response = client.post(ask, files={"audio": ("q.wav", question)})
        assert response.status_code == 200, response.text
        voice.append(time.perf_counter() - started)
        started = time.perf_counter()
        wrote = False
        first_audio = None
        with client.stream("POST", f"{ask}/stream", files={"audio": ("q.wav", question)}) as response:
            for raw in response.iter_lines():
                if raw == "event: delta":
                    wrote = True
                elif raw == "event: audio":
                    now = time.perf_counter() - started
                    if first_audio is None:
                        first_audio = now
                        to_caution.append(now)
                    if wrote:
                        to_answer_audio.append(now)
                        break
    server.should_exit = True

    print(f"model: {preset}, answers up to {settings.max_new_tokens} tokens, spoken with {synthesizer.name}")
    print(line("text ask, 1 client (baseline)", single))
    print(line(f"text ask, 8 clients x 30 s ({refused} x 503)", loaded))
    print(f"{'loaded p50 / baseline p50':<48} {statistics.median(loaded) / statistics.median(single):.2f}x")
    print(line("voice ask, 1 client", voice))
    print(line("end of question -> first audio (caution)", to_caution))
    if to_answer_audio:
        print(line("end of question -> first audio of the answer", to_answer_audio))
        print(
            f"{'first answer audio / whole voice ask (p50)':<48} "
            f"{statistics.median(to_answer_audio) / statistics.median(voice):.2f}x"
        )


if __name__ == "__main__":
    main()
