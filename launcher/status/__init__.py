"""`launch status` and `list`: counting and tables (format), the runtime's restart ledger (ledger), the text (report)."""
