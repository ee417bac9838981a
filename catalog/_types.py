"""Catalog records: models, GPUs and priced offers. Frozen, validated, units in every name."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from catalog.errors import CONTROL_CHARS_OR_NEWLINES, ErrorKind, FtplanError, printable

GIB = 1024**3
"""Bytes per GiB: every ``*_gib`` quantity in ftplan is in these units."""


class CatalogError(FtplanError, ValueError):
    """A name the catalog does not know, or a catalog file that cannot be read.

    The message says what is wrong, why, and how to fix it (with close matches where they exist).
    """

    kind = ErrorKind.USER_INPUT


class Provider(enum.StrEnum):
    """Where an offer runs. ``LOCAL`` is the user's own GPUs."""

    AWS = "aws"
    GCP = "gcp"
    AZURE = "azure"
    LAMBDA = "lambda"
    RUNPOD = "runpod"
    LOCAL = "local"


class Interconnect(enum.StrEnum):
    """How GPUs inside one machine talk to each other (sets the FSDP/DDP communication term)."""

    NVLINK = "nvlink"
    PCIE = "pcie"
    NONE = "none"


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    """Architecture facts of a decoder-only transformer, as in its Hugging Face ``config.json``.

    ``param_count`` is the total parameter count (embeddings and head included, counted once when
    tied). ``num_experts`` > 1 marks a mixture-of-experts model (all experts resident in memory).
    """

    name: str
    hf_id: str
    model_type: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tied_embeddings: bool
    param_count: int
    max_seq_len: int
    num_experts: int = 1
    experts_per_token: int = 1
    source: str
    as_of: str

    def __post_init__(self) -> None:
        for field in (
            "num_layers",
            "hidden_size",
            "intermediate_size",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "vocab_size",
            "param_count",
            "max_seq_len",
            "num_experts",
            "experts_per_token",
        ):
            value = getattr(self, field)
            if value <= 0:
                raise ValueError(f"model {self.name!r}: {field} must be > 0, got {value}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"model {self.name!r}: num_heads={self.num_heads} is not a multiple of "
                f"num_kv_heads={self.num_kv_heads}"
            )

    @property
    def q_dim(self) -> int:
        """Width of the query projection's output (heads × head_dim)."""
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of each of the key and value projections' outputs (kv_heads × head_dim)."""
        return self.num_kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear layer in one decoder layer, by module name.

        Names follow the Llama family (``q_proj`` ... ``down_proj``); MoE models repeat the MLP
        per expert, which ``num_experts`` accounts for.
        """
        h, i = self.hidden_size, self.intermediate_size
        return {
            "q_proj": (h, self.q_dim),
            "k_proj": (h, self.kv_dim),
            "v_proj": (h, self.kv_dim),
            "o_proj": (self.q_dim, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def params_per_layer(self) -> int:
        """Parameters in one decoder layer's linear layers (all experts), norms excluded."""
        attn = sum(
            a * b
            for name, (a, b) in self.linear_shapes().items()
            if name in ("q_proj", "k_proj", "v_proj", "o_proj")
        )
        mlp = sum(
            a * b
            for name, (a, b) in self.linear_shapes().items()
            if name in ("gate_proj", "up_proj", "down_proj")
        )
        return attn + mlp * self.num_experts

    def embedding_params(self) -> int:
        """Input embedding plus output head parameters (head counted once if tied)."""
        n = self.vocab_size * self.hidden_size
        return n if self.tied_embeddings else 2 * n


@dataclass(frozen=True, slots=True, kw_only=True)
class GPU:
    """One GPU model.

    ``usable_memory_gib`` is what the framework can allocate (the cloud's reported MiB where known,
    else the nominal size minus the ECC/driver reserve). TFLOP/s figures are dense peaks.
    ``achievable_matmul_tflops`` and ``achievable_bandwidth_tbps`` are what published
    microbenchmarks measured (the best dense 16-bit ``torch.matmul`` with fp32 accumulation, and a
    device-to-device copy), with ``achievable_source``; the estimator scales from these, falling
    back to the datasheet peaks where they are unknown.
    """

    name: str
    aliases: tuple[str, ...]
    arch: str
    memory_gib: float
    usable_memory_gib: float
    memory_bandwidth_tbps: float
    bf16_tflops: float | None
    fp16_tflops: float
    bf16_supported: bool
    intra_node_interconnect: Interconnect
    intra_node_gbps: float
    source: str
    as_of: str
    host_cpu_arch: str = "x86_64"
    achievable_matmul_tflops: float | None = None
    achievable_bandwidth_tbps: float | None = None
    achievable_source: str = ""

    def __post_init__(self) -> None:
        if self.usable_memory_gib <= 0 or self.usable_memory_gib > self.memory_gib * 1.1:
            raise ValueError(
                f"GPU {self.name!r}: usable_memory_gib={self.usable_memory_gib} is not within "
                f"(0, {self.memory_gib}]"
            )
        if self.bf16_supported and not self.bf16_tflops:
            raise ValueError(f"GPU {self.name!r} supports bf16 but has no bf16_tflops")
        for name in ("achievable_matmul_tflops", "achievable_bandwidth_tbps"):
            value = getattr(self, name)
            if value is not None and not 0 < value < float("inf"):
                raise ValueError(f"GPU {self.name!r}: {name} must be > 0, got {value}")

    @property
    def matmul_tflops(self) -> float:
        """Dense peak for the 16-bit type this GPU trains in (bf16, else fp16)."""
        return self.bf16_tflops if self.bf16_supported and self.bf16_tflops else self.fp16_tflops

    @property
    def sustained_matmul_tflops(self) -> float:
        """Dense 16-bit matmul TFLOP/s the card reaches in practice: the measured
        ``achievable_matmul_tflops``, else the datasheet :attr:`matmul_tflops`."""
        return self.achievable_matmul_tflops or self.matmul_tflops

    @property
    def sustained_bandwidth_tbps(self) -> float:
        """Memory bandwidth the card reaches in practice, TB/s: the measured
        ``achievable_bandwidth_tbps``, else the datasheet ``memory_bandwidth_tbps``."""
        return self.achievable_bandwidth_tbps or self.memory_bandwidth_tbps


