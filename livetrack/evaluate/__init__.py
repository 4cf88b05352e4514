"""CTC export and evaluation: write lineages as a Cell Tracking Challenge result, and
score a result folder against CTC ground truth (DET/SEG/TRA, divisions, TE/AA)."""

from __future__ import annotations

from livetrack.evaluate.export import ExportFrame, export_ctc
from livetrack.evaluate.metrics import EvaluationResult, evaluate_ctc, format_table

__all__ = ["EvaluationResult", "ExportFrame", "evaluate_ctc", "export_ctc", "format_table"]
