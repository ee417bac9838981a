"""Reports: golden markdown, HTML content and escaping, charts' data, plan JSON round trip, safe
slugs, atomic writes and the ``ftplan report`` command. CPU only, no browser (see
test_report_browser.py for the page in Chromium).

Regenerate the golden files after an intended change:
``FTPLAN_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/planner/test_reports.py -q``.
"""

from __future__ import annotations

import dataclasses
import html
import math
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from plan_fixtures import (
    HOSTILE_INSTANCE,
    HOSTILE_NAME,
    make_empty_plan,
    make_hostile_plan,
    make_no_feasible_plan,
    make_plan,
)

from planner import Plan
from planner.cli import main
from planner.plan_io import read_plan
from planner.report.html import cost_time_figure, memory_figure, render_html
from planner.report.markdown import md_escape, render_markdown
from planner.report.rows import (
    candidate_rows,
    candidate_status,
    cost_ranges,
    fmt_hours_band,
    fmt_usd_band,
    source_rows,
)
from planner.report.write import report_slug, write_reports

GOLDEN_DIR = Path(__file__).parents[1] / "golden"
SAFE_SLUG = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")


# --- markdown ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "plan_factory"),
    [
        ("report.md", make_plan),
        ("report-no-feasible.md", make_no_feasible_plan),
    ],
)
def test_markdown_matches_golden(name: str, plan_factory: object) -> None:
    assert callable(plan_factory)
    text = render_markdown(plan_factory())
    golden = GOLDEN_DIR / name
    if os.environ.get("FTPLAN_UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text, encoding="utf-8")
    assert golden.is_file(), f"{golden} missing: run with FTPLAN_UPDATE_GOLDEN=1 to create it"
    assert text == golden.read_text(encoding="utf-8")


def test_markdown_is_stable_and_survives_a_json_round_trip(tmp_path: Path) -> None:
    plan = make_plan()
    paths = write_reports(plan, tmp_path, slug="stable")
    assert render_markdown(read_plan(paths.json)) == render_markdown(plan)
    assert paths.markdown.read_text(encoding="utf-8") == render_markdown(plan)


def test_markdown_states_the_recommendation_with_numbers() -> None:
    text = render_markdown(make_plan())
    assert "**$13.38** in **4.1 h**" in text
    assert "16.96 GiB of 80.00 GiB usable" in text
    assert "| 5 | full bf16-mixed b1 s1024 ckpt |" in text
    assert "127.90 GiB / 80.00 GiB | does not fit" in text
    assert "over deadline" in text
    assert "**stale**" in text
    assert "| Trainable parameters | 39,976,960 of 6,778,392,576 (0.59%) |" in text
    assert "| 125.30 | 127.90 | 80.00 | forward_backward 125.30, optimizer_step 103.56 |" in text


def test_markdown_without_a_feasible_plan_says_so() -> None:
    text = render_markdown(make_no_feasible_plan())
    assert "**No feasible plan.**" in text
    assert "## What would make it work\n\n- raise --budget to $14" in text
    assert "## Candidates" not in text and "## Near misses" in text
    assert text.count("| over budget |") == 4 and "| does not fit, over budget |" in text
    assert "No feasible candidate, so no Pareto front." in text
    assert "2.7× the $5.00 budget" in text


def _table_cell_counts(text: str) -> list[int]:
    return [
        len(UNESCAPED_PIPE.findall(line)) for line in text.splitlines() if line.startswith("|")
    ]


def test_markdown_escapes_user_strings() -> None:
    text = render_markdown(make_hostile_plan())
    assert "<script>" not in text and "<b>" not in text
    assert "# ftplan plan: &lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "evil/&lt;script&gt;alert(1)&lt;/script&gt;\\|x" in text
    # Every row of each table has as many cell separators as its header.
    blocks = re.split(r"\n(?!\|)", text)
    for block in blocks:
        counts = _table_cell_counts(block)
        assert len(set(counts)) <= 1, block


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("a|b", "a\\|b"),
        ("<script>", "&lt;script&gt;"),
        ("x & y", "x &amp; y"),
        ("[link](u)", "\\[link\\](u)"),
        ("two\nlines", "two lines"),
        ("*bold* `code` \\", "\\*bold\\* \\`code\\` \\\\"),
    ],
)
def test_md_escape(raw: str, escaped: str) -> None:
    assert md_escape(raw) == escaped


