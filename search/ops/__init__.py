"""Where a search runs: the Ray session on 127.0.0.1 or a cluster, the Jobs API, checks on folders and weights."""
