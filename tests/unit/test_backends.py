"""Each backend (launcher/backends/) has the whole interface, and reads back what it renders."""

from __future__ import annotations

import pytest

from launcher import backends
from launcher.backends.protocol import Backend
from launcher.job.render import spec_to_objects
from launcher.job.spec import JobSpec

#: Every member of the Protocol (mypy checks their types: tests/unit/test_typecheck.py; this, that each is there).
INTERFACE = tuple(sorted({*Backend.__annotations__, *(n for n in vars(Backend) if not n.startswith("_"))}))


@pytest.mark.parametrize("name", sorted(backends.BACKENDS))
def test_a_backend_has_the_whole_interface(name):
    backend = backends.BACKENDS[name]
    assert {"FIRST_REPLICA", "IGNORED_FLAGS", "KUEUE_FRAMEWORK", "suspended", "podsets", "render"} <= set(INTERFACE)
    assert [a for a in INTERFACE if not hasattr(backend, a)] == []
    assert backends.BY_KIND[backend.KIND] is backend and backend.CRD_NAME == f"{backend.PLURAL}.{backend.GROUP}"


@pytest.mark.parametrize("name", sorted(backends.BACKENDS))
def test_a_backend_reads_back_the_job_it_rendered(name):
    backend = backends.BACKENDS[name]
    spec = JobSpec(script="train.py", nodes=3, max_restarts=5, active_deadline_seconds=600, checkpoint_uri="s3://b/c")
    job = spec_to_objects(spec, name="j", code=None, image="img", backend=backend)[0]
    assert backends.of(job) is backend and job["apiVersion"] == backend.API_VERSION
    assert backend.state(job) == "Pending"  # no status yet
    assert backend.expected_pods(job) == backend.min_pods(job) == 3 == len(backend.replica_names(job))
    assert backend.retry_limit(job) == 5 and backend.deadline(job) == (600, None)
    (first, *_) = backend.pod_templates(job)
    assert first["spec"]["containers"][0]["command"][:4] == ["python", "-m", "trainer", "run"]
