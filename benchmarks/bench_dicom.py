"""DICOM loading and de-identification speed, as ratios against bare pydicom in the same run.

- load: ``pydicom.dcmread`` + ``pixel_array`` (the baseline), the same plus a window done the obvious
  way in numpy ("naive"), and ``read_dicom`` + ``render`` (our bounded read, structure checks,
  modality LUT and window), over 512x512 CT slices made here and the small files pydicom ships.
  Aim: ours within 1.25x of bare pydicom.
- de-identification: read + Annex E walk + atomic write, small files, one process. Aim: > 300 files/s.
- ingest with ``--workers`` 1 and 2: files per second through ``ingest_folder`` (de-identification
  only, no cache), 400 512x512 CT slices; the ratio says what a second process buys on this machine.

Each figure is the median of several rounds; the ratio is what to compare across machines.
Run: ``make bench`` or ``python benchmarks/bench_dicom.py``.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from medical_data.deid import DicomDeidentifier
from medical_data.deid.batch import deidentify_one
from medical_data.dicom_io import DEFAULT_LIMITS, read_dicom
from medical_data.discovery import InputFile
from medical_data.ingest import ingest_folder
from medical_data.pixels import render

ROUNDS = 5
SMALL_FILES = ["CT_small.dcm", "MR_small.dcm", "emri_small.dcm", "US1_UNCR.dcm", "SC_rgb.dcm"]


def ct_slice(index: int, study: str, series: str) -> Dataset:
    rng = np.random.default_rng(index)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, series, "CT"
    ds.PatientName, ds.PatientID, ds.StudyDate = "Bench^Mark", "BENCH-1", "20240101"
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, index * 1.25], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.Rows, ds.Columns = [0.7, 0.7], 512, 512
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.PixelData = rng.integers(0, 4096, (512, 512), dtype=np.uint16).tobytes()
    return ds


def timed(work: Callable[[], int]) -> float:
    """Median seconds per item over ROUNDS rounds of ``work`` (which returns how many items it did)."""
    per_item = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        count = work()
        per_item.append((time.perf_counter() - started) / count)
    return statistics.median(per_item)


def bare(paths: list[Path]) -> int:
    for path in paths:
        pydicom.dcmread(path).pixel_array  # noqa: B018 - decoding is the work being timed
    return len(paths)


def naive(paths: list[Path]) -> int:
    """Bare pydicom plus the same window written the obvious way in numpy (what ours replaces)."""
    for path in paths:
        ds = pydicom.dcmread(path)
        if "PixelData" not in ds or ds.get("SamplesPerPixel", 1) != 1:
            ds.pixel_array  # noqa: B018 - colour: decoding only
            continue
        values = ds.pixel_array.astype(np.float32) * float(ds.get("RescaleSlope", 1)) + float(
            ds.get("RescaleIntercept", 0)
        )
        low, high = np.percentile(values, [0.5, 99.5])
        np.clip((values - low) / max(high - low, 1.0), 0.0, 1.0)
    return len(paths)


def ours(paths: list[Path]) -> int:
    for path in paths:
        render(read_dicom(path))
    return len(paths)


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        study, series = generate_uid(), generate_uid()
        large = []
        for index in range(40):
            path = root / "ct512" / f"{index}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            ct_slice(index, study, series).save_as(path, enforce_file_format=True)
            large.append(path)
        small = [Path(get_testdata_file(name)) for name in SMALL_FILES]

        print(f"{'load path, ms/file':<28}{'bare':>8}{'naive':>8}{'ours':>8}{'ours/bare':>11}{'ours/naive':>12}")
        for label, paths in (("512x512 CT slices (40)", large), ("pydicom small files (5)", small * 8)):
            base = timed(lambda p=paths: bare(p))
            plain = timed(lambda p=paths: naive(p))
            mine = timed(lambda p=paths: ours(p))
            print(
                f"{label:<28}{base * 1e3:>8.2f}{plain * 1e3:>8.2f}{mine * 1e3:>8.2f}"
                f"{mine / base:>11.2f}{mine / plain:>12.2f}"
            )
        print("bare: dcmread + pixel_array (raw stored values). naive: bare + rescale and a percentile window in")
        print("numpy. ours: bounded read with structure checks, then rescale + window to float32 [0, 1].")

        deidentifier = DicomDeidentifier(site_secret=b"benchmark-site-secret-0123456789")
        source = Path(get_testdata_file("CT_small.dcm"))
        inputs = []
        for index in range(200):
            copy = root / "small" / f"{index}.dcm"
            copy.parent.mkdir(parents=True, exist_ok=True)
            ds = pydicom.dcmread(source)
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.save_as(copy, enforce_file_format=True)
            inputs.append(InputFile(copy, copy.name))

        def deid_round() -> int:
            out = root / "out"
            shutil.rmtree(out, ignore_errors=True)
            written: set[str] = set()
            for item in inputs:
                deidentify_one(item, out, deidentifier, DEFAULT_LIMITS, written)
            return len(inputs)

        def copy_round() -> int:  # the floor: read and write back with no de-identification
            out = root / "copy"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            for item in inputs:
                pydicom.dcmread(item.path).save_as(out / item.path.name)
            return len(inputs)

        deid_s, copy_s = timed(deid_round), timed(copy_round)
        print(f"\nde-identification, CT_small-sized files ({source.stat().st_size // 1024} KiB), one process:")
        print(f"  bare pydicom read+write   {1 / copy_s:>8.0f} files/s")
        print(f"  ours (read, Annex E, atomic write) {1 / deid_s:>8.0f} files/s   ratio {deid_s / copy_s:.2f}x")
        bench_ingest_workers(root, deidentifier)


def bench_ingest_workers(root: Path, deidentifier: DicomDeidentifier) -> None:
    """Files per second through ``ingest_folder`` with one and two worker processes (median of 3 rounds)."""
    source = root / "ingest"
    study, series = generate_uid(), generate_uid()
    for index in range(400):
        path = source / f"{index:04d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ct_slice(index, study, series).save_as(path, enforce_file_format=True)
    rates = {}
    for workers in (1, 2):
        seconds = []
        for round_number in range(3):
            run = root / f"ingest-{workers}-{round_number}"
            started = time.perf_counter()
            summary = ingest_folder(
                source,
                run / "out",
                deidentifier,
                state_path=run / "state.jsonl",
                work_dir=run / "work",
                cache=False,
                workers=workers,
            )
            seconds.append(time.perf_counter() - started)
            assert summary.written == 400
            shutil.rmtree(run)
        rates[workers] = 400 / statistics.median(seconds)
    print("\ningest (de-identification only), 400 CT slices of 512x512:")
    for workers, rate in rates.items():
        print(f"  --workers {workers}   {rate:>8.0f} files/s")
    print(f"  2 workers / 1 worker: {rates[2] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
