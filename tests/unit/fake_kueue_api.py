"""An in-memory API server for `launch --queue` unit tests: enough of Kubernetes and Kueue to submit.

It serves the objects it was given, records what was created, and answers a dry-run create
as Kueue's webhook would: suspended when `managed` holds the kind and the job has a queue label.
"""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

from kubernetes.client.exceptions import ApiException

from launcher.k8s.api import Api
from launcher.kueue import names as kueue


def api_error(status: int, message: str = "") -> ApiException:
    e = ApiException(status=status, reason={403: "Forbidden", 404: "Not Found", 409: "Conflict"}.get(status, "Error"))
    e.body = json.dumps({"message": message or f"HTTP {status}"})
    return e


class FakeCluster:
    def __init__(self, *, kueue_versions=("v1beta1", "v1beta2"), managed=("PyTorchJob", "TrainJob"),
                 local_queues=None, cluster_queues=None, flavors=None, priority_classes=None, forbidden=(),
                 webhook_denies: str | None = None):
        self.crds = {"pytorchjobs.kubeflow.org": ["v1"], "trainjobs.trainer.kubeflow.org": ["v1alpha1"]}
        if kueue_versions is not None:
            self.crds.update({crd: list(kueue_versions) for crd in kueue.CRDS})
        self.managed = set(managed)
        self.objects = {("localqueues", "team-a", n): q for n, q in (local_queues or {}).items()}
        self.objects.update({("clusterqueues", None, n): q for n, q in (cluster_queues or {}).items()})
        self.objects.update({("resourceflavors", None, n): f for n, f in (flavors or {}).items()})
        self.objects.update({("workloadpriorityclasses", None, n): {"metadata": {"name": n}}
                             for n in (priority_classes or [])})
        self.objects[("clustertrainingruntimes", None, "kubetrain")] = {"metadata": {"name": "kubetrain"}}
        self.forbidden = set(forbidden)  # plurals this user may not read
        self.webhook_denies = webhook_denies
        self.created: list[tuple[str, str]] = []
        self.dry_runs: list[dict] = []

    # --- apiextensions
    def read_custom_resource_definition(self, name):
        if name not in self.crds:
            raise api_error(404)
        return SimpleNamespace(spec=SimpleNamespace(versions=[SimpleNamespace(name=v, served=True)
                                                              for v in self.crds[name]]))

    # --- custom objects
    def _read(self, plural, ns, name):
        if plural in self.forbidden:
            raise api_error(403, f"{plural} is forbidden")
        if (plural, ns, name) not in self.objects:
            raise api_error(404)
        return copy.deepcopy(self.objects[(plural, ns, name)])

    def get_namespaced_custom_object(self, group, version, ns, plural, name):
        return self._read(plural, ns, name)

    def get_cluster_custom_object(self, group, version, plural, name):
        return self._read(plural, None, name)

    def _list(self, plural, ns):
        if plural in self.forbidden:
            raise api_error(403)
        return {"items": [{"metadata": {"name": k[2]}} for k in self.objects if k[0] == plural and k[1] == ns]}

    def list_namespaced_custom_object(self, group, version, ns, plural, **kw):
        return self._list(plural, ns)

    def list_cluster_custom_object(self, group, version, plural, **kw):
        return self._list(plural, None)

    def create_namespaced_custom_object(self, group, version, ns, plural, body, dry_run=None):
        if self.webhook_denies:
            raise api_error(400, f'admission webhook "v.kb.io" denied the request: {self.webhook_denies}')
        answer = copy.deepcopy(body)
        answer["metadata"]["uid"] = "uid-1"
        if body["kind"] in self.managed and kueue.QUEUE_LABEL in body["metadata"].get("labels", {}):
            if body["kind"] == "PyTorchJob":
                answer["spec"]["runPolicy"]["suspend"] = True
            else:
                answer["spec"]["suspend"] = True
        if dry_run == "All":
            self.dry_runs.append(answer)
        else:
            self.created.append((body["kind"], body["metadata"]["name"]))
        return answer

    def delete_namespaced_custom_object(self, group, version, ns, plural, name, body=None):
        self.created = [c for c in self.created if c[1] != name or c[0] == "ConfigMap"]

    def patch_namespaced_custom_object(self, *a, **kw):
        return {}

    # --- core, policy
    def read_namespace(self, ns):
        return SimpleNamespace(metadata=SimpleNamespace(labels={}))

    def list_namespaced_resource_quota(self, ns):
        return SimpleNamespace(items=[])

    def create_namespaced_config_map(self, ns, body, **kw):
        self.created.append(("ConfigMap", body["metadata"]["name"]))
        return body

    def create_namespaced_pod_disruption_budget(self, ns, body, **kw):
        self.created.append(("PodDisruptionBudget", body["metadata"]["name"]))
        return body

    @property
    def api_client(self):
        return SimpleNamespace(sanitize_for_serialization=lambda x: x)

    def api(self) -> Api:
        return Api(core=self, custom=self, policy=self, ext=self, scheduling=self, batch=self, rbac=self)


def cluster_queue(name="gpu-team-a", *, gpus="16", flavor="fake-gpu", cohort=None, borrowing=None,
                  covered=("cpu", "nvidia.com/gpu"), extra_flavors=()) -> dict:
    def fl(n, q):
        res = {"name": "nvidia.com/gpu", "nominalQuota": q}
        if borrowing is not None:
            res["borrowingLimit"] = borrowing
        return {"name": n, "resources": [{"name": "cpu", "nominalQuota": "64"}, res]}

    spec = {"resourceGroups": [{"coveredResources": list(covered),
                                "flavors": [fl(flavor, gpus), *(fl(n, q) for n, q in extra_flavors)]}]}
    if cohort:
        spec["cohortName"] = cohort
    return {"metadata": {"name": name}, "spec": spec}


def local_queue(cq="gpu-team-a") -> dict:
    return {"metadata": {"name": "team-a"}, "spec": {"clusterQueue": cq}}
