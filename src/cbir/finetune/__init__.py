"""Fine-tuning recipe (torch): the paper's two-phase schedule. Not implemented yet (issue 7)."""
