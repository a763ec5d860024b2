"""What an S3 error means (pure): missing, permanent (configuration, exit 2) or transient."""

from __future__ import annotations

import re
from typing import Literal

ErrorKind = Literal["missing", "permanent", "transient"]

#: S3 error codes that no retry fixes, and what to do about each. A typo in a bucket name or a
#: wrong secret restarted a job forever under an operator that does not enforce backoffLimit.
S3_PERMANENT_ERRORS: dict[str, str] = {
    "NoSuchBucket": "the bucket does not exist: create it, or fix the bucket name in --checkpoint",
    "InvalidBucketName": "the bucket name is invalid: fix it in --checkpoint",
    "InvalidAccessKeyId": "the access key is unknown to the object store: fix AWS_ACCESS_KEY_ID "
                          "(or the credentials Secret the pod reads)",
    "SignatureDoesNotMatch": "the secret key is wrong for this access key: fix AWS_SECRET_ACCESS_KEY "
                             "(or the credentials Secret the pod reads)",
    "AccessDenied": "these credentials may not use the bucket: grant s3:GetObject, s3:PutObject, "
                    "s3:ListBucket and s3:DeleteObject on it",
    "AllAccessDisabled": "all access to the bucket is disabled: use another bucket",
    "AccountProblem": "the account behind these credentials cannot use S3: fix the account",
    # A HEAD request has no body, so a refusal arrives as a bare status.
    "403": "these credentials are refused (HTTP 403): check the key, the secret and the bucket policy",
}
_S3_MISSING = ("404", "NoSuchKey", "NotFound")
_BOTO_MESSAGE_CODE = re.compile(r"An error occurred \((\w+)\)")


def s3_error_code(exc: BaseException) -> str | None:
    """The S3 error code an exception carries: botocore's ClientError has it in its response;
    boto3's transfer manager re-raises it as S3UploadFailedError with only the message left."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if code:
            return str(code)
    m = _BOTO_MESSAGE_CODE.search(str(exc))
    return m.group(1) if m else None


def s3_error_kind(code: str | None) -> ErrorKind:
    """missing (the object is not there: a fact), permanent (configuration: exit 2), or transient
    (throttling, 5xx, timeouts, resets and anything unknown: retry)."""
    if code in _S3_MISSING:
        return "missing"
    if code in S3_PERMANENT_ERRORS:
        return "permanent"
    return "transient"


def permanent_s3_message(code: str, bucket: str) -> str:
    """One line for the log and the exit: what the store said, about which bucket, and the fix."""
    return f"checkpoint bucket s3://{bucket}: {code}: {S3_PERMANENT_ERRORS[code]}"
