"""Ablations as experiments: the verdict on the paper's direction (pure), the config keys
(experiments.<e>.ablation, report.ablations) and their checks, the demo's ablation set
(config/ablations.yaml merged onto workflow_config.yaml) and the bench's configs. Nothing here runs
the workflow (``python -m vglpipe.bench ablations`` does)."""

from __future__ import annotations

import copy
import math

import pytest
import yaml

from conftest import REPO
from vglpipe.bench import ablations as bench
from vglpipe.bench._workflow import demo_config
from vglpipe.errors import ConfigError
from vglpipe.report.ablations import HOLDS, REVERSED, TOO_FEW_SEEDS, WITHIN_SPREAD, summarize_factor, verdict
from vglpipe.settings import ReportStage, Settings, _plain, from_json, to_json

ABLATIONS = yaml.safe_load((REPO / "config" / "ablations.yaml").read_text())


# ------------------------------------------------------------------ the verdict (pure)


def test_verdict_holds_when_every_seed_beats_every_other_seed():
    assert verdict([0.050, 0.056], [0.031, 0.034]) == HOLDS
    assert verdict([0.05, 0.06, 0.055], [0.04, 0.049]) == HOLDS


def test_verdict_reversed_when_the_other_variant_wins_beyond_the_spread():
    assert verdict([0.031, 0.034], [0.050, 0.056]) == REVERSED


@pytest.mark.parametrize("better,other", [
    ([0.050, 0.056], [0.049, 0.058]),  # ranges overlap, better mean lower
    ([0.050, 0.060], [0.045, 0.052]),  # better mean higher, but a seed of the other beats one of ours
    ([0.040, 0.050], [0.050, 0.060]),  # touching: not beyond the spread
    ([0.05, 0.05], [0.05, 0.05]),  # identical
])
def test_verdict_within_the_seed_spread_when_ranges_overlap(better, other):
    assert verdict(better, other) == WITHIN_SPREAD


@pytest.mark.parametrize("better,other", [([0.09], [0.01, 0.02]), ([0.09, 0.1], [0.01]), ([], []),
                                          ([0.09, math.nan], [0.01, 0.02])])
def test_verdict_needs_two_seeds_per_variant(better, other):
    assert verdict(better, other) == TOO_FEW_SEEDS


def test_summary_orders_variants_and_compares_each_with_the_better_one():
    runs = [("mean", 1, "mean-s1", {"R@1<50m": 0.030, "R@10<50m": 0.2}),
            ("MHA", 1, "demo-s1", {"R@1<50m": 0.056, "R@10<50m": 0.27}),
            ("mean", 0, "mean-s0", {"R@1<50m": 0.031, "R@10<50m": 0.21}),
            ("MHA", 0, "demo", {"R@1<50m": 0.050, "R@10<50m": 0.25}),
            ("none", 0, "none-s0", {"R@1<50m": 0.052})]
    s = summarize_factor("pooling", runs, better="MHA", source="paper §3.3")
    assert [v.variant for v in s.variants] == ["MHA", "mean", "none"]
    mha = s.variant("MHA")
    assert mha.seeds == (0, 1) and mha.experiments == ("demo", "demo-s1")
    assert mha.mean("R@1<50m") == pytest.approx(0.053) and mha.spread("R@1<50m") == (0.050, 0.056)
    assert [(c.other, c.verdict) for c in s.comparisons] == [("mean", HOLDS), ("none", TOO_FEW_SEEDS)]
    assert s.comparisons[0].text.startswith("MHA > mean: holds (mean R@1<50m 5.3 % vs 3.0 %")
    assert "fewer than 2 seeds per variant (MHA: 2, none: 1)" in s.comparisons[1].text
    d = s.to_dict()
    assert d["variants"]["none"]["R@10<50m"] == [None]
    assert d["variants"]["MHA"]["R@1<50m spread"] == [0.05, 0.056]
    assert d["verdicts"] == {"mean": HOLDS, "none": TOO_FEW_SEEDS}


def test_summary_without_a_direction_or_a_second_variant_says_why():
    runs = [("a", 0, "x", {"R@1<50m": 0.1}), ("b", 0, "y", {"R@1<50m": 0.2})]
    assert "not configured" in summarize_factor("f", runs).note
    assert "was not run" in summarize_factor("f", runs, better="c").note
    assert "Only one variant" in summarize_factor("f", runs[:1], better="a").note
    assert not summarize_factor("f", runs[:1], better="a").comparisons


