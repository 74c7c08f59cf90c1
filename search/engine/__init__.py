"""Running a search on Ray Tune: a trial config to a Trainer, ASHA, Optuna TPE, the results callbacks."""
