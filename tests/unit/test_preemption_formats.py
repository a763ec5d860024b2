import pytest

from trainer.supervisor import preemption


@pytest.mark.parametrize("url,fmt", [
    ("http://169.254.169.254/latest/meta-data/spot/instance-action", "aws"),
    ("http://metadata.google.internal/computeMetadata/v1/instance/preempted", "gcp"),
    ("http://127.0.0.1:8080/computeMetadata/v1/instance/preempted/", "gcp"),
])
def test_notice_format_from_the_path(url, fmt):
    assert preemption.notice_format(url) == fmt


def test_an_unknown_endpoint_is_refused():
    with pytest.raises(ValueError, match="neither an AWS"):
        preemption.notice_format("http://169.254.169.254/latest/meta-data/")


@pytest.mark.parametrize("status,body,notice", [
    (404, b"", False),
    (200, b'{"action": "terminate", "time": "2026-11-27T04:30:00Z"}', True),
    (200, b'{"action": "stop", "time": "2026-11-27T04:30:00Z"}', True),
    (200, b"not json", False),
    (500, b'{"action": "terminate"}', False),
])
def test_parse_aws_instance_action(status, body, notice):
    assert bool(preemption.parse_aws(status, body)) is notice


@pytest.mark.parametrize("status,body,notice", [(200, b"TRUE", True), (200, b"FALSE", False), (503, b"TRUE", False)])
def test_parse_gcp_preempted(status, body, notice):
    assert bool(preemption.parse_gcp(status, body)) is notice


def test_an_unreachable_metadata_service_is_no_notice():
    assert preemption.check_once("http://127.0.0.1:9/latest/meta-data/spot/instance-action") is None
