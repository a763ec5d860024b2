"""One training job: its spec, how it renders, how its code ships, `launch SCRIPT`, the verbs on a job, --local."""
