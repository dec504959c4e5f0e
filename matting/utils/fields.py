"""Dataclass fields that carry their documentation, for the schemas that users write (configs, model options)."""

from __future__ import annotations

from dataclasses import field
from typing import Any

__all__ = ["doc_field"]


def doc_field(default: Any, doc: str, choices: tuple | None = None) -> Any:
    """A dataclass field with its documentation (``metadata["doc"]``) and allowed values (``metadata["choices"]``,
    None: any value of the field's type). A list or dict default is copied for every instance."""
    meta = {"doc": doc, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)
