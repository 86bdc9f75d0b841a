# Shared by every rule file: config validation (fails at start, naming the key) and helpers.
from vglpipe.config import validate_config
from vglpipe.errors import ConfigError

try:
    validate_config(config, source="workflow config (workflow_config.yaml + --config/--configfile)")
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None

REGIONS = sorted(config["regions"])
LAYOUT = config["layout"]


def cell_tag(cell_m):
    """'30' for 30.0, '2.5' for 2.5: the <l> in cells_<l>m.parquet."""
    return f"{cell_m:g}"


TEST_CELL_TAG = cell_tag(LAYOUT["test_cell_m"])


def layout_args():
    return (
        f"--layout {LAYOUT['kind']} --earth-radius-m {LAYOUT['earth_radius_m']!r} "
        f"--train-cell-m {LAYOUT['train_cell_m']!r} --test-cell-m {LAYOUT['test_cell_m']!r} "
        f"--mercator-reference-lat {LAYOUT['mercator_reference_lat']!r}"
    )


wildcard_constraints:
    region="[a-z0-9][a-z0-9_-]*",
