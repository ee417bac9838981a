"""Catalog: what exists and what it costs (models, GPUs, priced offers), each row with its source
and date. Pure lookups over shipped package data or the user's refreshed cache; no torch."""

from __future__ import annotations

from catalog._codec import from_jsonable, from_tagged_json, tagged_json, to_jsonable
from catalog._hf_config import model_from_hf_config
from catalog._io import atomic_write_text
from catalog._load import (
    PRICE_AGE_WARNING_DAYS,
    CatalogInfo,
    ServiceTerms,
    cache_dir,
    catalog_age_warning,
    catalog_info,
    cheapest_per_instance,
    get_gpu,
    get_model,
    list_gpus,
    list_models,
    list_offers,
    local_offer,
    model_aliases,
    parse_provider,
    service_terms,
    user_offers_path,
    with_service_terms,
)
from catalog._sky_names import (
    gpu_for_sky_accelerator,
    sky_accelerator_for_gpu,
    sky_name_is_ambiguous,
)
from catalog._types import GIB, GPU, CatalogError, Interconnect, ModelSpec, Offer, Provider
from catalog.refresh import PriceChange, RefreshResult, refresh_aws
from catalog.skypilot import SkyPilotRefreshResult, refresh_from_skypilot

__all__ = [
    "GIB",
    "GPU",
    "PRICE_AGE_WARNING_DAYS",
    "CatalogError",
    "CatalogInfo",
    "Interconnect",
    "ModelSpec",
    "Offer",
    "PriceChange",
    "Provider",
    "RefreshResult",
    "ServiceTerms",
    "SkyPilotRefreshResult",
    "atomic_write_text",
    "cache_dir",
    "catalog_age_warning",
    "catalog_info",
    "cheapest_per_instance",
    "from_jsonable",
    "from_tagged_json",
    "get_gpu",
    "get_model",
    "gpu_for_sky_accelerator",
    "list_gpus",
    "list_models",
    "list_offers",
    "local_offer",
    "model_aliases",
    "model_from_hf_config",
    "parse_provider",
    "refresh_aws",
    "service_terms",
    "refresh_from_skypilot",
    "sky_accelerator_for_gpu",
    "sky_name_is_ambiguous",
    "tagged_json",
    "to_jsonable",
    "user_offers_path",
    "with_service_terms",
]