# --- HTML ----------------------------------------------------------------------------------------


def _charts(page: str) -> list[str]:
    """The report's inline SVG charts."""
    return re.findall(r"<svg class=\"chart-svg\".*?</svg>", page, re.DOTALL)


def test_html_has_recommendation_table_and_charts() -> None:
    rest = render_html(make_plan())
    assert 'id="recommendation"' in rest and "$13.38" in rest and "gpu_1x_h100_sxm5" in rest
    table = rest[rest.index('<table id="candidates">') :]
    table = table[: table.index("</table>")]
    assert table.count("<tr") == 1 + 6
    assert 'id="chart-cost-time"' in rest and 'id="chart-memory"' in rest
    assert len(_charts(rest)) == 2
    for heading in (
        "Each method",
        "Quality risks",
        "Assumptions",
        "Where the numbers come from",
        "Prices",
        "Search",
    ):
        assert f"<h2>{heading}" in rest
    assert "NVIDIA H100 80GB HBM3" in rest and "torch 2.11.0" in rest
    assert '<span class="badge stale">stale</span>' in rest
    assert "TPESampler" in rest


def test_html_loads_nothing_from_the_network() -> None:
    page = render_html(make_plan())
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.IGNORECASE)
    assert not re.search(r"<link\b", page, re.IGNORECASE)
    assert not re.search(r"@import|url\(\s*['\"]?(https?:)?//", page, re.IGNORECASE)
    # The only URL is the SVG namespace, which is a name, not a load.
    rest = page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "http://" not in rest and "https://" not in rest


def test_html_escapes_the_hostile_model_name() -> None:
    page = render_html(make_hostile_plan())
    assert HOSTILE_NAME not in page
    assert "<b>bold</b>" not in page and HOSTILE_INSTANCE not in page
    assert "&lt;b&gt;g6&lt;/b&gt;&lt;img src=x onerror=alert(2)&gt;" in page
    assert page.count("<script") == 1  # the chart tooltips, nothing injected
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<title>ftplan plan: &lt;script&gt;alert(1)&lt;/script&gt;</title>" in page


def test_html_without_a_feasible_plan() -> None:
    rest = render_html(make_no_feasible_plan())
    assert "No feasible plan." in rest
    assert '<section class="card" id="suggestions">' in rest
    assert "raise --budget to $14" in rest
    assert '<table id="candidates">' not in rest
    near = rest[rest.index('<table id="near-misses">') :]
    near = near[: near.index("</table>")]
    assert near.count("<tr") == 1 + 5 and near.count("over budget") == 5


def test_cost_time_figure_plots_near_misses_when_nothing_is_feasible() -> None:
    plan = make_no_feasible_plan()
    fig = cost_time_figure(plan)
    names = [t["name"] for t in fig["data"]]
    assert "Pareto front" not in names and "recommended" not in names
    assert sum(len(t["x"]) for t in fig["data"]) == 5
    assert fig["layout"]["shapes"][0]["y0"] == 5.0


def test_every_candidate_is_a_chart_point_with_its_values() -> None:
    plan = make_plan()
    cost_time, memory = _charts(render_html(plan))
    tips = [html.unescape(t) for t in re.findall(r'class="point" data-tip="([^"]*)"', cost_time)]
    # 6 candidates, the 2 points of the Pareto front and the star.
    assert len(tips) == len(plan.ranked) + len(plan.pareto) + 1
    assert any("$13.38" in t and "gpu_1x_h100_sxm5" in t for t in tips)
    bars = re.findall(r'class="bar" data-tip="([^"]*)"', memory)
    assert len(bars) == 4 * 6 and "weights: " in html.unescape(bars[0])
    assert "budget $200.00" in cost_time and "deadline 48.0 h" in cost_time


def test_hostile_text_in_a_chart_stays_text() -> None:
    cost_time, _ = _charts(render_html(make_hostile_plan()))
    assert "<b>" not in cost_time and "<img" not in cost_time and "<script" not in cost_time
    assert html.escape(HOSTILE_INSTANCE) in cost_time


