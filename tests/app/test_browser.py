"""A real browser (Debian's chromium driven by Playwright) logs in, uploads a study, asks a typed and a
spoken question, sees the answers and plays the spoken one. Saves a screenshot of the viewer."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.app.conftest import PASSWORD, make_settings

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTEFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_clinician_round_trip_in_a_real_browser(isolated_settings: Path, require_service, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    require_service(Path(CHROMIUM).exists(), "chromium is not installed (apt-get install chromium)")
    import uvicorn
    from playwright.sync_api import expect, sync_playwright
    from pydicom.data import get_testdata_file

    from app.core.db import open_database
    from app.main import create_app
    from app.services.auditing import Actor
    from app.services.users import add_user
    from omni_core.speech.encode import wav_bytes
    from omni_core.speech.tts import load_synthesizer, speak

    settings = make_settings(isolated_settings)
    engine = open_database(settings)
    add_user(engine, "dr.house", "clinician", PASSWORD, Actor("test", "cli"))
    engine.dispose()
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.1)
    synthesizer = load_synthesizer("piper", deterministic=True)
    question = tmp_path / "question.wav"
    question.write_bytes(wav_bytes(speak(synthesizer, "Is there a nodule?"), synthesizer.sample_rate))
    home = tmp_path / "home"
    home.mkdir()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM,
                headless=True,
                env={"HOME": str(home)},
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                    "--disable-quic",
                    "--autoplay-policy=no-user-gesture-required",
                    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                ],
            )
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/ui/")
            page.fill("#username", "dr.house")
            page.fill("#password", PASSWORD)
            page.click("#login")
            page.wait_for_url("**/ui/")
            expect(page.locator("#banner")).to_contain_text("not based on the image", timeout=30_000)
            page.locator("#upload input[type=file]").set_input_files(get_testdata_file("CT_small.dcm"))
            page.wait_for_timeout(1000)
            page.click("#upload-button")
            expect(page.locator("#upload-note")).to_contain_text("stored 1", timeout=60_000)
            expect(page.locator("#viewer img")).to_be_visible(timeout=60_000)
            ARTEFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTEFACTS / "viewer.png"), full_page=True)
            page.fill("#question textarea", "Is there a nodule?")
            page.click("#ask")
            expect(page.locator("#chat")).to_contain_text("Demonstration model", timeout=60_000)
            expect(page.locator("#spoken audio[src]")).to_have_count(1, timeout=60_000)
            page.locator("#mic input[type=file]").set_input_files(str(question))
            expect(page.locator("#mic audio[src]")).to_have_count(1, timeout=30_000)  # uploaded before asking
            page.click("#ask")
            expect(page.locator("#chat")).to_contain_text("🎤", timeout=90_000)
            expect(page.locator("#chat")).to_contain_text("nodule", timeout=5_000)
            played = page.locator("#spoken audio[src]").first.evaluate(
                """a => new Promise(resolve => {
                    a.muted = true;
                    a.addEventListener("timeupdate", () => resolve(a.currentTime), {once: true});
                    a.play().catch(() => resolve(-1));
                    setTimeout(() => resolve(-2), 15000);
                })"""
            )
            assert played > 0, played
            page.screenshot(path=str(ARTEFACTS / "conversation.png"), full_page=True)
            browser.close()
    finally:
        server.should_exit = True
        thread.join(30)
