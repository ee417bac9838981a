"""Catalog data, loading, name resolution and the ``ftplan catalog`` commands (CPU, offline)."""

from __future__ import annotations

import csv
import dataclasses
import json
from datetime import date
from pathlib import Path

import pytest
from click.testing import CliRunner

from catalog import (
    CatalogError,
    CatalogInfo,
    Interconnect,
    Provider,
    catalog_age_warning,
    catalog_info,
    get_gpu,
    get_model,
    list_gpus,
    list_models,
    list_offers,
    local_offer,
    model_from_hf_config,
    parse_provider,
    service_terms,
)
from catalog._load import DATA_DIR
from planner.cli import main

REQUIRED_MODELS = (
    "llama2-7b",
    "llama2-13b",
    "llama2-70b",
    "llama3.1-8b",
    "llama3.1-70b",
    "llama3.2-1b",
    "llama3.2-3b",
    "mistral-7b",
    "qwen2.5-0.5b",
    "qwen2.5-1.5b",
    "qwen2.5-7b",
    "qwen2.5-14b",
    "qwen2.5-32b",
    "qwen2.5-72b",
    "phi3-mini",
    "gemma-2b",
    "gemma-7b",
    "gemma2-9b",
)

# Architecture of meta-llama/Llama-3.2-1B as in its config.json (the keys ftplan reads).
LLAMA32_1B_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "vocab_size": 128256,
    "tie_word_embeddings": True,
    "max_position_embeddings": 131072,
}


def _csv_rows(name: str) -> list[dict[str, str]]:
    with (DATA_DIR / name).open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("name", ["models.csv", "gpus.csv", "offers.csv"])
def test_every_row_has_source_and_a_past_iso_date(name: str) -> None:
    rows = _csv_rows(name)
    assert len(rows) >= 20
    for row in rows:
        assert row["source"].strip(), row
        as_of = date.fromisoformat(row["as_of"])
        assert date(2023, 1, 1) <= as_of <= date(2026, 12, 31), row


def test_required_models_present_and_resolvable_by_alias_and_hf_id() -> None:
    names = {m.name for m in list_models()}
    assert set(REQUIRED_MODELS) <= names
    assert len(names) >= 20
    assert get_model("LLAMA2-7B").name == "llama2-7b"
    assert get_model("meta-llama/Llama-2-7b-hf").name == "llama2-7b"
    assert get_model("Llama-2-7b-hf").name == "llama2-7b"
    assert get_model("Qwen/Qwen2.5-1.5B").name == "qwen2.5-1.5b"
    assert get_model("llama-3.1-8b").name == "llama3.1-8b"


def test_param_counts_match_the_architecture_within_one_percent() -> None:
    for spec in list_models():
        norms = spec.hidden_size * (2 * spec.num_layers + 1)
        arithmetic = spec.params_per_layer() * spec.num_layers + spec.embedding_params() + norms
        assert abs(arithmetic / spec.param_count - 1) < 0.01, spec.name


def test_reference_architectures_and_measured_param_counts() -> None:
    llama1b, qwen = get_model("llama3.2-1b"), get_model("qwen2.5-1.5b")
    assert (llama1b.num_layers, llama1b.hidden_size, llama1b.num_kv_heads) == (16, 2048, 8)
    assert (llama1b.vocab_size, llama1b.tied_embeddings) == (128256, True)
    assert (qwen.num_layers, qwen.hidden_size, qwen.num_kv_heads) == (28, 1536, 2)
    assert (qwen.vocab_size, qwen.tied_embeddings) == (151936, True)
    # total_params measured on the H100 (reference h100-measurements.jsonl)
    assert llama1b.param_count == 1235814400
    assert qwen.param_count == 1543714304
    llama7b = get_model("llama2-7b")
    assert (llama7b.num_layers, llama7b.hidden_size, llama7b.vocab_size) == (32, 4096, 32000)
    mixtral = get_model("mixtral")
    assert (mixtral.num_experts, mixtral.experts_per_token) == (8, 2)
    assert get_model("gemma-7b").head_dim == 256


