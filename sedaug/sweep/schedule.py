"""Early stopping per row: one ASHA per recipe, so that a trial is ranked only against the trials of its own row.

One ASHA over the whole grid would compare a weak row's trials with a strong row's (vat_input_mt, 0.311 in the paper,
would lose its trials to the better rows'): the weak row's choice would then depend on the other rows. Ray Tune runs
all rows' trials at once; `RowASHA` hands each trial to its row's `ASHAScheduler` (Ray's own), created on the row's
first trial with the row's epochs as its horizon.
"""

from __future__ import annotations

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from sedaug.sweep.trial import trial_spec


class RowASHA(FIFOScheduler):
    def __init__(self, epochs: dict[str, int], grace_period: int, reduction_factor: float, time_attr: str = "epoch"):
        super().__init__()
        self.epochs, self.grace_period, self.reduction_factor = epochs, grace_period, reduction_factor
        self.time_attr = time_attr
        self.rows: dict[str, ASHAScheduler] = {}
        self._row_of: dict[str, str] = {}  # trial id -> recipe
        self._mode = None

    def set_search_properties(self, metric, mode, **spec) -> bool:
        super().set_search_properties(metric, None, **spec)
        self._mode = mode or self._mode
        return True

    def _row(self, trial) -> ASHAScheduler:
        recipe = self._row_of.get(trial.trial_id) or trial_spec(trial.config)["recipe"]
        self._row_of[trial.trial_id] = recipe
        if recipe not in self.rows:
            self.rows[recipe] = ASHAScheduler(time_attr=self.time_attr, metric=self._metric, mode=self._mode or "max",
                                              max_t=self.epochs[recipe], grace_period=self.grace_period,
                                              reduction_factor=self.reduction_factor)
        return self.rows[recipe]

    def on_trial_add(self, tune_controller, trial) -> None:
        self._row(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        return self._row(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._row(trial).on_trial_complete(tune_controller, trial, result)
        self._row_of.pop(trial.trial_id, None)

    def on_trial_error(self, tune_controller, trial) -> None:
        self._row(trial).on_trial_error(tune_controller, trial)

    def on_trial_remove(self, tune_controller, trial) -> None:
        try:
            self._row(trial).on_trial_remove(tune_controller, trial)
        except KeyError:  # ASHA has forgotten a completed trial already
            pass
        self._row_of.pop(trial.trial_id, None)

    def debug_string(self) -> str:
        return "ASHA per row: " + "; ".join(f"{name}: {s.debug_string()}" for name, s in self.rows.items())

