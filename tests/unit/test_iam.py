"""The IAM policies in iam/ grant what the code does with the contract's prefixes, no more."""

from __future__ import annotations

import json

from facefleet.contract import DEAD_LETTER_PREFIX, DELETIONS_PREFIX, FACES_PREFIX, PROBE_PREFIX
from tests.support import ROOT

IAM = ROOT / "iam"


def grants(name: str) -> dict[str, set[str]]:
    """Allowed action -> the object prefixes (or the bucket, as '') it is allowed on."""
    policy = json.loads((IAM / name).read_text())
    out: dict[str, set[str]] = {}
    for statement in policy["Statement"]:
        if statement["Effect"] != "Allow":
            continue
        for action in statement["Action"]:
            for resource in statement["Resource"]:
                _, _, path = resource.partition(":::")
                prefix = path.partition("/")[2].removesuffix("*")
                out.setdefault(action, set()).add(prefix)
    return out


def test_the_processor_may_only_write_faces_dead_letters_and_its_probe_encrypted() -> None:
    assert grants("processor-policy.json") == {
        "s3:PutObject": {FACES_PREFIX, DEAD_LETTER_PREFIX, PROBE_PREFIX}
    }
    policy = json.loads((IAM / "processor-policy.json").read_text())
    deny = [s for s in policy["Statement"] if s["Effect"] == "Deny"]
    assert deny[0]["Condition"] == {"Null": {"s3:x-amz-server-side-encryption": "true"}}


def test_the_operator_lists_reads_deletes_and_records_but_never_deletes_records() -> None:
    allowed = grants("operator-policy.json")
    assert allowed["s3:DeleteObject"] == {FACES_PREFIX, DEAD_LETTER_PREFIX}
    assert allowed["s3:PutObject"] == {DELETIONS_PREFIX}
    assert allowed["s3:GetObject"] == {FACES_PREFIX, DEAD_LETTER_PREFIX, DELETIONS_PREFIX}
    assert allowed["s3:PutLifecycleConfiguration"] == {""}
    assert allowed["s3:ListBucket"] == {""}
