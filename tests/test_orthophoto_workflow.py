"""The demo's orthophoto stage through Snakemake: fake provider -> real client -> COGs + index; resume."""

import json

import pytest
import yaml
from conftest import run_snakemake

from vglpipe.aerial.cog import read_index, validate_cog
from vglpipe.aerial.sampler import AerialSampler
from vglpipe.sources.demo import demo_region


@pytest.mark.workflow
def test_orthophoto_stage_through_snakemake(workflow_dir):
    # a smaller world and margin than the demo's defaults, to keep the test quick
    cfg = {"aerial": {"world": {"margin_m": 60}, "download_margin_m": 40,
                      "cog": {"tile_px": 2048},
                      "sources": {"demo-train": {"protocol": "wms", "url": "fake:/wms", "layer": "world",
                                                 "crs": "EPSG:32619", "chip_px": 512, "acquired": "2021-04-15",
                                                 "fake": {"fault_rate": 0.2, "seed": 3}}}}}
    (workflow_dir / "small.yaml").write_text(yaml.safe_dump(cfg))
    target = "results/aerial/demo-train/index.parquet"
    run_snakemake(workflow_dir, target, "--configfile", "small.yaml")

    index = workflow_dir / target
    rows = read_index(index).to_pylist()
    assert rows and {r["crs"] for r in rows} == {"EPSG:32619"} and {r["acquired"] for r in rows} == {"2021-04-15"}
    for r in rows:
        assert validate_cog(index.parent / r["file"])[0]
    downloads = workflow_dir / "resources/aerial/demo-train/downloads"
    manifest = json.loads((downloads / "manifest.json").read_text())
    assert manifest["report"]["fetched"] == manifest["report"]["planned"] > 4
    assert manifest["report"]["retries"] > 0  # the fake injected faults; the client retried them
    assert (workflow_dir / "benchmarks/orthophotos/download_demo-train.tsv").exists()
    reg = demo_region("demo-train")
    with AerialSampler(index) as s:
        patches, cov = s.sample(reg.center_lat, reg.center_lon, 0.3)
    assert cov[0] == 1.0 and patches[0].std() > 5

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
