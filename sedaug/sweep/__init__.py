"""`sedaug sweep`: the paper's hyper-parameter selection protocol on Ray Tune (docs/sweeps.md, docs/cluster.md).

spec.py the sweep file's schema; plan.py what a sweep runs (trials matched with their folders, final runs,
resources per trial, --dry-run's estimate); trial.py one trial (a run directory, the Ray trainable: one train() call,
a diverged trial a result); schedule.py early stopping per row; select.py model selection and selection.tsv; run.py
the driver; cluster.py the Ray session and the resource check; view.py the live view. Ray and Optuna are imported only
when a sweep runs.
"""

from sedaug.sweep.select import SELECTION, in_search, is_sweep, selected_settings

__all__ = ["SELECTION", "in_search", "is_sweep", "selected_settings"]
