"""The Massachusetts plan (issue 13): config/massachusetts.yaml, its shipped boundaries, the job graph
of its dry run on SLURM, and the README's cost table, which must be what `python -m vglpipe.plan`
computes now."""

from __future__ import annotations

import re
import shutil

import pytest
import yaml
from pyproj import Geod

from conftest import REPO, run_snakemake
from vglpipe.geo.region import load_boundary
from vglpipe.plan import Figures, job_counts, make_plan, markdown
from vglpipe.settings import Settings

CONFIG = "config/massachusetts.yaml"
BOUNDARIES = REPO / "config" / "boundaries"
GEOD = Geod(ellps="WGS84")

#: Areas the boundaries must match (km2). US: Census 2010 land area (the cartographic boundary
#: is clipped to the shoreline, so it holds the land and inland water: land <= area <= 1.1 land).
#: Germany: the official areas of the Länder (Destatis), which BKG's VG5000 reproduces (±1 %).
US_LAND_KM2 = {"massachusetts": 20_202, "north-carolina": 125_920, "district-of-columbia": 158.1}
DE_AREA_KM2 = {"berlin": 891, "brandenburg": 29_654, "north-rhine-westphalia": 34_112, "saxony": 18_450}


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings.load(REPO / CONFIG)


@pytest.fixture(scope="module")
def plan():
    return make_plan(REPO / CONFIG, REPO)


def area_km2(geom) -> float:
    return abs(GEOD.geometry_area_perimeter(geom)[0]) / 1e6


def test_config_is_valid_and_has_the_papers_setup(settings):
    settings.check()
    roles = {r: settings.role(r) for r in settings.regions}
    assert [r for r, role in roles.items() if role == "test"] == ["massachusetts"]
    assert sorted(r for r, role in roles.items() if role == "train") == sorted(
        ["district-of-columbia", "north-carolina", "berlin", "brandenburg", "north-rhine-westphalia", "saxony"])
    assert set(settings.config["aerial"]["sources"]) == set(settings.regions)  # every region has imagery
    exp = settings.experiment("paper")
    assert (exp.model.name, exp.train.steps, exp.train.batch_size, exp.train.lr, exp.train.warmup_steps) == (
        "paper", 200_000, 30, 1e-4, 1_000)
    assert (exp.lods.patch_px, exp.lods.m_per_px, exp.lods.n_lods) == (384, 0.2, 4)
    assert (settings.layout.kind, settings.layout.train_cell_m, settings.layout.test_cell_m) == ("consistent", 5, 30)
    assert settings.train_resources("paper")["gpu"] == 2 and settings.embed_resources()["gpu"] == 1


@pytest.mark.parametrize("region", sorted(US_LAND_KM2) + sorted(DE_AREA_KM2))
def test_shipped_boundary_is_a_plausible_lon_lat_polygon(region, settings):
    path = BOUNDARIES / f"{region}.geojson"
    assert settings.boundary(region) == f"config/boundaries/{region}.geojson"
    geom = load_boundary(path)  # what the regions stage checks: polygons, lon/lat range, antimeridian
    assert geom.is_valid and geom.geom_type in ("Polygon", "MultiPolygon")
    minx, miny, maxx, maxy = geom.bounds
    area = area_km2(geom)
    if region in US_LAND_KM2:
        assert -85 < minx < maxx < -69 and 33 < miny < maxy < 43, geom.bounds  # lon/lat, not lat/lon
        assert US_LAND_KM2[region] <= area <= 1.1 * US_LAND_KM2[region], area
    else:
        assert 5.8 < minx < maxx < 15.1 and 50 < miny < maxy < 53.6, geom.bounds
        assert area == pytest.approx(DE_AREA_KM2[region], rel=0.01)
    assert region in (BOUNDARIES / "SOURCES.md").read_text()
    assert path.stat().st_size < 50_000


def test_brandenburg_has_berlin_as_its_hole():
    brandenburg, berlin = load_boundary(BOUNDARIES / "brandenburg.geojson"), load_boundary(BOUNDARIES / "berlin.geojson")
    assert brandenburg.intersection(berlin).area < 0.01 * berlin.area
    assert brandenburg.convex_hull.contains(berlin.representative_point())


def dry_run_job_stats(stdout: str) -> dict[str, int]:
    block = stdout.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    rows = [line.split() for line in block.strip().splitlines()[2:]]
    return {rule: int(n) for rule, n in rows if rule != "total"}


