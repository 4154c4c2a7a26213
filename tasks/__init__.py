"""Tasks: COCO-format detection data and the synthetic worlds."""
