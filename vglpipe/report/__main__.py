"""``python -m vglpipe.report``: the HTML report of one experiment on one test region.

    python -m vglpipe.report --config workflow_config.yaml --experiment demo --region demo-test --root . \\
        --out results/reports/demo/demo-test/index.html

Reads, under ``--root``, the evaluation of every configured experiment on the region (they are
compared side by side, the untrained baseline among them, and the ablations' variants over their
seeds), the experiment's embeddings for the
example maps, the region's photos, orthophotos, cells summary and crawl report, and the
Snakemake benchmark files for timings. Writes one self-contained HTML file.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vglpipe import cli
from vglpipe.errors import InputError
from vglpipe.settings import ReportStage, Settings

log = logging.getLogger("vglpipe.report")


def main(args: argparse.Namespace) -> int:
    from vglpipe.report import write_report
    from vglpipe.report.assemble import EvalFiles, examples, experiment_result, run_facts
    from vglpipe.search import read_info

    st = cli.stage_settings(args, ReportStage, Settings.report_stage)
    root, region, main_exp = Path(args.root), args.region, args.experiment
    names = dict(st.experiments)
    if main_exp not in names:
        raise InputError(f"experiment {main_exp!r} is not configured (experiments: {', '.join(names)})")
    kind = st.index.search
    files = {n: EvalFiles(n, d, root / "results/eval" / n / region, root / "results/embeddings" / n / region,
                          root / "results/models" / n / "model.json") for n, d in names.items()}
    results = []
    for n, f in files.items():
        idx = read_info(root / "results/index" / n / region / kind)
        results.append(experiment_result(f, st.evaluate.min_stratum_count,
                                          {"index": kind, "index RAM bytes per cell": round(idx.ram_bytes_per_cell, 1),
                                           "neighbour scoring weight": st.index.neighbour_weight}))
    layout = st.layout.test_layout()
    r = st.report
    ex = examples(files[main_exp], layout, root / "results/photos" / region, root / "results/aerial" / region / "index.parquet",
                  r.examples, r.radius_m, r.map_m)
    main_result = next(x for x in results if x.name == main_exp)
    excluded = sum(len(_rows(p)) for p in (root / "results/embeddings" / main_exp / region).glob("cells-*.excluded.parquet"))
    facts = run_facts(region, main_result.n_queries, main_result.facts["cells searched"],
                      root / "results/cells" / region / "summary.json",
                      root / "results/photos" / region / "crawl_report.json", excluded, root / "benchmarks", main_exp)
    title = f"vglpipe — {main_exp} on {region}"
    write_report(args.out, title, results, ex, facts, main_exp, metric=f"R@1<{r.radius_m:g}m",
                 ablations=ablations(st))
    log.info("report -> %s", args.out)
    return 0


def ablations(st: ReportStage) -> list:
    """The configured ablation factors (experiments.<e>.ablation, report.ablations), by factor name."""
    from vglpipe.report import Ablation, AblationRun

    runs: dict[str, list] = {}
    for run in st.ablation_runs:
        runs.setdefault(run.factor, []).append(AblationRun(run.experiment, run.variant, run.seed))
    found = {f: st.report.ablations.get(f) for f in runs}
    return [Ablation(f, runs[f], better=found[f].better if found[f] else "", source=found[f].source if found[f] else "")
            for f in sorted(runs)]


def _rows(path: Path):
    from vglpipe.store.tables import read_table

    return read_table(path, ["id"]).column("id")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vglpipe.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_settings_arguments(p)
    p.add_argument("--experiment", required=True, help="the experiment the report is about")
    p.add_argument("--region", required=True, help="the test region")
    p.add_argument("--root", default=".", help="the workflow directory (results/, benchmarks/)")
    p.add_argument("--out", required=True, help="the HTML file to write")
    return p


if __name__ == "__main__":
    sys.exit(cli.run(build_parser(), main))