@pytest.mark.workflow
def test_dry_run_on_slurm_plans_the_jobs_of_the_plan_with_their_resources(workflow_dir, settings, plan):
    shutil.copytree(REPO / "config", workflow_dir / "config")
    run = run_snakemake(workflow_dir, "-n", "--configfile", CONFIG, profile="profiles/slurm")
    stats = dry_run_job_stats(run.stdout)
    assert stats == job_counts(settings) == plan.jobs
    assert stats["embed_cells"] == 16 and stats["crawl"] == stats["orthophotos_download"] == 7
    # the heavy jobs carry the cluster section's resources
    jobs = run.stdout.split("\n\n")
    train = next(j for j in jobs if "rule train:" in j)
    res = settings.train_resources("paper")
    for key in ("mem_mb", "runtime", "nodes", "tasks", "gpu", "gpu_model"):
        assert f"{key}={res[key]}," in train or f"{key}={res[key]}\n" in train, key
    shard = next(j for j in jobs if "rule embed_cells:" in j)
    assert "gpu=1," in shard and f"mem_mb={settings.cluster.embed.mem_mb}," in shard
    index = next(j for j in jobs if "rule index:" in j)
    assert f"mem_mb={settings.cluster.index.mem_mb}," in index


def test_readme_table_is_what_the_plan_computes_now(plan):
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Massachusetts plan", 1)[1].split("\n## ", 1)[0]
    generated = re.search(r"<!-- plan:begin -->\n(.*?)<!-- plan:end -->", section, re.S)
    assert generated, "README's Massachusetts plan lacks its <!-- plan:begin/end --> block"
    assert generated.group(1) == markdown(plan), (
        "README.md's Massachusetts plan is stale: paste `python -m vglpipe.plan --config "
        f"{CONFIG} --markdown` between the plan:begin/end markers")
    assert readme.index("## Massachusetts plan") < readme.index("## Stages and data contracts")


def test_every_cost_names_its_source(plan):
    figures = Figures.load()
    bench_keys = {f"bench {name} `{key}`" for name, b in figures.data["benchmarks"].items() for key in b["figures"]}
    for row in plan.rows:
        measured = any(k in row.basis for k in bench_keys)
        stated = any(word in row.basis for word in ("paper", "§", "issue #1", "train.", "embed.", "cluster.", "XYZ",
                                                    "WMS", "requests x", "API limits"))
        assert measured or stated or row.expected == "not measured here", row
        if row.expected == "not measured here":
            assert "measure" in row.basis or "python -m vglpipe.bench" in row.basis, row  # and how to measure it
    gpu_rows = [r for r in plan.rows if "GPU-hours" in r.quantity]
    gpu = figures.data["benchmarks"]["train --config paper"]["figures"]["gpu"]
    # measured on a named GPU, or the reference code's figure beside them
    assert {r.quantity for r in gpu_rows} >= {"paper: GPU-hours", "paper: aerial tower, GPU-hours",
                                              "paper: photos, street-view tower GPU-hours"}
    for r in gpu_rows:
        assert ("--config paper" in r.basis and gpu in r.expected) or "issue #1" in r.basis, r


def test_plan_follows_the_benchmark_figures(tmp_path, plan):
    """The figures live in one file: a re-run benchmark changes the plan."""
    data = Figures.load().data
    data["benchmarks"]["index"]["figures"]["hnsw_bytes_per_cell"] *= 2
    changed = make_plan(REPO / CONFIG, REPO, Figures(data))

    def ram(p):
        return next(r.expected for r in p.rows if r.quantity == "paper: hnsw RAM")

    assert float(ram(changed).split()[0].replace(",", "")) == pytest.approx(
        2 * float(ram(plan).split()[0].replace(",", "")), rel=0.01)
    assert any("cluster.index.mem_mb" in n for n in changed.notes)  # 84 GB no longer fits


@pytest.mark.workflow
def test_job_counts_of_the_demo_config_match_its_dry_run(workflow_dir):
    config = yaml.safe_load((REPO / "workflow_config.yaml").read_text())
    stats = dry_run_job_stats(run_snakemake(workflow_dir, "-n").stdout)
    assert stats == job_counts(Settings(config))
    assert stats["demo_world"] == stats["crawl"] == len(config["regions"]) == 13
