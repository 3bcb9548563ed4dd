"""Early stopping per row: one ASHA per recipe, so that a trial is ranked only against the trials of its own row.

One ASHA over the whole grid would compare a weak row's trials with a strong row's (vat_input_mt, 0.311 in the paper,
would lose its trials to the better rows'): the weak row's choice would then depend on the other rows. Ray Tune runs
all rows' trials at once; `RowASHA` hands each trial to its row's `ASHAScheduler` (Ray's own), created on the row's
first trial with the row's epochs as its horizon.

A resumed sweep starts new ASHAs: each row's is handed the trials settled before (`settled`: their running best
synthetic_valid F1 by epoch, what their reports gave the rungs), so that the trials still to run are ranked
against the whole row, not only against each other.
"""

from __future__ import annotations

from types import SimpleNamespace

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from sedaug.sweep.trial import trial_spec


class RowASHA(FIFOScheduler):
    def __init__(self, epochs: dict[str, int], grace_period: int, reduction_factor: float, time_attr: str = "epoch",
                 settled: dict[str, list[list[float]]] | None = None):
        super().__init__()
        self.epochs, self.grace_period, self.reduction_factor = epochs, grace_period, reduction_factor
        self.time_attr = time_attr
        self.settled = settled or {}
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
            _record_settled(self.rows[recipe], self.settled.get(recipe, []), self._mode or "max")
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


def _record_settled(scheduler: ASHAScheduler, settled: list[list[float]], mode: str) -> None:
    """Replay each settled trial's reports (its running best by epoch, the last epoch's aside: ASHA stops a trial
    there unrecorded) through the scheduler's bracket, so that the rungs hold what they held in the run
    that trained it (Ray records one rung per report; `_brackets` is the pinned Ray's, tested in
    tests/test_sweep_study.py)."""
    sign = 1 if mode == "max" else -1
    [bracket] = scheduler._brackets  # one: ASHAScheduler's default
    for k, scores in enumerate(settled):
        trial = SimpleNamespace(trial_id=f"settled-{k}")
        for epoch, score in enumerate(scores[: scheduler._max_t - 1], start=1):
            bracket.on_result(trial, epoch, sign * score)
