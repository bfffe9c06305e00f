"""DICOM studies, audio and clinical notes in; de-identified data out.

Depends on pydicom, MONAI and numpy only; never on ``omni_core``, ``app`` or ``training``.
"""