_OFFER_TEXT_FIELDS = (
    "service",
    "instance_type",
    "region",
    "gpu",
    "as_of",
    "source",
    "billing_source",
    "startup_source",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Offer:
    """A rentable machine (or the user's own) at one price.

    ``usd_per_hour`` is for the whole instance (all ``gpu_count`` GPUs). A spot and an on-demand
    price of the same instance are two offers. ``stale`` marks a price known to predate a change.
    Billing terms (``billing_increment_s``, ``min_billing_hours``, ``billing_upfront``) and
    ``provision_minutes`` (None: the planner's default) come from ``catalog/data/services.csv``
    for the offer's provider and service, each with its source.
    """

    provider: Provider
    service: str
    instance_type: str
    region: str
    gpu: str
    gpu_count: int
    usd_per_hour: float
    spot: bool
    as_of: str
    source: str
    inter_node_gbps: float = 0.0
    max_nodes: int = 1
    stale: bool = False
    vcpus: int | None = None
    memory_gib: float | None = None
    billing_increment_s: float = 1.0
    min_billing_hours: float = 0.0
    billing_upfront: bool = False
    billing_source: str = ""
    provision_minutes: float | None = None
    startup_source: str = ""

    def __post_init__(self) -> None:
        for name in _OFFER_TEXT_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, str) or CONTROL_CHARS_OR_NEWLINES.search(value):
                # Offer names reach terminals, reports and cloud task files (YAML) verbatim: a
                # newline there would start a new key.
                raise ValueError(f"offer {name} {printable(value)[:80]!r} is not one line of text")
        if not self.billing_increment_s > 0:
            raise ValueError(
                f"offer {self.instance_type!r}: billing_increment_s must be > 0, "
                f"got {self.billing_increment_s}"
            )
        if self.min_billing_hours < 0:
            raise ValueError(f"offer {self.instance_type!r}: min_billing_hours must be >= 0")
        if self.provision_minutes is not None and self.provision_minutes < 0:
            raise ValueError(f"offer {self.instance_type!r}: provision_minutes must be >= 0")
        if self.gpu_count <= 0:
            raise ValueError(f"offer {self.instance_type!r}: gpu_count must be > 0")
        if self.usd_per_hour < 0:
            raise ValueError(
                f"offer {self.instance_type!r}: usd_per_hour must be >= 0, got {self.usd_per_hour}"
            )
        if self.max_nodes <= 0:
            raise ValueError(f"offer {self.instance_type!r}: max_nodes must be > 0")

    def billed_hours(self, run_hours: float) -> float:
        """Hours the provider bills for a run of ``run_hours``: whole billing increments, at
        least the minimum (e.g. a 3.2 h run on an EC2 Capacity Block is billed 24 h)."""
        if run_hours <= 0:
            return self.min_billing_hours
        increments = math.ceil(run_hours * 3600 / self.billing_increment_s - 1e-9)
        return max(self.min_billing_hours, increments * self.billing_increment_s / 3600)

    @property
    def billing_label(self) -> str:
        """``per second, 1 min minimum`` style description of the billing unit."""
        inc = self.billing_increment_s
        unit = {1.0: "per second", 60.0: "per minute", 3600.0: "per hour", 86400.0: "per day"}
        text = unit.get(float(inc), f"per {inc:g} s")
        if self.min_billing_hours >= 1:
            text += f", {self.min_billing_hours:g} h minimum"
        elif self.min_billing_hours > 0:
            text += f", {self.min_billing_hours * 60:.0f} min minimum"
        return text + (", paid upfront" if self.billing_upfront else "")

    @property
    def key(self) -> str:
        """Stable identifier: provider/service/instance/region/(spot|on-demand)."""
        kind = "spot" if self.spot else "on-demand"
        return f"{self.provider.value}/{self.service}/{self.instance_type}/{self.region}/{kind}"