def test_cost_time_figure_marks_pareto_budget_and_deadline() -> None:
    plan = make_plan()
    fig = cost_time_figure(plan)
    traces = {t["name"]: t for t in fig["data"]}
    front = traces["Pareto front"]
    assert front["x"] == pytest.approx([1.1462, 4.0669], abs=1e-3)
    assert front["y"] == pytest.approx([112.68, 13.38], abs=0.01)
    assert traces["recommended"]["y"] == pytest.approx([13.38], abs=0.01)
    assert len(traces["LoRA (infeasible)"]["x"]) == 1
    plotted = sum(
        len(t["x"]) for name, t in traces.items() if name not in ("Pareto front", "recommended")
    )
    assert plotted == len(plan.ranked)
    budget, deadline = fig["layout"]["shapes"]
    assert budget["y0"] == budget["y1"] == 200.0
    assert deadline["x0"] == deadline["x1"] == 48.0
    # Annotations on a log axis take log10 positions.
    assert fig["layout"]["annotations"][0]["y"] == pytest.approx(math.log10(200.0))
    assert fig["layout"]["annotations"][1]["x"] == pytest.approx(math.log10(48.0))


def test_cost_time_figure_without_deadline_has_only_the_budget_line() -> None:
    plan = make_plan()
    plan = make_plan(
        budget=type(plan.budget)(
            **{
                **{f: getattr(plan.budget, f) for f in plan.budget.__dataclass_fields__},
                "max_hours": None,
            }
        )
    )
    fig = cost_time_figure(plan)
    assert len(fig["layout"]["shapes"]) == 1


def test_cost_time_figure_uses_a_linear_cost_axis_when_a_run_is_free() -> None:
    plan = make_plan()
    free = dataclasses.replace(
        plan.ranked[0], cost=dataclasses.replace(plan.ranked[0].cost, usd=0.0, usd_per_hour=0.0)
    )
    fig = cost_time_figure(make_plan(ranked=(free, *plan.ranked[1:]), chosen=free))
    assert fig["layout"]["yaxis"].get("type") != "log"
    assert fig["layout"]["annotations"][0]["y"] == 200.0
    assert cost_time_figure(plan)["layout"]["yaxis"]["type"] == "log"


def test_memory_figure_stacks_components_against_usable_memory() -> None:
    plan = make_plan()
    fig = memory_figure(plan)
    bars = [t for t in fig["data"] if t["type"] == "bar"]
    assert [b["name"] for b in bars] == [
        "weights",
        "gradients",
        "optimizer states",
        "activations",
        "logits",
        "overhead",
    ]
    totals = [sum(values) for values in zip(*(b["y"] for b in bars), strict=True)]
    # full bf16-mixed on 1×H100 (does not fit), full FSDP, LoRA H100, QLoRA L4.
    assert totals == pytest.approx([125.3, 19.1, 15.588, 8.397], abs=1e-3)
    usable = next(t for t in fig["data"] if t["name"] == "usable GPU memory")
    assert usable["y"] == [80.0, 80.0, 80.0, 22.35]
    assert "(does not fit)" in usable["x"][0]


# --- files, slugs, JSON --------------------------------------------------------------------------


@pytest.mark.parametrize("plan_factory", [make_plan, make_no_feasible_plan, make_hostile_plan])
def test_write_reports_round_trips_the_plan(tmp_path: Path, plan_factory: object) -> None:
    assert callable(plan_factory)
    plan: Plan = plan_factory()
    paths = write_reports(plan, tmp_path / "reports", slug="p")
    assert (paths.markdown.name, paths.html.name, paths.json.name) == ("p.md", "p.html", "p.json")
    assert read_plan(paths.json) == plan
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["p.html", "p.json", "p.md"]


def test_failed_render_leaves_previous_reports_and_no_temp_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = write_reports(make_plan(), tmp_path, slug="p")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}

    def broken(plan: Plan) -> str:
        raise RuntimeError("template bug")

    import planner.report.write

    monkeypatch.setattr(planner.report.write, "render_html", broken)
    with pytest.raises(RuntimeError, match="template bug"):
        write_reports(make_no_feasible_plan(), tmp_path, slug="p")
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before
    assert not any(name.endswith(".tmp") for name in after)
    assert read_plan(paths.json) == make_plan()


