"""Kueue (kueue.x-k8s.io/v1beta2, v0.17.0): what `launch --queue` knows of it. Pure; launcher/k8s/kueue.py talks."""
