"""Catalog: what exists and what it costs (models, GPUs, priced offers), each row with its source
and date. Pure lookups over shipped package data or the user's refreshed cache; no torch."""

from __future__ import annotations

from catalog._codec import from_jsonable, to_jsonable
from catalog._io import atomic_write_text
from catalog._types import GPU, CatalogError, Interconnect, ModelSpec, Offer, Provider

__all__ = [
    "GPU",
    "CatalogError",
    "Interconnect",
    "ModelSpec",
    "Offer",
    "Provider",
    "atomic_write_text",
    "from_jsonable",
    "to_jsonable",
]
