"""The paper's Table 1 (Perera, Essid, Richard, DCASE 2022; docs/architecture.md, "Table 1"), as `sedaug table
--paper` prints it beside each row whose recipe says `paper_row: k`.

Rows 1-9 are the English version's, top to bottom; row 10 is the French version's extra row (VAT at the input, L2,
the consistency cost on unlabeled clips only). `psds` is the paper's PSDS column: sedaug's `psds_ct` (alpha_ct 1).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperRow:
    recipe: str  # the recipe in recipes/ that reproduces it
    description: str
    macro: float
    psds: float


PAPER_TABLE1: dict[int, PaperRow] = {
    1: PaperRow("none", "no consistency, no regularization", 0.291, 0.500),
    2: PaperRow("baseline", "noise (30 dB) at the mel input, Mean Teacher", 0.381, 0.552),
    3: PaperRow("noise_input", "noise (30 dB) at the mel input, L2", 0.397, 0.534),
    4: PaperRow("noise_latent", "noise at the CNN and RNN outputs, L2", 0.388, 0.565),
    5: PaperRow("adversarial_latent", "first-order adversarial, latent, L2", 0.374, 0.559),
    6: PaperRow("vat_input_mt", "VAT at the input, Mean Teacher", 0.311, 0.461),
    7: PaperRow("vat_input", "VAT at the input, L2", 0.358, 0.539),
    8: PaperRow("vat_latent", "VAT, latent, L2", 0.362, 0.542),
    9: PaperRow("mixup_latent", "mixup, latent, L2", 0.351, 0.507),
    10: PaperRow("vat_input_unlabeled", "VAT at the input, L2, consistency on unlabeled clips (French version)",
                 0.337, 0.540),
}
# sedaug metric -> the paper's column
PAPER_METRICS = {"macro": "macro", "psds_ct": "psds"}


def paper_value(row: int | None, metric: str) -> float | None:
    """The paper's value of `metric` (macro or psds_ct) in Table 1's row `row`; None where the paper has none."""
    if row is None or metric not in PAPER_METRICS:
        return None
    return getattr(PAPER_TABLE1[row], PAPER_METRICS[metric])