def test_model_from_config_json_file_and_folder(tmp_path: Path) -> None:
    folder = tmp_path / "my-llama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA32_1B_CONFIG))
    spec = get_model(str(folder))
    assert spec.param_count == 1235814400  # equals the measured total
    assert spec.name == "my-llama"
    assert spec.source == str(folder / "config.json")
    assert model_from_hf_config(folder / "config.json") == spec


def test_model_from_qwen_config_counts_biases(tmp_path: Path) -> None:
    config = {
        "model_type": "qwen2",
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
        "max_position_embeddings": 131072,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert get_model(str(path)).param_count == 1543714304


def test_config_without_required_key_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({k: v for k, v in LLAMA32_1B_CONFIG.items() if k != "vocab_size"}))
    with pytest.raises(CatalogError, match="lacks an integer 'vocab_size'"):
        get_model(str(path))


def test_unknown_model_suggests_close_matches() -> None:
    with pytest.raises(CatalogError) as excinfo:
        get_model("lama2-7b")
    message = str(excinfo.value)
    assert message.startswith("unknown model 'lama2-7b'. Did you mean: llama2-7b")
    assert "See 'ftplan catalog models'" in message


def test_gpu_aliases_resolve_case_insensitively() -> None:
    expected = {
        "h100": "H100 SXM 80GB",
        "H100": "H100 SXM 80GB",
        "h100 sxm 80gb": "H100 SXM 80GB",
        "h200": "H200",
        "a100": "A100 SXM 80GB",
        "a100-80gb": "A100 SXM 80GB",
        "a100-40gb": "A100 SXM 40GB",
        "l4": "L4",
        "a10g": "A10G",
        "l40s": "L40S",
        "t4": "T4",
        "v100": "V100 16GB",
        "rtx4090": "RTX 4090",
        "4090": "RTX 4090",
        "h100-pcie": "H100 PCIe",
        "a6000": "RTX A6000",
    }
    for alias, name in expected.items():
        assert get_gpu(alias).name == name, alias


def test_gpu_facts() -> None:
    h100 = get_gpu("h100")
    assert h100.usable_memory_gib == pytest.approx(81559 / 1024, abs=1e-3)  # torch total
    assert h100.intra_node_interconnect is Interconnect.NVLINK and h100.intra_node_gbps == 900
    assert get_gpu("l4").usable_memory_gib == pytest.approx(22888 / 1024, abs=0.01)
    for name in ("t4", "v100", "v100-32gb"):
        assert get_gpu(name).bf16_supported is False
        assert get_gpu(name).matmul_tflops > 0
    assert all(g.memory_bandwidth_tbps > 0 for g in list_gpus())


def test_every_gpu_has_sustained_rates_from_a_cited_measurement() -> None:
    """The time model scales from what microbenchmarks measured, not from datasheets: every
    GPU names where its matmul rate and bandwidth come from, and the figures are plausible
    shares of the datasheet's (power-capped cards reach less, GeForce cards about all)."""
    for gpu in list_gpus():
        assert gpu.achievable_matmul_tflops and gpu.achievable_bandwidth_tbps, gpu.name
        assert gpu.achievable_source.startswith("matmul") and "bandwidth" in gpu.achievable_source
        assert 0.3 < gpu.achievable_matmul_tflops / gpu.matmul_tflops < 1.1, gpu.name
        assert 0.7 < gpu.achievable_bandwidth_tbps / gpu.memory_bandwidth_tbps <= 1.0, gpu.name
        assert gpu.sustained_matmul_tflops == gpu.achievable_matmul_tflops
    # MAMF (stas00/ml-engineering): H100 SXM 794.5 of 989, A100 SXM 271.2 of 312; an RTX 4090
    # reaches its 165.2 TFLOP/s fp32-accumulate figure, half the fp16-accumulate headline.
    assert get_gpu("h100").sustained_matmul_tflops == 794.5
    assert get_gpu("a100").sustained_matmul_tflops == 271.2
    assert get_gpu("rtx4090").sustained_matmul_tflops == pytest.approx(165.2, rel=0.02)
    # Without a measurement the datasheet stands in.
    bare = dataclasses.replace(get_gpu("l4"), achievable_matmul_tflops=None)
    assert bare.sustained_matmul_tflops == bare.matmul_tflops


