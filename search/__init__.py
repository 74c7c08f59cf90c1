"""The search: its rooms, each a sub-package.

- `study`: what a search is (the YAML schema, the Optuna search space).
- `engine`: running it on Ray Tune (the trainable, the scheduler, the searcher, the callbacks).
- `evaluate`: retraining each cell's winners on folds and the test split, the study's answer.
- `ops`: where it runs (the Ray session, the Jobs API, checks on folders and weights).
- `cli`: the `fundus-search` command line, one module per command family.
- `demo`: the offline stand-ins for the demo's pretrained weights.
"""
