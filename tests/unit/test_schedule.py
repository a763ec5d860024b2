"""`launch schedule`: every object validates offline; the stored spec renders each run as `launch` would."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import subprocess
import sys

import jsonschema
import kubernetes_validate
import pytest
import yaml

from launcher.cli import main
from launcher.schedule.render import SUBMITTER, cronjob_to_job, run_to_objects
from launcher.schedule.spec import SubmitExit, stored_from_dict
from tests.golden import cases
from tests.helpers import EXAMPLE, REPO
from tests.unit.test_launcher_manifests import K8S_VERSION, crd_schema
from trainer import contract

BASE = cases.SCHEDULE_BASE
CASES = cases.SCHEDULE
CHART = os.path.join(REPO, "k8s", "chart")


def schedule(capsys, *flags: str, fmt: str = "json") -> list[dict] | str:
    code = main(["schedule", EXAMPLE, *BASE, *flags, "--dry-run", "-o", fmt, "--", "--steps", "5"])
    out = capsys.readouterr()
    assert code == 0, out.err
    if fmt != "json":
        return out.out
    return json.loads(out.out)


def by_kind(objects: list[dict]) -> dict[str, dict]:
    return {o["kind"]: o for o in objects}


def stored_of(objects: list[dict]):
    cm = by_kind(objects)["ConfigMap"]
    code = base64.b64decode(cm["binaryData"][contract.CODE_BUNDLE_NAME]) if "binaryData" in cm else None
    return stored_from_dict(json.loads(cm["data"]["schedule.json"]), code_data=code)


@pytest.mark.parametrize("flags", CASES.values(), ids=CASES.keys())
def test_every_schedule_object_and_every_run_object_validates(flags, capsys):
    objects = schedule(capsys, *flags)
    assert [o["kind"] for o in objects] == ["ServiceAccount", "Role", "RoleBinding", "CronJob", "ConfigMap"]
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    pod = by_kind(objects)["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, **pod},
                                 K8S_VERSION, strict=True)
    run = run_to_objects(stored_of(objects), run_name="nightly-29403360", namespace="team-a")
    jsonschema.validate(run[0], crd_schema())
    for obj in run[1:]:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_the_cronjob_forbids_overlap_and_keeps_a_history(capsys):
    cj = by_kind(schedule(capsys, *CASES["time-zone-warm-start"]))["CronJob"]["spec"]
    assert cj["schedule"] == "0 3 * * *" and cj["timeZone"] == "Europe/Berlin"
    assert cj["concurrencyPolicy"] == "Forbid"
    assert cj["startingDeadlineSeconds"] == 3600
    assert cj["successfulJobsHistoryLimit"] == cj["failedJobsHistoryLimit"] == 3
    job = cj["jobTemplate"]["spec"]
    # A failed retrain fails the Job at once, so the history shows it; API hiccups are retried.
    fail = job["podFailurePolicy"]["rules"][0]
    assert fail["action"] == "FailJob" and fail["onExitCodes"]["values"] == [1, 2] == list(SubmitExit.permanent())
    pod = job["template"]["spec"]
    assert pod["serviceAccountName"] == SUBMITTER and pod["restartPolicy"] == "Never"
    c = pod["containers"][0]
    assert c["command"] == ["python", "-m", "launcher.submit"]
    env = {e["name"]: e for e in c["env"]}
    assert env[contract.ENV_SCHEDULE]["value"] == "nightly"
    assert env[contract.ENV_RUN_NAME]["valueFrom"]["fieldRef"]["fieldPath"] == \
        f"metadata.labels['{contract.JOB_NAME_LABEL}']"
    assert c["securityContext"]["allowPrivilegeEscalation"] is False and c["securityContext"]["runAsNonRoot"]


def test_the_submitter_role_is_namespaced_and_never_reaches_secrets_pods_or_wildcards(capsys):
    kinds = by_kind(schedule(capsys, *CASES["eight-gpus"]))
    role = kinds["Role"]
    assert role["metadata"]["namespace"] == "default"
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        assert not {"secrets", "pods", "pods/exec", "roles", "rolebindings", "serviceaccounts"} & set(rule["resources"])
    assert kinds["RoleBinding"]["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                               "name": SUBMITTER}


def test_a_run_is_launchs_own_job_named_for_the_run_with_the_schedule_label_and_warm_start(capsys):
    """The whole run, object by object, is tests/golden/schedule-run/*.yaml; here what each field is for."""
    objects = schedule(capsys, *CASES["warm-start-optimizer-from-uri"])
    stored = stored_of(objects)
    run = run_to_objects(stored, run_name="nightly-29403360", namespace="team-a")
    assert [o["kind"] for o in run] == ["PyTorchJob", "ConfigMap", "PodDisruptionBudget"]  # launch's own objects
    for got in run:
        assert got["metadata"]["labels"][contract.LABEL_SCHEDULE] == "nightly"
        assert got["metadata"]["namespace"] == "team-a"
    c = run[0]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env[contract.ENV_RUN_ID] == "nightly-29403360"  # each run its own checkpoint folder
    assert env[contract.ENV_WARM_START_FROM] == "s3://bucket/ckpts/base-29000000"
    assert env[contract.ENV_WARM_START_OPTIMIZER] == "1"
    assert stored.schedule.job.script_args == ("--steps", "5")


def test_a_triggered_job_is_the_cronjobs_template_owned_by_it(capsys):
    cj = by_kind(schedule(capsys, *CASES["eight-gpus"]))["CronJob"]
    cj["metadata"]["uid"] = "1234"
    job = cronjob_to_job(cj, name=contract.scheduled_run_name("nightly", 1764201600))
    assert job["metadata"]["name"] == "nightly-29403360"
    assert job["spec"] == cj["spec"]["jobTemplate"]["spec"]
    assert job["metadata"]["labels"][contract.LABEL_SCHEDULE] == "nightly"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "1234"
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)


BAD = {
    "bad-cron": (["--cron", "0 3 * *"], "--cron"),
    "bad-time-zone": (["--time-zone", "Mars/Olympus"], "--time-zone"),
    "long-name": (["--name", "n" * 44], "--name"),
    "bad-warm-start": (["--warm-start-from", "yesterday"], "--warm-start-from"),
    "optimizer-alone": (["--warm-start-optimizer"], "--warm-start-optimizer needs --warm-start-from"),
    "local": (["--local"], "--local"),
    "short-deadline": (["--starting-deadline", "5"], "--starting-deadline"),
    "no-checkpoint": (["--checkpoint", ""], "--checkpoint"),
}


@pytest.mark.parametrize("flags,names", BAD.values(), ids=BAD.keys())
def test_bad_input_is_one_line_and_exit_2(flags, names, capsys):
    assert main(["schedule", EXAMPLE, *BASE, "--gpus", "8", *flags, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("launch: error:") and names in err


def test_no_cron_is_a_usage_error(capsys):
    assert main(["schedule", EXAMPLE, "--checkpoint", "s3://b/c", "--dry-run"]) == 2
    assert "--cron" in capsys.readouterr().err


def submitter(env: dict) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(contract.ENV_PREFIX)}
    return subprocess.run([sys.executable, "-m", "launcher.submit"], env={**base, **env}, cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_the_submitter_without_its_environment_says_what_is_missing_and_exits_2():
    r = submitter({})
    assert r.returncode == SubmitExit.BAD_SPEC and contract.ENV_SCHEDULE in r.stdout
    assert "Traceback" not in r.stdout + r.stderr
    r = submitter({contract.ENV_SCHEDULE: "nightly", contract.ENV_NAMESPACE: "team-a",
                   contract.ENV_RUN_NAME: "nightly-manual-x"})
    assert r.returncode == SubmitExit.BAD_SPEC and "launch schedule trigger nightly" in r.stdout


# --- the Helm chart: its templates come from the same sources ---------------------------------


def test_the_charts_generated_templates_are_up_to_date():
    r = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "gen-chart"), "--check"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr  # run `scripts/gen-chart`


def test_the_charts_default_quota_is_the_k8s_namespace_quota():
    values = yaml.safe_load(open(os.path.join(CHART, "values.yaml")))
    quota = yaml.safe_load(open(os.path.join(REPO, "k8s", "namespace", "resourcequota.yaml")))
    assert values["quota"]["hard"] == quota["spec"]["hard"]


def test_chart_values_pass_the_charts_schema(capsys):
    """Their content is tests/golden/chart-values/*.yaml; here that the chart accepts them, and its defaults."""
    assert main(["schedule", EXAMPLE, *BASE, *CASES["time-zone-warm-start"], "--chart-values", "--",
                 "--steps", "5"]) == 0
    values = yaml.safe_load(capsys.readouterr().out)
    schema = json.load(open(os.path.join(CHART, "values.schema.json")))
    jsonschema.validate(values, schema)
    jsonschema.validate(yaml.safe_load(open(os.path.join(CHART, "values.yaml"))), schema)
    got = values["schedules"]["nightly"]["objects"]
    assert [o["kind"] for o in got] == ["CronJob", "ConfigMap"]
    assert not any("namespace" in o["metadata"] for o in got)  # the release's namespace, set by the chart


def test_the_schedule_modules_load_no_torch():
    code = ("import sys, launcher.schedule.command, launcher.submit, launcher.schedule.render; "
            "assert 'torch' not in sys.modules, 'torch'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_a_stored_spec_round_trips_and_a_bundle_in_the_object_store_is_not_copied_into_it(capsys):
    from launcher.job.render import CodeRef
    from launcher.schedule.render import schedule_to_configmap

    stored = stored_of(schedule(capsys, *CASES["spot-secret-pvc"]))
    assert stored.code.configmap_data is not None
    uri = CodeRef(sha256=stored.code.sha256, entrypoint="train.py", uri="s3://bucket/code/nightly/abc.tar.gz")
    cm = schedule_to_configmap(stored.schedule, image=stored.image, code=uri)
    assert "binaryData" not in cm
    again = stored_from_dict(json.loads(cm["data"]["schedule.json"]), code_data=None, namespace="team-b")
    assert again.schedule == dataclasses.replace(stored.schedule, job=dataclasses.replace(stored.schedule.job,
                                                                                           namespace="team-b"))
    assert again.code == uri and again.image == stored.image
