"""Helpers both the tests (tests/) and the bench (bench/) use, and neither may import from the other.

Not part of the installed package (pyproject.toml lists what is) or the runtime image.

    local_s3    moto's S3 server on 127.0.0.1, and `serving`, the one way a test server process runs
"""