# ------------------------------------------------------------------ config keys and checks


def _config(report: dict | None = None, **experiments) -> dict:
    """The shipped demo config with these experiments and report section."""
    cfg = yaml.safe_load((REPO / "workflow_config.yaml").read_text())
    cfg["experiments"] = experiments
    cfg["report"] = report or {}
    return cfg


def test_ablation_keys_default_to_none_and_reach_the_report_bundle():
    s = Settings(_config(
        report={"ablations": {"pooling": {"better": "MHA"}}},
        a={"train": {"seed": 3}, "ablation": {"reference": {"pooling": "MHA"}}},
        b={"train": {"seed": 3}, "model": {"args": {"pooling": "mean"}}, "ablation": {"factor": "pooling", "variant": "mean"}},
        c={}))
    s.check()
    assert s.ablation("c").pairs == () and s.ablation("a").pairs == (("pooling", "MHA"),)
    assert s.report.ablations["pooling"].better == "MHA" and s.report.ablations["pooling"].source == ""
    st = s.report_stage()
    assert [(r.experiment, r.factor, r.variant, r.seed) for r in st.ablation_runs] == [
        ("a", "pooling", "MHA", 3), ("b", "pooling", "mean", 3)]
    assert from_json(ReportStage, to_json(st)) == st
    # the label is not a training setting: relabelling retrains nothing
    assert "ablation" not in _plain(s.experiment("b"))


def test_report_stage_fills_the_report_ablations():
    from vglpipe.report.__main__ import ablations

    s = Settings(bench.ablation_config(demo_config(), ABLATIONS))
    found = {a.factor: a for a in ablations(s.report_stage())}
    assert set(found) == {"aerial LODs", "pooling", "hard example mining"}  # layout: no experiments here
    lods = found["aerial LODs"]
    assert lods.better == "4 LODs" and "§3.2" in lods.source
    assert lods.variants == ["4 LODs", "1 LOD"]
    assert sorted((r.experiment, r.seed) for r in lods.runs) == [("demo", 0), ("demo-s1", 1), ("lods-s0", 0),
                                                                 ("lods-s1", 1)]


@pytest.mark.parametrize("experiments,report,message", [
    ({"a": {"ablation": {"factor": "f"}}}, {}, "needs a variant"),
    ({"a": {"ablation": {"variant": "v"}}}, {}, "needs a factor"),
    ({"a": {"ablation": {"factor": "f", "variant": "v", "reference": {"g": "w"}}}}, {}, "exclude each other"),
    ({"a": {"ablation": {"factor": "f", "variant": "v"}}, "b": {"ablation": {"factor": "f", "variant": "v"}}}, {},
     "another seed"),
    ({"a": {"ablation": {"factor": "f", "variant": "v"}}}, {"f": {"better": "w"}}, "not a variant"),
])
def test_inconsistent_ablations_fail_at_start(experiments, report, message):
    cfg = _config(report={"ablations": report}, **experiments)
    with pytest.raises(ConfigError, match=message):
        Settings(cfg).check()


def test_ablation_keys_are_validated_by_the_schema():
    with pytest.raises(ConfigError, match="unknown key experiments.a.ablation.factr"):
        Settings(_config(a={"ablation": {"factr": "f"}}))
    cfg = _config(report={"ablations": {"f": {"source": "x"}}})
    with pytest.raises(ConfigError, match="better"):
        Settings(cfg)


# ------------------------------------------------------------------ the demo's ablation set


@pytest.fixture(scope="module")
def ablation_settings() -> Settings:
    return Settings(bench.ablation_config(demo_config(), ABLATIONS), source="ablations")


def test_ablation_file_holds_only_experiments_and_report():
    assert set(ABLATIONS) == {"experiments", "report"}
    shipped = yaml.safe_load((REPO / "workflow_config.yaml").read_text())
    merged = _config(report={**shipped["report"], **ABLATIONS["report"]}, **ABLATIONS["experiments"])
    Settings(merged).check()  # merged by hand: valid as it stands


def test_every_factor_has_two_seeds_per_variant(ablation_settings):
    s = ablation_settings
    s.check()
    seeds: dict[tuple[str, str], set[int]] = {}
    for r in s.ablation_runs:
        seeds.setdefault((r.factor, r.variant), set()).add(r.seed)
    factors = {f for f, _ in seeds}
    assert factors == {bench.LODS, bench.POOLING, bench.MINING}
    for factor in factors:
        variants = {v for f, v in seeds if f == factor}
        assert len(variants) == 2 and s.report.ablations[factor].better in variants, factor
        for v in variants:
            assert len(seeds[(factor, v)]) >= 2, (factor, v)
    assert s.report.baseline == "untrained" and s.experiment("untrained").train.steps == 0
    assert s.report.ablations[bench.LAYOUT].better == "consistent"


