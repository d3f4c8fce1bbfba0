"""Reports on finished result directories: the run table, leaderboards, regression checks and figures."""
