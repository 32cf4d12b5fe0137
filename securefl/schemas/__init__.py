"""Published JSON Schemas (draft 2020-12) of the files a federation writes.

* ``ledger-record.schema.json``: one line of ``ledger.jsonl``
  (:mod:`securefl.privacy.ledger`): a header, an in-flight row, a settled
  row or a commit.  The schema checks each record on its own; the hash
  chain, the block structure and the epsilons are what ``securefl audit``
  verifies.
* ``metrics.schema.json``: ``metrics.json``, as the in-process simulator and
  the Flower ServerApp write it.

The files ship inside the package (no training extra needed to read them)::

    from securefl.schemas import load_schema
    import jsonschema
    jsonschema.Draft202012Validator(load_schema("metrics")).validate(doc)
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from securefl.errors import ConfigurationError

__all__ = ["SCHEMAS", "load_schema", "schema_text"]

SCHEMAS = {
    "ledger-record": "ledger-record.schema.json",
    "metrics": "metrics.schema.json",
}
"""Schema name -> file name inside this package."""


def schema_text(name: str) -> str:
    """The schema's file as published (UTF-8 text).

    Raises:
        ConfigurationError: for a name not in :data:`SCHEMAS`.
    """
    try:
        filename = SCHEMAS[name]
    except KeyError:
        raise ConfigurationError(f"no schema named {name!r}; the schemas are"
                                 f" {', '.join(sorted(SCHEMAS))}") from None
    return resources.files(__name__).joinpath(filename).read_text(encoding="utf-8")


def load_schema(name: str) -> dict[str, Any]:
    """The schema named ``name`` (a key of :data:`SCHEMAS`), parsed.

    Raises:
        ConfigurationError: for a name not in :data:`SCHEMAS`.
    """
    schema: dict[str, Any] = json.loads(schema_text(name))
    return schema
