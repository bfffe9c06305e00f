"""A real Orthanc PACS with its DICOMweb plugin, started per test on free ports with a fresh storage folder."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "omniclinic", "orthanc-test-password"

# An instance filter that refuses every SR: the PACS side of "an SR the PACS refuses".
REFUSE_SR_LUA = """
function ReceivedInstanceFilter(dicom, origin, info)
  if dicom.Modality == 'SR' then return false end
  return true
end
"""


def available() -> bool:
    return Path(ORTHANC).exists() and DICOMWEB_PLUGIN.exists()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Orthanc:
    http_url: str

    @property
    def dicomweb_url(self) -> str:
        return f"{self.http_url}/dicom-web"

    def get(self, path: str) -> requests.Response:
        response = requests.get(f"{self.http_url}{path}", auth=(USER, PASSWORD), timeout=30)
        response.raise_for_status()
        return response

    def upload(self, files: list[Path]) -> None:
        for path in files:
            response = requests.post(
                f"{self.http_url}/instances", data=path.read_bytes(), auth=(USER, PASSWORD), timeout=30
            )
            response.raise_for_status()


@contextmanager
def running_orthanc(folder: Path, *, lua: str = "") -> Iterator[Orthanc]:
    folder.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    scripts = []
    if lua:
        (folder / "filter.lua").write_text(lua)
        scripts = [str(folder / "filter.lua")]
    config = {
        "Name": "omniclinic-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "StableAge": 1,
        "SaveJobs": False,
        "LuaScripts": scripts,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [ORTHANC, f"--logfile={folder / 'orthanc-main.log'}", str(folder / "orthanc.json")], stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{http_port}"
    try:
        for _ in range(300):
            try:
                if requests.get(f"{url}/system", auth=(USER, PASSWORD), timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if process.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start: {(folder / 'orthanc-main.log').read_text()[-2000:]}")
            time.sleep(0.1)
        else:
            raise RuntimeError("Orthanc did not come up in 30 s")
        yield Orthanc(url)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
