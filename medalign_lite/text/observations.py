"""The 14 CheXpert observations: the labels the labeler writes and every manifest carries.

They live under ``text`` because the labeler needs them and ``text`` never imports ``data``;
``data.findings`` imports :data:`CHEXPERT_LABELS` from here and re-exports it.
"""
from __future__ import annotations

__all__ = ["CHEXPERT_LABELS"]

CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
"""The 14 CheXpert observations, in the order of CheXpert's ``train.csv``."""