def test_unknown_gpu_suggests_close_matches() -> None:
    with pytest.raises(CatalogError, match=r"unknown GPU 'rtx409'\. Did you mean: RTX 4090"):
        get_gpu("rtx409")


def test_offers_are_consistent() -> None:
    offers = list_offers()
    assert len({o.key for o in offers}) == len(offers)
    gpu_names = {g.name for g in list_gpus()}
    for offer in offers:
        assert offer.gpu in gpu_names
        assert offer.usd_per_hour > 0
    providers = {o.provider for o in offers}
    assert providers == {
        Provider.AWS,
        Provider.GCP,
        Provider.AZURE,
        Provider.LAMBDA,
        Provider.RUNPOD,
    }
    p5 = [o for o in offers if o.instance_type == "p5.48xlarge" and o.service == "ec2"]
    assert {o.spot for o in p5} == {True, False}
    assert all(o.stale and o.gpu_count == 8 and o.inter_node_gbps == 400 for o in p5)
    assert not any(o.stale for o in offers if o.instance_type.startswith("g5"))


def test_list_offers_filters() -> None:
    aws_l4 = list_offers(providers=["aws"], gpus=["l4"], include_spot=False)
    assert aws_l4 and all(
        o.provider is Provider.AWS and o.gpu == "L4" and not o.spot for o in aws_l4
    )
    g6 = [o for o in aws_l4 if o.instance_type == "g6.xlarge"]
    assert [o.usd_per_hour for o in g6] == [0.8048]
    assert len(list_offers(gpus=[get_gpu("h100")])) > len(
        list_offers(gpus=["h100"], include_spot=False)
    )


def test_local_offer() -> None:
    offer = local_offer(gpu=get_gpu("rtx4090"), gpu_count=2, usd_per_hour=0.3, as_of="2026-01-02")
    assert offer.provider is Provider.LOCAL
    assert (offer.gpu, offer.gpu_count, offer.usd_per_hour) == ("RTX 4090", 2, 0.3)
    assert offer.as_of == "2026-01-02" and not offer.spot
    assert parse_provider("AWS") is Provider.AWS
    with pytest.raises(CatalogError, match="Known providers: aws"):
        parse_provider("oracle")


def _write_cached_offers(
    cache: Path, mutate: dict[str, str] | None = None, drop_column: str | None = None
) -> Path:
    rows = _csv_rows("offers.csv")[:3]
    if mutate:
        rows[1].update(mutate)
    columns = [c for c in rows[0] if c != drop_column]
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / "offers.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_refreshed_cache_is_used_when_present(user_cache: Path) -> None:
    path = _write_cached_offers(user_cache)
    assert len(list_offers()) == 3
    info = catalog_info(today=date(2025, 6, 30))
    assert info.refreshed and info.offers_path == str(path)
    assert info.age_days == (date(2025, 6, 30) - date.fromisoformat(info.oldest_price_as_of)).days


def test_broken_number_names_file_row_and_column(user_cache: Path) -> None:
    path = _write_cached_offers(user_cache, mutate={"usd_per_hour": "1,2x"})
    with pytest.raises(CatalogError) as excinfo:
        list_offers()
    message = str(excinfo.value)
    assert str(path) in message and "row 3" in message and "'usd_per_hour'" in message


def test_missing_column_names_file_and_column(user_cache: Path) -> None:
    path = _write_cached_offers(user_cache, drop_column="gpu_count")
    with pytest.raises(CatalogError, match="lacks column.*gpu_count") as excinfo:
        list_offers()
    assert str(path) in str(excinfo.value)


def test_unknown_gpu_in_offers_file_is_reported(user_cache: Path) -> None:
    _write_cached_offers(user_cache, mutate={"gpu": "Z100"})
    with pytest.raises(CatalogError, match="row 3, column 'gpu'"):
        list_offers()


def _info(oldest: str, stale: int = 0) -> CatalogInfo:
    return CatalogInfo(
        offers_path="x",
        refreshed=False,
        offer_count=1,
        oldest_price_as_of=oldest,
        newest_price_as_of=oldest,
        stale_offer_count=stale,
        age_days=0,
    )


