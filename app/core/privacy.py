"""Keep patient data out of logs and terminals.

pydicom reports malformed values by quoting them ("Invalid value for VR PN: 'Doe^Jane'"), through
both its logger and ``warnings``. omniclinic reports the same problems as typed errors that name
the problem and never the value, so pydicom's own reports are silenced process-wide.
"""

from __future__ import annotations

import logging
import warnings


def protect_patient_data_in_logs() -> None:
    """Silence pydicom's value-quoting log records and warnings (idempotent)."""
    pydicom_logger = logging.getLogger("pydicom")
    pydicom_logger.setLevel(logging.CRITICAL + 1)
    pydicom_logger.propagate = False
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
