"""Scoring frame predictions with the DCASE 2020 protocol (docs/architecture.md, "Evaluation"): post-processing,
event-based F1, PSDS, score files, prediction and the PSD-ROC plot; `sedaug/evaluate.py` runs them on a run."""
