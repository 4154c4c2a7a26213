"""Evaluation: COCO metrics, forgetting metrics, reports (no model code here)."""
