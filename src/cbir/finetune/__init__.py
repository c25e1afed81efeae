"""Fine-tuning (torch): the paper's two-phase recipe (``recipe``), writing checkpoints the export reads."""
