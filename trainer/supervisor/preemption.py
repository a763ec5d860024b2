"""Cloud preemption notices, polled over HTTP from the instance metadata service.

AWS spot: GET /latest/meta-data/spot/instance-action answers 404 until a
reclaim is scheduled, then 200 with {"action": "terminate"|"stop", "time": ...}.
IMDSv2 wants a session token from PUT /latest/api/token first; IMDSv1 answers
without one, so the token is used when the PUT works.
GCP: GET /computeMetadata/v1/instance/preempted with `Metadata-Flavor: Google`
answers "TRUE" once the VM is being preempted, "FALSE" before.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable

log = logging.getLogger("kubetrain.preemption")

AWS_PATH_SUFFIX = "/spot/instance-action"
GCP_PATH_SUFFIX = "/instance/preempted"
TIMEOUT_S = 2.0


def notice_format(url: str) -> str:
    """'aws' or 'gcp', from the metadata path; ValueError for anything else."""
    path = urllib.parse.urlparse(url).path.rstrip("/")
    if path.endswith(AWS_PATH_SUFFIX):
        return "aws"
    if path.endswith(GCP_PATH_SUFFIX):
        return "gcp"
    raise ValueError(f"preemption URL {url!r} is neither an AWS spot instance-action "
                     f"(...{AWS_PATH_SUFFIX}) nor a GCP preempted (...{GCP_PATH_SUFFIX}) endpoint")


def parse_aws(status: int, body: bytes) -> str | None:
    """The reason for a notice in an instance-action reply, or None when there is none."""
    if status != 200:
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    action = doc.get("action") if isinstance(doc, dict) else None
    if action in ("terminate", "stop", "hibernate"):
        return f"AWS spot instance-action {action} at {doc.get('time', '?')}"
    return None


def parse_gcp(status: int, body: bytes) -> str | None:
    if status == 200 and body.strip().upper() == b"TRUE":
        return "GCP instance preempted"
    return None


def _get(req: urllib.request.Request) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def check_once(url: str) -> str | None:
    """One poll of the endpoint; the notice's reason or None. Network errors count as no notice."""
    fmt = notice_format(url)
    try:
        if fmt == "gcp":
            return parse_gcp(*_get(urllib.request.Request(url, headers={"Metadata-Flavor": "Google"})))
        headers = {}
        parsed = urllib.parse.urlparse(url)
        token_url = f"{parsed.scheme}://{parsed.netloc}/latest/api/token"
        put = urllib.request.Request(token_url, method="PUT",
                                     headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"})
        status, token = _get(put)
        if status == 200 and token:
            headers["X-aws-ec2-metadata-token"] = token.decode()
        return parse_aws(*_get(urllib.request.Request(url, headers=headers)))
    except (OSError, ValueError) as e:
        log.debug("preemption poll of %s failed: %s", url, e)
        return None


class NoticePoller(threading.Thread):
    """Polls `url` every `interval` seconds and calls `on_notice(reason)` once."""

    def __init__(self, url: str, interval: float, on_notice: Callable[[str], None]) -> None:
        super().__init__(name="kubetrain-preemption-poller", daemon=True)
        notice_format(url)  # fail now, not in the thread
        self.url, self.interval, self.on_notice = url, interval, on_notice
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.is_set():
            reason = check_once(self.url)
            if reason:
                self.on_notice(reason)
                return
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
