"""The profile store: JSONL round trip, matching, preference, the shipped H100 reference set."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from catalog import to_jsonable
from profiler import Measurement, Method, Provenance, Source, Status, TuningConfig
from profiler.store import ProfileStore, canonical_config, default_store, shipped_profile_paths

LORA = TuningConfig(
    method=Method.LORA, lora_rank=16, lora_targets="all-linear", micro_batch_size=4, seq_len=1024
)
GPU = "H100 SXM 80GB"
REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "profiler" / "data" / "reference-h100.jsonl"


def _record(
    *,
    peak: float,
    source: Source = Source.MEASURED,
    date: str = "2026-11-23",
    model: str = "llama2-7b",
    config: TuningConfig = LORA,
    status: Status = Status.OK,
) -> Measurement:
    return Measurement(
        model=model,
        gpu=GPU,
        config=config,
        status=status,
        source=source,
        provenance=Provenance(
            device="NVIDIA H100 80GB HBM3", date=date, versions=(("torch", "2.11"),)
        ),
        peak_allocated_gib=peak,
        peak_reserved_gib=peak + 1,
        step_time_s=0.4,
        tokens_per_s=10240.0,
        phase_peaks_gib=(("forward_backward", peak),),
        fit=(("num_layers", 32.0),),
    )


def test_append_round_trips_and_keeps_existing_lines(tmp_path: Path) -> None:
    path = tmp_path / "profiles.jsonl"
    path.write_text(json.dumps(to_jsonable(_record(peak=1.0))))  # no trailing newline
    store = ProfileStore([path])
    new = [_record(peak=2.0, date="2026-11-24"), _record(peak=3.0, source=Source.EXTRAPOLATED)]
    store.append(path, new)
    again = ProfileStore([path]).records()
    assert again == [_record(peak=1.0), *new]
    assert store.records() == again  # the writing store sees its own records
    assert not list(tmp_path.glob(".*.tmp"))


def test_append_through_a_symbolic_link_writes_the_store_it_names(tmp_path: Path) -> None:
    # 'ftplan profile --out link.jsonl' where the link names a shared store.
    store_dir = tmp_path / "shared"
    store_dir.mkdir()
    real = store_dir / "profiles.jsonl"
    real.write_text(json.dumps(to_jsonable(_record(peak=1.0))) + "\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    ProfileStore([link]).append(link, [_record(peak=2.0, date="2026-11-24")])
    assert link.is_symlink()
    assert [r.peak_allocated_gib for r in ProfileStore([real]).records()] == [1.0, 2.0]


def test_lookup_prefers_measured_then_newest(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    store = ProfileStore([path])
    store.append(
        path,
        [
            _record(peak=10.0, source=Source.EXTRAPOLATED, date="2026-12-01"),
            _record(peak=11.0, date="2026-11-01"),
            _record(peak=12.0, date="2026-11-20"),
            _record(peak=13.0, source=Source.ESTIMATED, date="2026-12-31"),
        ],
    )
    found = ProfileStore([path]).lookup(model="llama2-7b", config=LORA, gpu=GPU)
    assert found is not None and found.peak_allocated_gib == 12.0
    unmeasured = tmp_path / "unmeasured.jsonl"
    ProfileStore([unmeasured]).append(
        unmeasured, [r for r in ProfileStore([path]).records() if r.source is not Source.MEASURED]
    )
    found = ProfileStore([unmeasured]).lookup(model="llama2-7b", config=LORA, gpu=GPU)
    assert found is not None and found.source is Source.EXTRAPOLATED


def test_lookup_matches_equivalent_spellings_only(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    ProfileStore([path]).append(
        path, [_record(peak=5.0), _record(peak=6.0, model="llama2-7b@2-layers")]
    )
    store = ProfileStore([path])
    spelled = TuningConfig(
        method=Method.LORA,
        lora_rank=16,
        lora_alpha=32,
        lora_targets="down_proj,up_proj,gate_proj,o_proj,v_proj,k_proj,q_proj",
        micro_batch_size=4,
        seq_len=1024,
    )
    assert canonical_config(spelled) == canonical_config(LORA)
    found = store.lookup(model="Llama2-7B", config=spelled, gpu="h100 sxm 80gb")
    assert found is not None and found.peak_allocated_gib == 5.0
    other_seq = TuningConfig(
        method=Method.LORA,
        lora_rank=16,
        lora_targets="all-linear",
        micro_batch_size=4,
        seq_len=2048,
    )
    assert store.lookup(model="llama2-7b", config=other_seq, gpu=GPU) is None
    other_alpha = TuningConfig(
        method=Method.LORA,
        lora_rank=16,
        lora_alpha=16,
        lora_targets="all-linear",
        micro_batch_size=4,
        seq_len=1024,
    )
    assert store.lookup(model="llama2-7b", config=other_alpha, gpu=GPU) is None
    assert store.lookup(model="llama2-7b", config=LORA, gpu="A100 SXM 80GB") is None


def test_missing_files_are_empty_and_bad_lines_say_where(tmp_path: Path) -> None:
    assert ProfileStore([tmp_path / "absent.jsonl"]).records() == []
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(to_jsonable(_record(peak=1.0))) + '\n{"model": 1}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2 is not a profile record"):
        ProfileStore([bad])


def test_shipped_reference_set_is_found_by_the_default_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FTPLAN_CACHE_DIR", str(tmp_path))
    default_store.cache_clear()
    try:
        store = default_store()
        assert any(p.name == "profiles-h100-reference.jsonl" for p in shipped_profile_paths())
        found = store.lookup(model="llama2-7b", config=LORA, gpu="H100 SXM 80GB")
        assert found is not None and found.source is Source.MEASURED
        assert found.peak_allocated_gib == pytest.approx(39.394)
        assert found.step_time_s == pytest.approx(0.3938)
        assert found.provenance.device == "NVIDIA H100 80GB HBM3"
        assert ("bitsandbytes", "0.50.2") in found.provenance.versions
        full_bf16 = TuningConfig(
            method=Method.FULL,
            precision="bf16",  # type: ignore[arg-type]
            micro_batch_size=1,
            seq_len=2048,
        )
        found = store.lookup(model="llama3.2-1b", config=full_bf16, gpu="H100 SXM 80GB")
        assert found is not None and found.peak_allocated_gib == pytest.approx(13.254)
        # The user's own records join the shipped ones and win when newer.
        user = tmp_path / "profiles.jsonl"
        ProfileStore([user]).append(user, [_record(peak=40.0, date="2026-12-01")])
        default_store.cache_clear()
        found = default_store().lookup(model="llama2-7b", config=LORA, gpu="H100 SXM 80GB")
        assert found is not None and found.peak_allocated_gib == 40.0
    finally:
        default_store.cache_clear()


@pytest.mark.parametrize(
    ("source", "profiles", "rows"),
    [
        ("reference-h100.jsonl", "profiles-h100-reference.jsonl", 24),
        ("reference-h100-2.jsonl", "profiles-h100-reference-2.jsonl", 28),
    ],
)
def test_shipped_reference_file_is_reproducible(
    tmp_path: Path, source: str, profiles: str, rows: int
) -> None:
    spec = importlib.util.spec_from_file_location(
        "import_reference", REPO / "benchmarks" / "import_reference_measurements.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "ref.jsonl"
    data = REPO / "profiler" / "data"
    assert module.main(["--source", str(data / source), "--out", str(out)]) == 0
    assert out.read_text() == (data / profiles).read_text()
    # Truncated-depth rows (2/4 layers) are not profiles of the model and stay out.
    assert len(out.read_text().splitlines()) == rows
