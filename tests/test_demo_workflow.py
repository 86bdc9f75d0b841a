"""The demo through real Snakemake runs: same tables as the reference, a second run does nothing,
a changed setting reruns exactly the stages that read it, a user's config plans no demo job."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from shapely.geometry import box, mapping

from conftest import copy_workflow, deep_merge, demo_config, run_snakemake, write_config
from demo_fingerprint import fingerprint

#: The demo at CI size: fewer photos, a few training steps, small batches, no worker processes.
SMALL = {
    "demo": {"regions": {"demo-train": {"photos": 80}, "demo-test": {"photos": 80}}},
    "train": {"steps": 24, "batch_size": 16, "workers": 0, "warmup_steps": 4, "checkpoint_every": 8, "log_every": 4,
              "mining": {"raise_after_samples": 64, "max_scan_batches": 4}},
    "embed": {"batch_size": 32, "chunk_cells": 128, "workers": 0},
    "report": {"examples": 2},
}
REGIONS = ["demo-train", "demo-test"]


def small_config() -> dict:
    return demo_config(SMALL, regions=REGIONS)


DOWNSTREAM_OF_TRAIN = {"train": 2, "embed_cells": 2, "embed_photos": 2, "index": 4, "evaluate": 2, "report": 2}
REFERENCE = Path(__file__).parent / "data" / "demo_small_fingerprint.json"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    """The small demo (80 photos per region) run once through Snakemake in its own directory."""
    wd = tmp_path_factory.mktemp("demo")
    copy_workflow(wd)
    write_config(wd, "small.yaml", small_config())
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
def test_demo_runs_to_its_reports(demo_run):
    """Every stage ran: models, embeddings, both indexes, evaluations and the HTML reports."""
    for exp in ("demo", "untrained"):
        assert (demo_run / f"results/models/{exp}/model.safetensors").exists()
        recall = json.loads((demo_run / f"results/eval/{exp}/demo-test/recall.json").read_text())
        assert 0 <= recall["R@1<50m"] <= 1 and recall["n_queries"] > 30 and "true_positions" in recall
        for kind in ("hnsw", "compressed"):
            assert (demo_run / f"results/index/{exp}/demo-test/{kind}/index.json").exists()
        html = (demo_run / f"results/reports/{exp}/demo-test/index.html").read_text()
        assert "R@1&lt;50m" in html or "R@1<50m" in html
    summary = json.loads((demo_run / "results/models/demo/summary.json").read_text())
    assert summary["steps"] == 24


@pytest.mark.workflow
def test_snakemake_report_includes_the_html_reports(demo_run):
    run_snakemake(demo_run, "--configfile", "small.yaml", "--report", "snakemake-report.zip")
    import zipfile

    with zipfile.ZipFile(demo_run / "snakemake-report.zip") as z:
        names = z.namelist()
    reports = [n for n in names if "/data/raw/" in n and n.endswith("/index.html")]
    assert len(reports) == 2, names[:20]  # the demo's and the baseline's report


@pytest.mark.workflow
def test_second_run_does_nothing(demo_run):
    again = run_snakemake(demo_run, "--configfile", "small.yaml")
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.workflow
@pytest.mark.parametrize("change, expected", [
    # how reports look: the reports only
    ({"report": {"examples": 3}}, {"report": 2}),
    # one experiment's training: its model and what is made from it; both reports compare it
    ({"experiments": {"demo": {"train": {"lr": 0.002}}}},
     {"train": 1, "embed_cells": 1, "embed_photos": 1, "index": 2, "evaluate": 1, "report": 2}),
    # how embeddings are computed: embeddings and everything after them, not the models
    ({"embed": {"batch_size": 16}}, {"embed_cells": 2, "embed_photos": 2, "index": 4, "evaluate": 2, "report": 2}),
    # how COGs are written: tiling, then training (reads them) and the rest
    ({"aerial": {"cog": {"quality": 85}}}, {"orthophotos_tile": 2, **DOWNSTREAM_OF_TRAIN}),
    # the test region's photo count: its street views, crawl and cells, then its embeddings and
    # evaluation; nothing of the training region, no retraining
    ({"demo": {"regions": {"demo-test": {"photos": 70}}}},
     {"demo_streetview": 1, "crawl": 1, "cells": 1, "embed_cells": 2, "embed_photos": 2, "index": 4,
      "evaluate": 2, "report": 2}),
    # the LOD spec: the download margin grows, so worlds, downloads, tiles and all after them
    ({"aerial": {"n_lods": 5}}, {"demo_world": 2, "demo_streetview": 2, "orthophotos_download": 2,
                                 "orthophotos_tile": 2, "crawl": 2, "cells": 2, **DOWNSTREAM_OF_TRAIN}),
])
def test_a_changed_setting_reruns_exactly_its_stages(demo_run, change, expected):
    assert planned_jobs(demo_run, deep_merge(small_config(), change)) == expected


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
