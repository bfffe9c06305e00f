"""A PACS over DICOMweb (dicomweb-client): find studies (QIDO-RS), fetch them (WADO-RS), store (STOW-RS).

Every failure is one typed error whose message names the operation and the HTTP status or the
network condition, never a URL path (it holds UIDs) or anything the PACS sent back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from pydicom.dataset import Dataset

from medical_data.dicom_io import valid_uid
from medical_data.errors import MedicalDataError

T = TypeVar("T")
STUDY_FIELDS = ("StudyInstanceUID", "AccessionNumber", "StudyDate", "StudyDescription", "ModalitiesInStudy")
QIDO_PAGE = 500
MAX_STUDIES = 100_000
"""Studies one query may return: a worklist larger than this is a query to narrow, not a night's work."""


class PacsError(MedicalDataError):
    """The PACS could not do what was asked (the message says what and why, with no identifiers)."""


class PacsUnavailable(PacsError):
    """No answer: the server is unreachable, refused the connection, or timed out."""


class PacsRefused(PacsError):
    """The server answered with an error status, or refused an instance sent to it."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class StudyQuery:
    """What to ask the PACS for. Dates are ``YYYYMMDD``; empty fields do not narrow the query."""

    date_from: str = ""
    date_to: str = ""
    modalities: tuple[str, ...] = ()
    accession_numbers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for value in (self.date_from, self.date_to):
            if value and not (len(value) == 8 and value.isdigit()):
                raise ValueError("dates are YYYYMMDD")
        for value in (*self.modalities, *self.accession_numbers):
            if not value or any(char in value for char in "*?\\=&,") or len(value) > 64:
                raise ValueError("modalities and accession numbers are plain values (no wildcards)")

    def filters(self) -> list[dict[str, str]]:
        """One QIDO filter set per (modality, accession number) pair; their answers are joined."""
        base: dict[str, str] = {}
        if self.date_from or self.date_to:
            base["StudyDate"] = f"{self.date_from}-{self.date_to}"
        modalities = self.modalities or ("",)
        accessions = self.accession_numbers or ("",)
        return [
            base | ({"ModalitiesInStudy": m} if m else {}) | ({"AccessionNumber": a} if a else {})
            for m in modalities
            for a in accessions
        ]


@dataclass(frozen=True)
class PacsStudy:
    study_instance_uid: str
    accession_number: str = ""
    study_description: str = ""
    modalities: str = ""


def _value(entry: dict[str, Any], keyword: str) -> str:
    from pydicom.datadict import tag_for_keyword

    item = entry.get(f"{tag_for_keyword(keyword):08X}") or {}
    values = item.get("Value") or []
    return "\\".join(str(v) for v in values) if values else ""


class Pacs:
    """One DICOMweb server. ``url`` is its DICOMweb root (e.g. ``http://pacs:8042/dicom-web``)."""

    def __init__(
        self,
        url: str,
        *,
        username: str = "",
        password: str = "",
        timeout_s: float = 60.0,
        retries: int = 2,
        study_timeout_s: float = 3600.0,
        max_instances: int = 20_000,
        max_bytes: int = 32 * 1024**3,
    ) -> None:
        """``timeout_s`` bounds each wait for the server; ``study_timeout_s``, ``max_instances`` and
        ``max_bytes`` bound one study's retrieval as a whole (a server that trickles bytes, a study far
        larger than a worklist's): past them, that study fails and the next one starts."""
        import requests
        from dicomweb_client import DICOMwebClient
        from dicomweb_client.session_utils import create_session, create_session_from_user_pass

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PacsError("the PACS address must be an http(s) URL of its DICOMweb root")
        if parts.username or parts.password:
            raise PacsError("give the PACS credentials in the settings, not in its URL")
        if username and parts.scheme == "http" and not _loopback(parts.hostname):
            raise PacsError("PACS credentials go only over https (or to this machine's own loopback)")
        # the client logs a server's Warning header as sent; a PACS may put anything in it
        logging.getLogger("dicomweb_client").setLevel(logging.ERROR)
        self.invalid_uids = 0
        self.study_timeout_s, self.max_instances, self.max_bytes = study_timeout_s, max_instances, max_bytes
        self.url = url.rstrip("/")
        session: requests.Session = create_session_from_user_pass(username, password) if username else create_session()
        self._client = DICOMwebClient(url=self.url, session=session, timeout=timeout_s)
        self._client.set_http_retry_params(retry=retries > 0, max_attempts=max(1, retries + 1))

    def _call(self, what: str, function: Callable[[], T]) -> T:
        import requests

        try:
            return function()
        except requests.exceptions.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            raise PacsRefused(f"the PACS answered HTTP {status} to {what}", status) from None
        except requests.exceptions.Timeout:
            raise PacsUnavailable(f"the PACS did not answer {what} in time") from None
        except requests.exceptions.ConnectionError:
            raise PacsUnavailable(f"the PACS could not be reached for {what}") from None
        except requests.exceptions.RequestException as exc:
            raise PacsUnavailable(f"{what} failed ({type(exc).__name__})") from None
        except (ValueError, KeyError, TypeError) as exc:  # a body the client could not parse
            raise PacsRefused(f"the PACS sent an unreadable answer to {what} ({type(exc).__name__})") from None

    def find_studies(self, query: StudyQuery) -> list[PacsStudy]:
        """The studies that match, by Study Instance UID (each once), sorted by it."""
        found: dict[str, PacsStudy] = {}
        for filters in query.filters():
            for entry in self._pages(filters):
                uid = _value(entry, "StudyInstanceUID")
                if not valid_uid(uid):
                    self.invalid_uids += 1  # it would go into URLs and file names: left out, and counted
                    continue
                if uid not in found:
                    found[uid] = PacsStudy(
                        uid,
                        _value(entry, "AccessionNumber"),
                        _value(entry, "StudyDescription"),
                        _value(entry, "ModalitiesInStudy"),
                    )
                if len(found) > MAX_STUDIES:
                    raise PacsError(f"the query matches over {MAX_STUDIES} studies; narrow it")
        return [found[uid] for uid in sorted(found)]

    def _pages(self, filters: dict[str, str]) -> Iterator[dict[str, Any]]:
        """QIDO answers page by page (limit and offset). dicomweb-client's own ``get_remaining`` asks
        forever when a server ignores ``offset`` (Orthanc's plugin 1.7 does, answering in full at once):
        here a page that is empty, or adds nothing new, ends the query (a short page does not: a server
        may cap its pages below the limit asked for)."""
        offset, seen = 0, set()
        while True:
            page = self._call(
                "a study query",
                lambda offset=offset: self._client.search_for_studies(
                    fields=STUDY_FIELDS, search_filters=filters, limit=QIDO_PAGE, offset=offset
                ),
            )
            fresh = [entry for entry in page if _value(entry, "StudyInstanceUID") not in seen]
            yield from fresh
            seen.update(_value(entry, "StudyInstanceUID") for entry in fresh)
            if not fresh:  # an empty page, or one a server that ignores offset sent again
                return
            offset += len(page)

    def iter_study(self, study_instance_uid: str) -> Iterator[Dataset]:
        """The study's instances, one at a time, as datasets with their pixels."""
        iterator = self._call("a study retrieval", lambda: self._client.iter_study(study_instance_uid))
        while True:
            dataset = self._call("a study retrieval", lambda: next(iterator, None))
            if dataset is None:
                return
            yield dataset

    def retrieve_study(self, study_instance_uid: str, folder: Path) -> list[Path]:
        """Write the study's instances into ``folder`` as Part 10 files named by position."""
        from medical_data.dicom_io import write_atomically

        if not valid_uid(study_instance_uid):
            raise PacsError("the study's UID is not a UID")
        folder.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.study_timeout_s
        paths, size = [], 0
        for index, dataset in enumerate(self.iter_study(study_instance_uid)):
            if index >= self.max_instances:
                raise PacsRefused(f"the study has over {self.max_instances} instances; not drafted")
            path = folder / f"{index:06d}.dcm"
            dataset.file_meta = _file_meta(dataset)
            write_atomically(dataset, path)
            paths.append(path)
            size += path.stat().st_size
            if size > self.max_bytes:
                raise PacsRefused(f"the study is over {self.max_bytes // 1024**3} GiB; not drafted")
            if time.monotonic() > deadline:
                raise PacsUnavailable(f"the study's retrieval took over {self.study_timeout_s:g} s")
        if not paths:
            raise PacsRefused("the PACS returned no instances for a study its query listed")
        return paths

    def store(self, datasets: Sequence[Dataset]) -> None:
        """STOW-RS, then a QIDO-RS look-up of each instance: stored means the PACS lists it.

        The look-up is not redundant: a PACS may acknowledge an instance its own filters then drop
        (Orthanc answers a STOW-RS that its ``ReceivedInstanceFilter`` refuses with success).

        Raises:
            PacsRefused: an HTTP error, instances the server lists as failed (with their failure
                reason), or an acknowledged instance the server does not list afterwards.
        """
        response = self._call("storing an instance", lambda: self._client.store_instances(datasets=list(datasets)))
        failed = getattr(response, "FailedSOPSequence", None) or []
        if failed:
            reasons = sorted({f"0x{int(getattr(item, 'FailureReason', 0)):04X}" for item in failed})
            raise PacsRefused(f"the PACS refused {len(failed)} instance(s) (failure reason {', '.join(reasons)})")
        for dataset in datasets:
            listed = self._call(
                "checking a stored instance",
                lambda dataset=dataset: self._client.search_for_instances(
                    study_instance_uid=str(dataset.StudyInstanceUID),
                    search_filters={"SOPInstanceUID": str(dataset.SOPInstanceUID)},
                ),
            )
            if not listed:
                raise PacsRefused("the PACS acknowledged an instance but does not hold it (a filter refused it)")


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _file_meta(dataset: Dataset) -> Any:
    """File meta for a dataset that came over the wire (its transfer syntax as received, else explicit LE)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset(getattr(dataset, "file_meta", None) or FileMetaDataset())
    meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta
