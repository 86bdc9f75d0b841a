"""Config validation: wrong keys and types fail at start, naming the key; defaults fill in."""

from __future__ import annotations

import pytest
import yaml

from conftest import REPO, run_snakemake
from vglpipe.config import load_config, load_schema, validate_config
from vglpipe.errors import ConfigError


def test_shipped_config_is_valid_and_complete():
    config = load_config(REPO / "workflow_config.yaml")
    assert config["layout"]["test_cell_m"] == 30.0
    assert config["layout"]["train_cell_m"] == 5.0
    assert {r: v["role"] for r, v in config["regions"].items()} == {
        **{f"demo-train{s}": "train" for s in ("", *(f"-{c}" for c in "bcdefghijkl"))}, "demo-test": "test"}
    assert set(config["demo"]["regions"]) == set(config["regions"])


def test_empty_config_gets_every_default():
    config = validate_config({})
    assert config["layout"] == {
        "kind": "consistent",
        "earth_radius_m": 6378137.0,
        "train_cell_m": 5.0,
        "test_cell_m": 30.0,
        "mercator_reference_lat": 0.0,
    }
    assert config["regions"] == {}
    assert config["demo"]["regions"] == {}


def test_every_schema_key_has_description_and_default():
    def walk(schema, path):
        for key, sub in schema.get("properties", {}).items():
            assert "description" in sub, f"{path}{key} has no description"
            assert "default" in sub, f"{path}{key} has no default"
            walk(sub, f"{path}{key}.")

    walk(load_schema(), "")


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown key layout\.cel_size"):
        validate_config({"layout": {"cel_size": 30}})


def test_unknown_top_level_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown key regionz"):
        validate_config({"regionz": {}})


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"layout\.test_cell_m: 'thirty' is not of type 'number'"):
        validate_config({"layout": {"test_cell_m": "thirty"}})


def test_region_role_default_and_bad_region_key():
    config = validate_config({"regions": {"ma": {"boundary": "ma.geojson"}}})
    assert config["regions"]["ma"]["role"] == "test"
    with pytest.raises(ConfigError, match=r"unknown key regions\.ma\.boundry"):
        validate_config({"regions": {"ma": {"boundry": "ma.geojson"}}})


def test_region_name_must_be_path_safe():
    with pytest.raises(ConfigError, match=r"regions: '\.\./etc' does not match"):
        validate_config({"regions": {"../etc": {"boundary": "x.geojson"}}})


def test_bad_yaml_names_the_file(tmp_path):
    bad = tmp_path / "cfg.yaml"
    bad.write_text("layout: [unclosed\n")
    with pytest.raises(ConfigError, match="cfg.yaml: not valid YAML"):
        load_config(bad)


@pytest.mark.workflow
def test_snakemake_refuses_bad_config_at_start(workflow_dir):
    (workflow_dir / "bad.yaml").write_text(yaml.safe_dump({"layout": {"tets_cell_m": 30}}))
    proc = run_snakemake(workflow_dir, "--configfile", "bad.yaml", "-n", check=False)
    assert proc.returncode != 0
    assert "unknown key layout.tets_cell_m" in proc.stderr + proc.stdout
    assert not (workflow_dir / "results").exists()


def test_demo_worlds_reach_as_far_as_the_downloads_and_the_street_views():
    """A demo world extends beyond its region by the download margin or the photos' view range,
    whichever is farther: with one small LOD the photos still look 450 m out over drawn ground."""
    from vglpipe.settings import Settings

    cfg = yaml.safe_load((REPO / "workflow_config.yaml").read_text())
    cfg["aerial"]["n_lods"] = 4
    paper = Settings(cfg)  # 4 LODs of 64 px at 1.2 m/px: 434 m + the offset -> 450 m
    assert paper.download_margin_m == 450.0 and paper.demo_world_stage("demo-test").margin_m == 450.0
    cfg["aerial"]["n_lods"] = 1
    one = Settings(cfg)
    assert one.download_margin_m < 100 and one.demo_world_stage("demo-test").margin_m == 450.0
    assert one.demo_streetview_stage("demo-test").view_range_m == 450.0
    from vglpipe.demo.streetview import VIEW_RANGE_M  # the renderer's own default is the setting's

    assert VIEW_RANGE_M == 450.0
    cfg["demo"].setdefault("streetview", {})["view_range_m"] = 60
    assert Settings(cfg).demo_world_stage("demo-test").margin_m == one.download_margin_m


def test_shipped_demo_worlds_share_no_ground():
    """Every demo world (its region's square plus the world margin) lies apart from every other:
    the test world shares no cell, and no ground the photos see, with any training world."""
    import itertools

    from vglpipe.geo.sphere import haversine_m
    from vglpipe.settings import Settings

    s = Settings(yaml.safe_load((REPO / "workflow_config.yaml").read_text()))
    half = {n: r.size_m / 2 + s.demo_world_stage(n).margin_m for n, r in s.demo.regions.items()}
    for a, b in itertools.combinations(s.demo.regions, 2):
        ra, rb = s.demo.regions[a], s.demo.regions[b]
        north = haversine_m(ra.center_lat, ra.center_lon, rb.center_lat, ra.center_lon)
        east = haversine_m(ra.center_lat, ra.center_lon, ra.center_lat, rb.center_lon)
        gap = max(north, east) - half[a] - half[b]
        assert gap > 1000, f"demo worlds {a} and {b} are only {gap:.0f} m apart"
    assert len({r.seed for r in s.demo.regions.values()}) == len(s.demo.regions)  # each its own world
