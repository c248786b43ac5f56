"""Create an S3 bucket unless it exists; prints `created` or `exists`.

Usage: create_bucket.py ENDPOINT_URL BUCKET (keys from the environment). Retries for a minute:
SeaweedFS answers on its S3 port before its filer is ready.
"""

from __future__ import annotations

import sys
import time

import boto3
from botocore.exceptions import BotoCoreError, ClientError


def main(endpoint: str, bucket: str) -> int:
    client = boto3.client("s3", endpoint_url=endpoint)
    deadline = time.monotonic() + 60
    while True:
        try:
            names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            if bucket in names:
                print("exists")
            else:
                client.create_bucket(Bucket=bucket)
                print("created")
        except (BotoCoreError, ClientError) as exc:
            if time.monotonic() > deadline:
                print(f"cannot create bucket {bucket} at {endpoint}: {exc}", file=sys.stderr)
                return 1
            time.sleep(1)
            continue
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