@pytest.mark.parametrize(
    ("model", "budget", "inputs_hash", "expected"),
    [
        ("llama2-7b", 200.0, "3f9a1c2e77", "llama2-7b-200usd-3f9a1c2e"),
        ("Llama-3.1-8B", 12.5, "ABCDEF12", "llama-3.1-8b-12.5usd-abcdef12"),
        ("../x", 200.0, "h", "x-200usd-h"),
        ("meta-llama/Llama-2-7b-hf", 99.999, "0", "meta-llama-llama-2-7b-hf-100usd-0"),
        ("", 5.0, "", "model-5usd"),
    ],
)
def test_report_slug(model: str, budget: float, inputs_hash: str, expected: str) -> None:
    assert report_slug(model, budget, inputs_hash) == expected


@pytest.mark.parametrize(
    "model",
    [
        HOSTILE_NAME,
        "../../etc/passwd",
        "..",
        ".hidden",
        "a/b\\c",
        "x\x00y",
        "名前 モデル",
        "A" * 500,
        "a" * 99 + "-b",
        "a" * 99 + ".b",
        "-rf ~",
    ],
)
def test_report_slug_is_always_a_plain_file_name(tmp_path: Path, model: str) -> None:
    slug = report_slug(model, 200.0, "deadbeef99")
    assert SAFE_SLUG.match(slug), slug
    assert ".." not in slug and len(slug) <= 120
    paths = write_reports(make_plan(), tmp_path, slug=slug)
    assert paths.html.parent == tmp_path


@pytest.mark.parametrize("slug", ["../x", "a/b", "<script>", "", ".hidden", "UPPER"])
def test_write_reports_rejects_unsafe_slugs(tmp_path: Path, slug: str) -> None:
    with pytest.raises(ValueError, match="not a safe file name"):
        write_reports(make_plan(), tmp_path, slug=slug)
    assert not any(p.suffix in (".md", ".html", ".json") for p in tmp_path.rglob("*"))


def test_candidate_status_names_every_broken_limit() -> None:
    ranked = make_plan().ranked
    assert candidate_status(ranked[0]) == "feasible"
    rejected = dataclasses.replace(ranked[0], quality_accepted=False, within_budget=False)
    assert candidate_status(rejected) == "over budget, quality risk not accepted"
    assert not rejected.feasible


def test_candidate_rows_flag_chosen_and_pareto_after_round_trip(tmp_path: Path) -> None:
    paths = write_reports(make_plan(), tmp_path, slug="p")
    rows = candidate_rows(read_plan(paths.json))
    assert [r.rank for r in rows if r.chosen] == [1]
    assert [r.rank for r in rows if r.pareto] == [1, 4]
    assert [r.status for r in rows][-2:] == ["does not fit", "over deadline"]


# --- CLI -----------------------------------------------------------------------------------------


@pytest.fixture()
def plan_file(tmp_path: Path) -> Path:
    return write_reports(make_plan(), tmp_path / "reports", slug="llama2-7b-200usd-x").json