def _diff(a, b, path=""):
    if isinstance(a, dict) and isinstance(b, dict):
        out = set()
        for k in set(a) | set(b):
            out |= _diff(a.get(k), b.get(k), f"{path}.{k}" if path else k)
        return out
    return set() if a == b else {path}


def test_each_variant_differs_from_the_reference_only_in_its_factor(ablation_settings):
    s = ablation_settings
    pairs = bench.variant_references(s)
    assert len(pairs) == 6
    for factor, variant, name, ref in pairs:
        diff = _diff(bench.effective(s, name), bench.effective(s, ref))
        assert diff and diff <= bench.FACTOR_SETTINGS[factor], (name, ref, diff)
    # the repeats of a variant differ only in the seed, and train exactly as long as the demo
    demo = Settings(demo_config())
    for name in s.experiments:
        if name != "untrained":
            assert s.experiment(name).train.steps == demo.train.steps
    assert _diff(bench.effective(s, "demo"), bench.effective(s, "demo-s1")) == {"train.seed"}
    assert _diff(bench.effective(s, "demo"), _plain_experiment(demo)) == set()


def _plain_experiment(settings: Settings) -> dict:
    """The demo config's effective settings, as an experiment without overrides would have them."""
    cfg = copy.deepcopy(settings.config)
    cfg["experiments"] = {"x": {}}
    return bench.effective(Settings(cfg), "x")


def test_single_lod_and_mean_pooling_follow_the_demo_model(ablation_settings):
    s = ablation_settings
    demo = Settings(demo_config())
    other = 1 if demo.lods.n_lods > 1 else bench.PAPER_N_LODS
    assert s.experiment("lods-s0").lods.n_lods == other and s.experiment("demo").lods.n_lods == demo.lods.n_lods
    # the model is the demo's (training builds it with the experiment's n_lods)
    assert s.experiment("lods-s0").model == s.experiment("demo").model
    assert s.experiment("mean-s0").model.name == demo.experiment(demo.experiments[0]).model.name
    assert dict(s.experiment("mean-s0").model.args)["pooling"] == "mean"


def test_mining_variant_is_the_opposite_of_the_demo():
    for enabled in (False, True):
        demo = demo_config()
        demo["train"].setdefault("mining", {})["enabled"] = enabled
        s = Settings(bench.ablation_config(demo, ABLATIONS))
        assert s.experiment("demo").train.mining.enabled is enabled
        assert s.experiment("mining-s0").train.mining.enabled is (not enabled)
        assert s.ablation("mining-s0").variant == ("HEM off" if enabled else "HEM on")
        assert dict(s.ablation("demo").reference)[bench.MINING] == ("HEM on" if enabled else "HEM off")
        assert s.report.ablations[bench.MINING].better == "HEM on"
        assert ("without" if enabled else "with ") in s.config["experiments"]["mining-s1"]["description"]


def test_lod_variant_is_one_lod_or_the_papers_four_when_the_demo_has_one():
    for n_lods, other in ((4, 1), (3, 1), (1, 4)):
        demo = demo_config()
        demo["aerial"]["n_lods"] = n_lods
        s = Settings(bench.ablation_config(demo, ABLATIONS))
        assert s.experiment("demo").lods.n_lods == n_lods and s.experiment("lods-s1").lods.n_lods == other
        assert s.ablation("lods-s0").variant == ("1 LOD" if other == 1 else "4 LODs")
        assert dict(s.ablation("demo").reference)[bench.LODS] == ("1 LOD" if n_lods == 1 else f"{n_lods} LODs")
        assert s.report.ablations[bench.LODS].better == f"{max(n_lods, other)} LODs"
        assert ("finest LOD only" if other == 1 else "with 4 LODs") in s.config["experiments"]["lods-s0"]["description"]


def test_a_variant_equal_to_the_reference_is_refused():
    demo = demo_config()
    demo["model"].setdefault("args", {})["pooling"] = "mean"  # the demo itself pools by mean
    with pytest.raises(ConfigError, match="nothing is ablated"):
        bench.ablation_config(demo, ABLATIONS)
    with pytest.raises(ConfigError, match="only experiments and report"):
        bench.ablation_config(demo_config(), {**ABLATIONS, "train": {}})