def test_age_warning_only_after_90_days() -> None:
    today = date(2026, 1, 31)
    assert catalog_age_warning(_info("2025-11-02"), today) is None  # 90 days
    warning = catalog_age_warning(_info("2025-11-01"), today)
    assert warning == (
        "prices are 91 days old (oldest 2025-11-01); run 'ftplan catalog refresh --from skypilot'"
    )
    assert "2 offers are marked stale" in (
        catalog_age_warning(_info("2026-01-30", 2), today) or ""
    )
    shipped = catalog_info(today=date(2026, 11, 23))
    assert shipped.stale_offer_count >= 8 and shipped.age_days > 90


def test_cli_models_json() -> None:
    result = CliRunner().invoke(main, ["catalog", "models", "--format", "json"])
    assert result.exit_code == 0, result.output
    models = {m["name"]: m for m in json.loads(result.output)}
    assert set(REQUIRED_MODELS) <= set(models)
    assert models["llama3.2-1b"]["param_count"] == 1235814400


def test_cli_gpus_table_and_offers_json() -> None:
    runner = CliRunner()
    gpus = runner.invoke(main, ["catalog", "gpus"])
    assert gpus.exit_code == 0 and "H100 SXM 80GB" in gpus.output and "rtx4090" in gpus.output
    offers = runner.invoke(
        main,
        [
            "catalog",
            "offers",
            "--gpu",
            "h100",
            "--provider",
            "aws",
            "--no-spot",
            "--format",
            "json",
        ],
    )
    assert offers.exit_code == 0, offers.output
    rows = json.loads(offers.output)
    assert rows and {r["gpu"] for r in rows} == {"H100 SXM 80GB"}
    assert not any(r["spot"] for r in rows) and {r["provider"] for r in rows} == {"aws"}
    assert 98.32 in [r["usd_per_hour"] for r in rows]


def test_cli_offers_table_warns_about_old_prices() -> None:
    result = CliRunner().invoke(main, ["catalog", "offers", "--gpu", "l4"])
    assert result.exit_code == 0
    assert "g6.xlarge" in result.output and "ftplan catalog refresh" in result.output


@pytest.mark.parametrize(
    "args", [["catalog", "offers", "--gpu", "h10"], ["catalog", "offers", "--provider", "oracle"]]
)
def test_cli_unknown_name_exits_2_without_traceback(args: list[str]) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert result.output.startswith("error: unknown")
    assert "Traceback" not in result.output


def test_cli_help_has_examples() -> None:
    result = CliRunner().invoke(main, ["catalog", "--help"])
    assert result.exit_code == 0 and "ftplan catalog offers --gpu h100" in result.output


def test_misspelt_provider_gets_close_matches() -> None:
    with pytest.raises(CatalogError, match="Did you mean: aws"):
        parse_provider("awz")


def test_every_offer_states_its_billing_unit_and_start_up_with_sources() -> None:
    offers = list_offers()
    assert offers
    for offer in offers:
        assert offer.min_billing_hours >= 0 and offer.billing_increment_s > 0
        assert offer.billing_source and offer.startup_source
        assert offer.provision_minutes is not None
    blocks = [o for o in offers if o.service == "ec2-capacity-block"]
    assert blocks and all(o.min_billing_hours >= 24 and o.billing_upfront for o in blocks)
    assert blocks[0].billed_hours(3.15) == 24.0 and blocks[0].billed_hours(25.0) == 48.0
    ec2 = next(o for o in offers if o.service == "ec2")
    assert ec2.billed_hours(10 / 3600) == pytest.approx(60 / 3600)  # 60 s minimum
    assert ec2.billed_hours(2.0) == pytest.approx(2.0)  # per second beyond it
    lam = next(o for o in offers if o.provider is Provider.LAMBDA)
    assert lam.billed_hours(1.001) == pytest.approx(61 / 60)  # whole minutes
    # Start-up differs by provider and comes from the catalog, not one flat figure.
    assert len({o.provision_minutes for o in offers}) > 1


def test_unknown_service_falls_back_to_its_provider_terms() -> None:
    assert service_terms("gcp", "some-new-service").billing_increment_s == 1
    with pytest.raises(CatalogError, match="billing terms"):
        service_terms("nowhere", "x")
