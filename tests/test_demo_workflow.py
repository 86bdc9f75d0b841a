"""The demo through real Snakemake runs: same tables as the reference, a second run does nothing,
a changed setting reruns exactly the stages that read it, a user's config plans no demo job."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from shapely.geometry import box, mapping

from conftest import REPO, WORKFLOW_FILES, deep_merge, demo_config, run_snakemake, write_config
from demo_fingerprint import fingerprint

SMALL = {"demo": {"regions": {"demo-train": {"photos": 80}, "demo-test": {"photos": 80}}}}
REFERENCE = Path(__file__).parent / "data" / "demo_small_fingerprint.json"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    """The small demo (80 photos per region) run once through Snakemake in its own directory."""
    wd = tmp_path_factory.mktemp("demo")
    for name in WORKFLOW_FILES:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, wd / name)
    write_config(wd, "small.yaml", demo_config(SMALL))
    run_snakemake(wd, "--configfile", "small.yaml")
    return wd


def planned_jobs(workdir: Path, config: dict) -> dict[str, int]:
    """Jobs a dry run with ``config`` plans, by rule (the "Job stats" table)."""
    name = write_config(workdir, "changed.yaml", config)
    out = run_snakemake(workdir, "--configfile", name, "-n").stdout
    if "Nothing to be done" in out:
        return {}
    table = out[out.index("Job stats:"):].split("\n")
    return {m.group(1): int(m.group(2)) for line in table if (m := re.match(r"(\w+)\s+(\d+)$", line.strip()))
            and m.group(1) not in ("all", "total")}


@pytest.mark.workflow
def test_demo_tables_equal_the_reference(demo_run):
    """Rows and values of every demo table (and the photos' bytes) as recorded before the
    settings/demo refactor; regenerate with tests/demo_fingerprint.py after an intended change."""
    assert fingerprint(demo_run) == json.loads(REFERENCE.read_text())


@pytest.mark.workflow
def test_second_run_does_nothing(demo_run):
    again = run_snakemake(demo_run, "--configfile", "small.yaml")
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.workflow
@pytest.mark.parametrize("change, expected", [
    # a training-only key: no data stage reads it
    ({"train": {"gnss_margin_m": 5.5}}, {}),
    # the test cell size: the cells stage (its output name too); the download margin stays 450 m
    ({"layout": {"test_cell_m": 25.0}}, {"cells": 2}),
    # a crawler setting: both crawls (they resume from their checkpoints) and what reads the photos
    ({"crawl": {"search_per_minute": 8000}}, {"crawl": 2, "cells": 2}),
    # how COGs are written: tiling only
    ({"aerial": {"cog": {"quality": 85}}}, {"orthophotos_tile": 2}),
    # one demo region's photo count: its street views, crawl and cells, nothing of the other region
    ({"demo": {"regions": {"demo-test": {"photos": 70}}}}, {"demo_streetview": 1, "crawl": 1, "cells": 1}),
    # the LOD spec: the download margin grows, so downloads, tiles and the worlds they come from
    ({"aerial": {"n_lods": 5}}, {"demo_world": 2, "demo_streetview": 2, "orthophotos_download": 2,
                                 "orthophotos_tile": 2, "crawl": 2, "cells": 2}),
])
def test_a_changed_setting_reruns_exactly_its_stages(demo_run, change, expected):
    assert planned_jobs(demo_run, deep_merge(demo_config(SMALL), change)) == expected


@pytest.mark.workflow
def test_a_user_config_plans_no_demo_job(workflow_dir):
    """Only the user's region runs: its boundary, crawl, orthophotos and cells; no demo job."""
    (workflow_dir / "town.geojson").write_text(json.dumps(mapping(box(-71.07, 42.35, -71.06, 42.36))))
    name = write_config(workflow_dir, "town.yaml", {
        "regions": {"town": {"boundary": "town.geojson", "role": "test"}},
        "aerial": {"sources": {"town": {"protocol": "bulk", "url": "http://127.0.0.1:9/index.geojson"}}},
    })
    out = run_snakemake(workflow_dir, "--configfile", name, "-n").stdout
    jobs = set(re.findall(r"^rule (\w+):", out, re.M))
    assert jobs == {"region_boundary", "crawl", "orthophotos_download", "orthophotos_tile", "cells", "all"}, out
    assert "demo" not in out.replace("vglpipe.demo", "")
    wildcards = set(re.findall(r"wildcards: region=(\S+)", out))
    assert wildcards == {"town"}


@pytest.mark.workflow
def test_a_region_without_aerial_source_is_reported_at_start(workflow_dir):
    (workflow_dir / "town.geojson").write_text(json.dumps(mapping(box(-71.07, 42.35, -71.06, 42.36))))
    name = write_config(workflow_dir, "town.yaml", {"regions": {"town": {"boundary": "town.geojson"}}})
    proc = run_snakemake(workflow_dir, "--configfile", name, "-n")
    assert "region town has no aerial.sources entry" in proc.stdout + proc.stderr


@pytest.mark.workflow
def test_demo_regions_must_be_consistent(workflow_dir):
    config = demo_config()
    config["regions"]["demo-test"]["boundary"] = "elsewhere.geojson"
    name = write_config(workflow_dir, "bad.yaml", config)
    proc = run_snakemake(workflow_dir, "--configfile", name, "-n", check=False)
    assert proc.returncode != 0
    assert "regions.demo-test.boundary must be resources/demo/demo-test/boundary.geojson" in proc.stdout + proc.stderr


@pytest.mark.workflow
def test_snakemake_lint_is_clean(workflow_dir):
    proc = run_snakemake(workflow_dir, "--lint", check=False)
    assert proc.returncode == 0 and "Congratulations" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
