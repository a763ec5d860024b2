"""`launch schedule`: retrain on a cron schedule. Its spec, what it renders, the command, and the in-cluster submitter."""
