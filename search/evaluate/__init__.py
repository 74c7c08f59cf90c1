"""The study's answer from a finished search: each cell's winners retrained on folds and on the test split."""
