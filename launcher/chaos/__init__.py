"""`launch chaos`: faults to a script run here (--local) or to one running job on a cluster, and how it coped."""
