"""The demo's orthophoto stage through Snakemake: fake provider -> real client -> COGs + index; resume."""

import json

import pytest
from conftest import demo_config, run_snakemake, write_config

from vglpipe.aerial.cog import read_index, validate_cog
from vglpipe.aerial.sampler import AerialSampler


@pytest.mark.workflow
def test_orthophoto_stage_through_snakemake(workflow_dir):
    # smaller LODs than the paper's and photos that see less far (so a smaller world and download
    # margin, 60 m), to keep the test quick
    cfg = demo_config({"aerial": {"patch_px": 64, "m_per_px": 0.2, "n_lods": 3, "cog": {"tile_px": 2048},
                                  "sources": {"demo-train": {"chip_px": 512}}},
                       "demo": {"regions": {"demo-train": {"orthophoto_server": {"fault_rate": 0.2, "seed": 3}}},
                                "streetview": {"view_range_m": 60}}},
                      regions=["demo-train"])
    write_config(workflow_dir, "small.yaml", cfg)
    target = "results/aerial/demo-train/index.parquet"
    run_snakemake(workflow_dir, target, "--configfile", "small.yaml")

    index = workflow_dir / target
    rows = read_index(index).to_pylist()
    assert rows and {r["crs"] for r in rows} == {"EPSG:32619"} and {r["acquired"] for r in rows} == {"2021-04-15"}
    for r in rows:
        assert validate_cog(index.parent / r["file"])[0]
    downloads = workflow_dir / "resources/aerial/demo-train/downloads"
    manifest = json.loads((downloads / "manifest.json").read_text())
    report = manifest["report"]
    # chips of the world's edge rows may lie beyond the (UTM-aligned) world: reported blank, never used
    assert report["fetched"] + len(report["blank"]) == report["planned"] > 4 and len(report["blank"]) <= 5
    assert manifest["report"]["retries"] > 0  # the fake injected faults; the client retried them
    assert (workflow_dir / "benchmarks/orthophotos/download_demo-train.tsv").exists()
    reg = cfg["demo"]["regions"]["demo-train"]
    with AerialSampler(index) as s:
        p = s.sample(reg["center_lat"], reg["center_lon"], 0.3)
    assert p.coverage[0] == 1.0 and p.patches[0].std() > 5

    again = run_snakemake(workflow_dir, target, "--configfile", "small.yaml")
    assert "Nothing to be done" in again.stdout + again.stderr

    # lose one downloaded tile and the index: the rerun fetches exactly that tile again
    chips = sorted(downloads.glob("wms_*.tif"))
    chips[0].unlink()
    (downloads / "manifest.json").unlink()
    index.unlink()
    run_snakemake(workflow_dir, target, "--configfile", "small.yaml")
    report = json.loads((downloads / "manifest.json").read_text())["report"]
    assert report["fetched"] == 1 and report["skipped_existing"] == report["planned"] - 1
