"""What a search is: the one schema of a search YAML and the Optuna search space it defines."""