def test_layout_run_has_the_reference_experiments_with_mercator_cells(ablation_settings):
    cfg = bench.layout_config(bench.ablation_config(demo_config(), ABLATIONS), "mercator")
    s = Settings(cfg)
    assert s.experiments == ["demo", "demo-s1", "untrained"]
    assert s.layout.kind == "mercator"
    assert s.layout.mercator_reference_lat == cfg["demo"]["regions"]["demo-test"]["center_lat"]
    assert s.ablation_runs == ()
    for name in ("demo", "demo-s1"):
        assert bench.effective(s, name) == bench.effective(ablation_settings, name)


def test_bench_is_listed_with_its_options():
    import argparse

    from vglpipe.bench.__main__ import available

    assert {"ablations", "demo"} <= set(available())
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    args = p.parse_args([])
    assert (args.cores, args.seed, args.keep, args.layouts) == (2, 0, None, "consistent,mercator")


def test_bench_reads_every_run_and_judges_each_factor(tmp_path, monkeypatch, capsys):
    """The bench's reading side, with the workflow runs replaced by recall files."""
    import argparse
    import json

    r1 = {"demo": 0.050, "demo-s1": 0.056, "lods-s0": 0.030, "lods-s1": 0.034, "mean-s0": 0.049, "mean-s1": 0.058,
          "mining-s0": 0.060, "mining-s1": 0.070, "untrained": 0.017}
    mercator = {"demo": 0.060, "demo-s1": 0.070, "untrained": 0.011538}  # printed 1.2 %, not a rounded 0.0115's 1.1
    ran = []

    def fake_run(workdir, configfile, cores, what):
        ran.append((workdir.name, sorted(yaml.safe_load((workdir / configfile).read_text())["experiments"])))
        other = workdir.name.endswith("-mercator")  # another grid: its own cell count and chance level
        values, cells, chance = (mercator, 593, 0.015) if other else (r1, 609, 0.014)
        for e, v in values.items():
            d = workdir / "results/eval" / e / "demo-test"
            d.mkdir(parents=True)
            (d / "recall.json").write_text(json.dumps({"R@1<50m": v, "R@10<50m": 4 * v, "n_queries": 536,
                                                       "n_cells": cells, "chance": {"R@1<50m": chance, "R@10<50m": 0.13}}))
        return 60.0

    monkeypatch.setattr(bench, "run_workflow", fake_run)
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    figures = bench.run(p.parse_args(["--keep", str(tmp_path / "abl")]))
    assert ran == [("abl", sorted(r1)), ("abl-mercator", ["demo", "demo-s1", "untrained"])]
    f = figures["factors"]
    assert set(f) == {bench.LODS, bench.POOLING, bench.MINING, bench.LAYOUT}
    assert f[bench.LODS]["verdicts"] == {"1 LOD": REVERSED}  # the demo has 1 LOD: lods-s* are the 4-LOD runs
    assert f[bench.POOLING]["verdicts"] == {"mean": WITHIN_SPREAD}
    assert f[bench.MINING]["verdicts"] == {"HEM off": HOLDS}
    assert f[bench.LAYOUT]["verdicts"] == {"mercator": REVERSED}
    assert f[bench.LAYOUT]["variants"]["mercator"]["R@1<50m"] == [0.06, 0.07]
    assert f[bench.LODS]["variants"]["4 LODs"]["R@1<50m mean"] == 0.032
    assert figures["wall_s"] == 120.0 and figures["baseline"] == {"untrained": {"R@1<50m": 0.017, "R@10<50m": 0.068}}
    assert (figures["cells"], figures["chance"]["R@1<50m"]) == (609, 0.014)
    runs = figures["runs"]
    assert runs["consistent"]["baseline"] == figures["baseline"] and runs["consistent"]["cells"] == 609
    # each layout's trained figures beside the baseline and chance of its own run
    assert runs["mercator"]["cells"] == 593 and runs["mercator"]["chance"]["R@1<50m"] == 0.015
    assert runs["mercator"]["baseline"] == {"untrained": {"R@1<50m": 0.0115, "R@10<50m": 0.0462}}
    json.dumps(figures)
    out = capsys.readouterr().out
    assert "4 LODs > 1 LOD: reversed" in out and "consistent > mercator: reversed" in out
    assert "the mercator layout's run: 593 cells; untrained R@1<50m 1.2 %, chance 1.5 %" in out