def test_cli_report_markdown_to_file(plan_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "plan.md"
    result = CliRunner().invoke(
        main, ["report", str(plan_file), "--format", "md", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert out.read_text(encoding="utf-8") == render_markdown(make_plan())
    assert f"wrote {out}" in result.output


def test_cli_report_html_defaults_next_to_the_plan(plan_file: Path) -> None:
    plan_file.with_suffix(".html").unlink()
    result = CliRunner().invoke(main, ["report", str(plan_file)])
    assert result.exit_code == 0, result.output
    page = plan_file.with_suffix(".html").read_text(encoding="utf-8")
    assert 'id="chart-cost-time"' in page


def test_cli_report_markdown_to_stdout(plan_file: Path) -> None:
    result = CliRunner().invoke(main, ["report", str(plan_file), "--format", "md", "--out", "-"])
    assert result.exit_code == 0
    assert result.stdout == render_markdown(make_plan())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid JSON"),
        ('{"format": "something-else"}', "is not an ftplan plan"),
        ('{"format": "ftplan-plan/1", "plan": {"model": 3}}', "is invalid"),
    ],
)
def test_cli_report_bad_file_is_a_one_line_error(
    tmp_path: Path, content: str, message: str
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content, encoding="utf-8")
    result = CliRunner().invoke(main, ["report", str(bad), "--format", "md"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_cli_report_missing_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["report", str(tmp_path / "nope.json")])
    assert result.exit_code == 2
    assert "does not exist" in result.stderr


def test_cli_report_help_has_examples() -> None:
    result = CliRunner().invoke(main, ["report", "--help"])
    assert result.exit_code == 0
    assert "Examples:" in result.output and "--format md --out plan.md" in result.output


def test_plan_without_any_candidate_still_renders(tmp_path: Path) -> None:
    plan = make_empty_plan()
    paths = write_reports(plan, tmp_path, slug="empty")
    text = paths.markdown.read_text(encoding="utf-8")
    assert "**No feasible plan.**" in text and "## Candidates" not in text
    assert "| LoRA | none | n/a | n/a |" in text
    page = paths.html.read_text(encoding="utf-8")
    assert "use a larger GPU (--gpu h100)" in page
    assert cost_time_figure(plan)["data"] == []
    assert read_plan(paths.json) == plan


def test_source_rows_group_figures_by_provenance() -> None:
    plan = make_plan()
    rows = source_rows(plan)
    assert [(r.source, r.count) for r in rows] == [
        ("measured", 1),
        ("extrapolated", 1),
        ("estimated", 3),
    ]
    assert rows[0].versions == (
        "bitsandbytes 0.50.2, peft 0.21.0, torch 2.11.0, transformers 5.17.0"
    )
    estimated = plan.ranked[3]
    configs = [dataclasses.replace(estimated.config, micro_batch_size=b) for b in range(1, 7)]
    many = tuple(
        dataclasses.replace(
            estimated,
            config=cfg,
            measurement=dataclasses.replace(estimated.measurement, config=cfg),
        )
        for cfg in configs
    )
    rows = source_rows(make_plan(ranked=many, pareto=(), chosen=many[0], verdicts=()))
    assert [(r.source, r.count) for r in rows] == [("estimated", 6)]
    assert rows[0].figures.endswith("; +2 more") and rows[0].figures.count(";") == 4


def test_committed_example_plan_renders() -> None:
    """The example in reports/examples/ is a real planner output: it must load and render."""
    examples = sorted((Path(__file__).parents[2] / "reports" / "examples").glob("*.json"))
    assert examples, "reports/examples/ holds no plan"
    plan = read_plan(examples[0])
    text = render_markdown(plan)
    assert text.count("\n| ") >= len(plan.ranked)
    rest = render_html(plan)
    assert len(_charts(rest)) == 2
    assert len(rest.encode()) <= 1.5 * 2**20  # self-contained and small
    if plan.ranked:
        table = rest[rest.index('<table id="candidates">') :]
        assert table[: table.index("</table>")].count("<tr") == 1 + len(plan.ranked)


def test_wide_step_time_band_shows_hours_and_cost_as_ranges() -> None:
    plan = make_plan()
    chosen = plan.chosen
    assert chosen is not None and chosen.measurement.step_time_s is not None
    step = chosen.measurement.step_time_s
    banded = dataclasses.replace(
        chosen,
        measurement=dataclasses.replace(
            chosen.measurement, bands=(("step_time_s", 0.9 * step, 1.3 * step),)
        ),
    )
    hours_range, usd_range = cost_ranges(banded) or ((0.0, 0.0), (0.0, 0.0))
    cost = chosen.cost
    assert hours_range[1] == pytest.approx(
        cost.startup_hours + 1.3 * (cost.train_hours + cost.spot_overhead_hours)
    )
    assert usd_range[0] < cost.usd < usd_range[1]
    assert "–" in fmt_hours_band(banded) and "–" in fmt_usd_band(banded)
    text = render_markdown(dataclasses.replace(plan, chosen=banded))
    assert "80% band" in text and fmt_usd_band(banded) in text
    # A narrow band (under 10%) adds nothing: the plain figure.
    narrow = dataclasses.replace(
        chosen,
        measurement=dataclasses.replace(
            chosen.measurement, bands=(("step_time_s", 0.97 * step, 1.04 * step),)
        ),
    )
    assert cost_ranges(narrow) is None and "–" not in fmt_hours_band(narrow)
