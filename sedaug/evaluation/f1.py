"""Event-based F1 (sed_eval), dcase20's model-selection and Table 1 `macro` metric.

`macro` is sed_eval's class-wise average F1 (dcase20), a nanmean: a class with no reference event has an undefined
(NaN, reported as null) F1 and is left out of the average, even when it has false positives. Every clip of the
split is fed to sed_eval, those without reference events too, so their false positives count (dcase20 fed only
the clips that had reference events). F1 sees the ground truth as annotated (overlaps are not merged, as dcase20).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from sedaug.data.desed import CLASSES, EVENT_COLUMNS

EVENT_BASED = {"t_collar": 0.2, "percentage_of_length": 0.2, "evaluate_onset": True, "evaluate_offset": True}


def nan_to_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def event_based_f1(
    detections: pd.DataFrame, ground_truth: pd.DataFrame, filenames: Sequence[str]
) -> dict[str, Any]:
    """Event-based F1 (sed_eval, t_collar 0.2 s, 20 % of length, onset and offset), fed clip by clip.

    Returns {"macro", "micro", "per_class": {class: {"f1", "precision", "recall"}}}; a class with no reference
    event has f1 None and is left out of `macro` (sed_eval's nanmean); empty system output scores 0.
    """
    import sed_eval

    metric = sed_eval.sound_event.EventBasedMetrics(
        event_label_list=list(CLASSES), empty_system_output_handling="zero_score", **EVENT_BASED
    )
    known = set(filenames)
    per_file = {}
    for name, table in (("detections", detections), ("ground truth", ground_truth)):
        table = table[EVENT_COLUMNS].dropna()
        unknown = set(table.filename) - known
        if unknown:
            raise ValueError(f"{name} name clips that are not in `filenames`: {sorted(unknown)[:3]}")
        per_file[name] = {f: g.to_dict("records") for f, g in table.groupby("filename", sort=False)}
    for name in filenames:
        metric.evaluate(per_file["ground truth"].get(name, []), per_file["detections"].get(name, []))
    results = metric.results()
    per_class = {
        c: {k: nan_to_none(results["class_wise"][c]["f_measure"][m])
            for k, m in (("f1", "f_measure"), ("precision", "precision"), ("recall", "recall"))}
        for c in CLASSES
    }
    defined = [v["f1"] for v in per_class.values() if v["f1"] is not None]
    return {
        # sed_eval's class-wise average, without its "mean of empty slice" warning when no class is defined.
        "macro": float(np.mean(defined)) if defined else float("nan"),
        "micro": nan_to_none(results["overall"]["f_measure"]["f_measure"]),
        "per_class": per_class,
    }
