"""Typed, versioned records: what the harness writes and every reader reads.

- ``BatchRecord`` (``records.batch``): one batch run, ``<hw>/batch/<library>/<model>/<dataset>.json``.
- ``ServingRow`` (``records.serving``): one request rate of a serving sweep, a row of
  ``<hw>/serving/<library>_<model>_<dataset>.csv``.
- ``ModuleRow`` (``records.modules``): one op at one shape and stage, a row of
  ``<hw>/modules/<library>_<stage>_<sweep>.csv``.

Each has ``from_dict`` / ``to_dict`` and a ``schema_version`` (``records.base``: the current version, what a
version-1 record is, and the errors).
"""

from inference_eval.records.base import (SCHEMA_VERSION, RecordError, RecordVersionError,  # noqa: F401
                                         checked_table, schema_version)
from inference_eval.records.batch import BatchRecord  # noqa: F401
from inference_eval.records.modules import ModuleRow  # noqa: F401
from inference_eval.records.serving import ServingRow  # noqa: F401
