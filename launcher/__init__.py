"""kubetrain's client: `launch`. Never imports torch: the CLI must start fast."""
