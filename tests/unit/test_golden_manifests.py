"""What `launch` renders, byte for byte, against the reviewed files in tests/golden/.

A change to a rendered manifest shows up here as a diff; if it is meant, run
`python -m tests.golden.regen` and commit the new files with the change, so the
review sees both.
"""

from __future__ import annotations

import functools
import os

import pytest

from tests.golden import regen


@functools.cache
def rendered() -> dict[str, str]:
    return regen.render()


def golden_files() -> list[str]:
    root = regen.HERE
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root)
                  for f in files if f.endswith(".yaml") and d != root)


def test_every_case_has_a_golden_file_and_every_golden_file_a_case():
    assert golden_files() == sorted(rendered()), "run `python -m tests.golden.regen` and review the diff"


@pytest.mark.parametrize("rel", sorted(regen.render()))
def test_the_rendered_manifest_is_the_golden_one(rel):
    with open(os.path.join(regen.HERE, rel), encoding="utf-8") as f:
        want = f.read()
    # On a difference pytest prints the diff; `python -m tests.golden.regen` rewrites the file.
    assert rendered()[rel] == want, f"tests/golden/{rel} is stale: run `python -m tests.golden.regen`"
