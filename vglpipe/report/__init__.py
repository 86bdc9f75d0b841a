"""The HTML evaluation report: one self-contained file (no network, no scripts).

Inputs are the dataclasses of :mod:`vglpipe.report.data` (the report stage
fills them from evaluation outputs); see :func:`render_report`.

    from vglpipe.report import ExperimentResult, Example, RunFacts, write_report
    write_report("report.html", "Massachusetts test split", experiments, examples,
                 facts, main_experiment="demo model")

Ablations (paper Tables 3/4) are :class:`Ablation` factors passed as
``ablations=``; :mod:`vglpipe.report.ablations` holds their statistics and the
verdict on the paper's direction.

The single-photo figure (photo beside the orthophoto with the score heatmap)
is :func:`example_figure`; :func:`render_localization_page` shows one photo's
result the same way (the ``localize`` command).
"""

from vglpipe.report.data import (
    Ablation,
    AblationRun,
    Example,
    ExperimentResult,
    RunFacts,
    parse_recall_key,
    recall_key,
)
from vglpipe.report.figures import example_figure
from vglpipe.report.page import (
    OPTIONAL_SECTION_IDS,
    SECTION_IDS,
    render_localization_page,
    render_report,
    write_localization_page,
    write_report,
)

__all__ = [
    "OPTIONAL_SECTION_IDS",
    "SECTION_IDS",
    "Ablation",
    "AblationRun",
    "Example",
    "ExperimentResult",
    "RunFacts",
    "example_figure",
    "parse_recall_key",
    "recall_key",
    "render_localization_page",
    "render_report",
    "write_localization_page",
    "write_report",
]
