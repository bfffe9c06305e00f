"""Batch report drafting throughput: studies per minute, from a folder with 1 and 2 workers, and from Orthanc.

The model is the one `make serve` loads (demo-cpu: SmolLM2-135M backbone; OMNICLINIC_BENCH_PRESET=tiny
for a quick run), answers capped at 48 tokens. The worklist is phantom chest CTs (``medical_data.phantoms``:
32 slices of 80x80, with findings).

- folder, 1 worker: the baseline (one process, all cores for torch: what a user gets by default);
- folder, 2 workers (`--workers 2`: two processes, one core each): the scaling ratio to the baseline;
- folder, 1 worker on one core (`OMNICLINIC_CPU_THREADS=1`): how the sharding itself scales (2 workers
  over 1 single-threaded worker), apart from what torch's own threads already draw from the 2nd core;
- Orthanc (when installed): the same worklist retrieved over WADO-RS, 1 worker, SRs stored back (STOW-RS).

Two rates per run: end to end (what the operator waits for: process start and model load included),
and drafting only (studies over the longest rank's drafting time, from the job's own summary parts).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
STUDIES = int(os.environ.get("OMNICLINIC_BENCH_STUDIES", "8"))


def make_worklist(folder: Path, count: int) -> None:
    """Phantom chest CTs with findings (the default model's own kind of study), one folder each."""
    import numpy as np

    from medical_data.phantoms import sample_findings, write_ct_chest

    for number in range(count):
        write_ct_chest(folder / f"study{number}", sample_findings(np.random.default_rng(number)), seed=number)


def run(arguments: list[str], env: dict[str, str], out: Path, world: int) -> tuple[float, float, int]:
    """(end-to-end studies/min, drafting-only studies/min, studies drafted)."""
    started = time.monotonic()
    command = [sys.executable, "-m", "app.cli", "draft-reports", *arguments, "--out", str(out), "--quiet"]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    wall = time.monotonic() - started
    if completed.returncode != 0:
        raise SystemExit(f"draft-reports failed: {completed.stderr[-1500:]}")
    parts = [json.loads(p.read_text()) for p in (out / "summary").glob(f"part-*-of-{world:05d}.json")]
    drafted = sum(o["status"] == "drafted" for part in parts for o in part["outcomes"])
    drafting = max(sum(o["seconds"] for o in part["outcomes"]) for part in parts)
    return 60 * drafted / wall, 60 * drafted / drafting, drafted


def main() -> None:
    preset = os.environ.get("OMNICLINIC_BENCH_PRESET", "demo-cpu")
    work = Path(tempfile.mkdtemp(prefix="bench-drafting-"))
    models = Path(os.environ.get("OMNICLINIC_BENCH_MODELS", Path.home() / ".cache" / "omniclinic-bench-models"))
    models.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    data.mkdir(parents=True)
    (data / "models").symlink_to(models)  # the demo model is built once across runs
    env = os.environ | {
        "OMNICLINIC_DATA_DIR": str(data),
        "OMNICLINIC_MODEL_PRESET": preset,
        "OMNICLINIC_MAX_NEW_TOKENS": "48",
    }
    source = work / "worklist"
    make_worklist(source, STUDIES)
    warm = [sys.executable, "-c", "from app.core.config import load_settings; from app.services.assistant import "
            "Assistant; Assistant(load_settings()).load()"]  # fmt: skip
    subprocess.run(warm, env=env, check=True, cwd=ROOT)  # the demo model built once, outside the timings
    cores = os.cpu_count()
    print(f"{STUDIES} phantom chest CTs of 32 slices, preset {preset}, answers up to 48 tokens, {cores} cores")

    one = run([str(source), "--workers", "1"], env, work / "one", 1)
    two = run([str(source), "--workers", "2"], env, work / "two", 2)
    single = run([str(source), "--workers", "1"], env | {"OMNICLINIC_CPU_THREADS": "1"}, work / "single", 1)
    print(f"{'folder, 1 worker (baseline)':<34} {one[0]:6.1f} studies/min end to end   {one[1]:6.1f} drafting")
    print(f"{'folder, 2 workers':<34} {two[0]:6.1f} studies/min end to end   {two[1]:6.1f} drafting")
    scaling = f"{two[0] / one[0]:6.2f}x end to end              {two[1] / one[1]:6.2f}x drafting"
    print(f"{'scaling, 2 workers / 1':<34} {scaling}")
    print(f"{'folder, 1 worker, 1 thread':<34} {single[0]:6.1f} studies/min end to end   {single[1]:6.1f} drafting")
    sharding = f"{two[0] / single[0]:6.2f}x end to end              {two[1] / single[1]:6.2f}x drafting"
    print(f"{'sharding, 2 workers / 1 on 1 core':<34} {sharding}")

    from tests import orthanc

    if not orthanc.available():
        print("Orthanc is not installed: the PACS figure is skipped (apt-get install orthanc orthanc-dicomweb)")
        return
    with orthanc.running_orthanc(work / "orthanc") as server:
        server.upload(sorted(source.rglob("*.dcm")))
        pacs_env = env | {"OMNICLINIC_PACS_USERNAME": orthanc.USER, "OMNICLINIC_PACS_PASSWORD": orthanc.PASSWORD}
        pacs = run(["--pacs", server.dicomweb_url, "--modality", "CT", "--store"], pacs_env, work / "pacs", 1)
    print(f"{'Orthanc, 1 worker, SRs stored':<34} {pacs[0]:6.1f} studies/min end to end   {pacs[1]:6.1f} drafting")
    ratio = f"{pacs[0] / one[0]:6.2f}x end to end              {pacs[1] / one[1]:6.2f}x drafting"
    print(f"{'Orthanc / folder, 1 worker':<34} {ratio}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
