"""`sedaug sweep`: the paper's hyper-parameter selection protocol on Ray Tune (docs/sweeps.md).

spec.py the sweep file's schema; trial.py one trial (a run directory, the Ray trainable); select.py model selection
and selection.tsv; run.py the driver; cluster.py the Ray session; view.py the live view. Ray and Optuna are imported
only when a sweep runs.
"""

from sedaug.sweep.select import in_search, selected_settings

__all__ = ["in_search", "selected_settings"]
