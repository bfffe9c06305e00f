"""The clinician web app (FastAPI + Gradio) and the ``omniclinic`` command."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("omniclinic")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
