"""One mapping between SkyPilot's accelerator names and ftplan's GPU names, both directions.

SkyPilot names an accelerator per cloud (``sky show-gpus``; the names come from each cloud's
catalog fetcher in ``sky/catalog/data_fetchers``). Most names mean the same part everywhere, but a
few depend on the cloud: RunPod's ``H100`` is the PCIe card (``fetch_runpod.GPU_NAME_OVERRIDES``
maps ``H100-PCIe`` to ``H100``) and its SXM part is ``H100-SXM``, while Lambda, AWS, GCP and Azure
call the SXM part ``H100``. A name not listed here is unknown: refreshes count and report it and
never guess.
"""

from __future__ import annotations

from dataclasses import dataclass

from catalog._types import Provider


@dataclass(frozen=True, slots=True, kw_only=True)
class SkyAccelerator:
    """One SkyPilot accelerator name and the ftplan GPU it is.

    Attributes:
        sky_name: SkyPilot's accelerator name (``AcceleratorName`` in ``<cloud>/vms.csv``).
        gpu: ftplan's canonical GPU name (``catalog/data/gpus.csv``).
        provider: The cloud where this meaning holds; None means every cloud without its own row.
        instance_marker: Only instance types whose name contains this text (case-insensitive),
            for clouds that give two parts one accelerator name.
    """

    sky_name: str
    gpu: str
    provider: Provider | None = None
    instance_marker: str = ""


#: The mapping. More specific rows (provider, instance marker) win over general ones.
SKY_ACCELERATORS: tuple[SkyAccelerator, ...] = (
    SkyAccelerator(sky_name="H100", gpu="H100 SXM 80GB"),
    SkyAccelerator(sky_name="H100-SXM", gpu="H100 SXM 80GB", provider=Provider.RUNPOD),
    SkyAccelerator(sky_name="H100", gpu="H100 PCIe", provider=Provider.RUNPOD),
    # Lambda's gpu_1x_h100_pcie: fetch_lambda_cloud.name_to_gpu() drops the form factor.
    SkyAccelerator(
        sky_name="H100", gpu="H100 PCIe", provider=Provider.LAMBDA, instance_marker="pcie"
    ),
    # Azure NC40ads_H100_v5 carries one H100 NVL (94 GB); SkyPilot's family map says "H100".
    SkyAccelerator(
        sky_name="H100", gpu="H100 NVL", provider=Provider.AZURE, instance_marker="ads_H100_v5"
    ),
    SkyAccelerator(sky_name="H100-NVL", gpu="H100 NVL"),
    SkyAccelerator(sky_name="H200", gpu="H200"),
    SkyAccelerator(sky_name="H200-SXM", gpu="H200", provider=Provider.RUNPOD),
    SkyAccelerator(sky_name="GH200", gpu="GH200"),
    SkyAccelerator(sky_name="B200", gpu="B200"),
    SkyAccelerator(sky_name="A100-80GB", gpu="A100 SXM 80GB"),
    # RunPod: A100-PCIe is renamed A100-80GB, A100-SXM is A100-80GB-SXM (GPU_NAME_OVERRIDES).
    SkyAccelerator(sky_name="A100-80GB", gpu="A100 PCIe 80GB", provider=Provider.RUNPOD),
    SkyAccelerator(sky_name="A100-80GB-SXM", gpu="A100 SXM 80GB", provider=Provider.RUNPOD),
    SkyAccelerator(sky_name="A100", gpu="A100 SXM 40GB"),
    SkyAccelerator(sky_name="A10G", gpu="A10G"),
    SkyAccelerator(sky_name="A10", gpu="A10"),
    SkyAccelerator(sky_name="L4", gpu="L4"),
    SkyAccelerator(sky_name="L40S", gpu="L40S"),
    SkyAccelerator(sky_name="T4", gpu="T4"),
    SkyAccelerator(sky_name="V100", gpu="V100 16GB"),
    SkyAccelerator(sky_name="V100-32GB", gpu="V100 32GB"),
    SkyAccelerator(sky_name="V100-SXM2-32GB", gpu="V100 32GB", provider=Provider.RUNPOD),
    SkyAccelerator(sky_name="RTX4090", gpu="RTX 4090"),
    SkyAccelerator(sky_name="RTX3090", gpu="RTX 3090"),
    SkyAccelerator(sky_name="A6000", gpu="RTX A6000"),
    SkyAccelerator(sky_name="RTXA6000", gpu="RTX A6000", provider=Provider.RUNPOD),
    SkyAccelerator(sky_name="RTX6000-Ada", gpu="RTX 6000 Ada"),
)


def _specificity(entry: SkyAccelerator) -> tuple[int, int]:
    return (entry.provider is not None, bool(entry.instance_marker))


def gpu_for_sky_accelerator(
    sky_name: str, *, provider: Provider, instance_type: str = ""
) -> str | None:
    """ftplan's GPU name for SkyPilot's ``sky_name`` on ``provider``, or None when unknown.

    A row for the provider replaces the general row of the same SkyPilot name.
    """
    marker_text = instance_type.lower()
    matches = [
        e
        for e in SKY_ACCELERATORS
        if e.sky_name.lower() == sky_name.strip().lower()
        and e.provider in (None, provider)
        and (not e.instance_marker or e.instance_marker.lower() in marker_text)
    ]
    if not matches:
        return None
    return max(matches, key=_specificity).gpu


def sky_accelerator_for_gpu(gpu: str, *, provider: Provider, instance_type: str = "") -> str:
    """SkyPilot's accelerator name for ftplan's ``gpu`` on ``provider`` (for ``accelerators:``).

    Raises:
        KeyError: When SkyPilot has no name for that GPU on that provider.
    """
    for entry in sorted(SKY_ACCELERATORS, key=_specificity, reverse=True):
        if entry.gpu != gpu or entry.provider not in (None, provider):
            continue
        back = gpu_for_sky_accelerator(
            entry.sky_name,
            provider=provider,
            instance_type=instance_type or entry.instance_marker,
        )
        if back == gpu:
            return entry.sky_name
    raise KeyError(gpu)


def sky_name_is_ambiguous(sky_name: str, *, provider: Provider) -> bool:
    """True when ``sky_name`` means more than one ftplan GPU on ``provider`` (e.g. Lambda's
    ``H100``, SXM or PCIe): a launch then has to name the instance type too."""
    gpus = {
        e.gpu
        for e in SKY_ACCELERATORS
        if e.sky_name.lower() == sky_name.lower() and e.provider in (None, provider)
    }
    return len(gpus) > 1
