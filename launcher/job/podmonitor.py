"""The Prometheus Operator's PodMonitor for kubetrain's pods (pure): what the Helm chart installs.

It selects every pod `launch` made in the namespace (its managed-by label, on both backends) and
scrapes the container port named contract.METRICS_PORT_NAME, which `launch --metrics-port N`
renders; a pod without that port (metrics off) gives Prometheus no target. The CRD
(monitoring.coreos.com/v1) is vendored in k8s/crds/ for offline validation.
"""

from __future__ import annotations

from typing import Any

from trainer import contract

NAME = "kubetrain"


def pod_monitor(namespace: str, interval: str = "30s") -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": NAME, "namespace": namespace,
                     "labels": {contract.LABEL_MANAGED_BY: contract.MANAGED_BY}},
        "spec": {
            "selector": {"matchLabels": {contract.LABEL_MANAGED_BY: contract.MANAGED_BY}},
            "podMetricsEndpoints": [{"port": contract.METRICS_PORT_NAME, "path": "/metrics", "interval": interval}],
            # The job and its node's pod, as labels on every series: the job name is kubetrain's own label.
            "podTargetLabels": [contract.LABEL_JOB],
        },
    }
