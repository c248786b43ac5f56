"""`facefleet faces`: list, get, delete, expire and reconcile stored faces (personal data) on
any sink.

STORE is a directory (the filesystem sink's) or `s3://BUCKET[/PREFIX]`; `--config FILE` takes it
from a processor config instead. S3 credentials come from boto3's default chain (environment,
profile, instance role). Exit status: 0 done, 1 the store failed, the deletion was not
confirmed or a recorded face is missing or stored twice, 2 bad usage (unknown option, bad
time, malformed store, missing bucket, no access).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from facefleet.config import ConfigError
from facefleet.contract import parse_timestamp, valid_face_id, valid_node
from facefleet.detector.journal import Published, parse_record, reconcile
from facefleet.facestore import (
    DirectoryStore,
    FaceFilter,
    FaceStore,
    S3Store,
    StoreError,
    delete_faces,
    expire,
    find_face,
    open_store,
    store_from_processor_config,
    who_am_i,
)

_RELATIVE_RE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
#: Which store errors are the operator's to fix (exit 2) rather than a failure of the store.
_USAGE_ERRORS = ("does not exist", "access denied", "credentials")

TIME_HELP = "ISO 8601 (2026-11-30, 2026-11-30T08:00Z; no zone = UTC) or an age (90m, 12h, 7d, 2w)"


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """An absolute ISO 8601 time or an age before `now`; ConfigError with one line otherwise."""
    match = _RELATIVE_RE.match(text.strip())
    if match:
        age = timedelta(**{_UNITS[match[2]]: int(match[1])})
        return (now or datetime.now(timezone.utc)) - age
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"bad time {text!r}: {TIME_HELP}") from None
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def with_store(name: str, text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text)
        where = p.add_mutually_exclusive_group(required=True)
        where.add_argument("--store", help="a directory or s3://BUCKET[/PREFIX]")
        where.add_argument("--config", "-c", help="take the store from this processor config")
        p.add_argument("--endpoint-url", default="", help="S3-compatible endpoint (default: AWS)")
        p.add_argument("--region", default="", help="S3 region (default: boto3's)")
        return p

    def with_filter(p: argparse.ArgumentParser) -> None:
        p.add_argument("--node", help="only faces of this node")
        p.add_argument("--since", help=f"captured at or after this time: {TIME_HELP}")
        p.add_argument("--until", help="captured before this time (same forms)")

    listing = with_store("list", "one line per stored face: id, node, capture time, bytes, key")
    with_filter(listing)
    listing.add_argument("--limit", type=int, help="at most this many faces")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")

    get = with_store("get", "write a face's image to a file and print its metadata")
    get.add_argument("id", help="face id")
    get.add_argument("-o", "--output", help="image file (default: <id>.<ext> here)")

    delete = with_store("delete", "delete faces (image and metadata) and record the deletion")
    delete.add_argument("--id", action="append", default=[], help="a face id (repeatable)")
    with_filter(delete)
    delete.add_argument("--dry-run", action="store_true", help="show what would go; delete nothing")
    delete.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")

    reconciling = with_store(
        "reconcile",
        "count a detector's record of published faces (its journal/published.log* files, "
        "copied from the device) against the store: stored once, missing, stored twice; "
        "exit status 1 unless every recorded face is stored once",
    )
    reconciling.add_argument("--node", required=True, help="the detector's node")
    reconciling.add_argument("record", nargs="+", help="the record's files, in any order")

    retention = with_store(
        "retention",
        "S3: set the lifecycle rule expiring faces and dead letters after D days (0: keep "
        "forever); directory: delete what is older than D days now",
    )
    days = retention.add_mutually_exclusive_group(required=True)
    days.add_argument("--days", type=int, help="days to keep faces and dead letters (0: forever)")
    days.add_argument("--show", action="store_true", help="print the rules in force (S3)")


def _progress(what: str, count: int) -> None:
    print(f"{what} {count} ...", file=sys.stderr, flush=True)


def _open(args: argparse.Namespace) -> FaceStore:
    if args.config:
        spec, endpoint, region = store_from_processor_config(args.config)
    else:
        spec, endpoint, region = args.store, "", ""
    return open_store(spec, args.endpoint_url or endpoint, args.region or region)


def _filter(args: argparse.Namespace) -> FaceFilter:
    if args.node is not None and not valid_node(args.node):
        raise ConfigError(f"bad node name {args.node!r}")
    now = datetime.now(timezone.utc)
    since = parse_time(args.since, now) if args.since else None
    until = parse_time(args.until, now) if args.until else None
    if since and until and since >= until:
        raise ConfigError("--since must be before --until")
    ids = frozenset(getattr(args, "id", None) or [])
    bad = [face_id for face_id in ids if not valid_face_id(face_id)]
    if bad:
        raise ConfigError(f"bad face id {bad[0]!r}")
    return FaceFilter(node=args.node, since=since, until=until, ids=ids)


def _list(store: FaceStore, args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit must be at least 1")
    for shown, face in enumerate(store.faces(_filter(args), _progress), start=1):
        if args.json:
            print(json.dumps(face.as_dict()))
        else:
            print(f"{face.id}\t{face.node}\t{face.ts}\t{face.size}\t{face.key}")
        if args.limit is not None and shown >= args.limit:
            break
    return 0


def _get(store: FaceStore, args: argparse.Namespace) -> int:
    if not valid_face_id(args.id):
        raise ConfigError(f"bad face id {args.id!r}")
    face = find_face(store, args.id)
    image, metadata = store.read(face)
    output = Path(args.output or f"{face.id}.{face.key.rsplit('.', 1)[-1]}")
    output.write_bytes(image)
    print(json.dumps({**face.as_dict(), "file": str(output), "metadata": metadata}, indent=1))
    return 0


def _reconcile(store: FaceStore, args: argparse.Namespace) -> int:
    if not valid_node(args.node):
        raise ConfigError(f"bad node name {args.node!r}")
    record: list[Published] = []
    for path in args.record:
        try:
            record += parse_record(Path(path).read_text(encoding="utf-8", errors="replace"))
        except OSError as exc:
            raise ConfigError(f"{path}: {exc.strerror}") from None
    if not record:
        raise ConfigError("the record files hold no face ids")
    times = []
    for entry in record:
        with contextlib.suppress(ValueError):
            times.append(parse_timestamp(entry.ts))
    # only faces captured since the record begins can be in it
    which = FaceFilter(node=args.node, since=min(times, default=None))
    result = reconcile(record, [face.id for face in store.faces(which, _progress)])
    for face_id in result.missing:
        print(f"missing\t{face_id}")
    for face_id in result.duplicates:
        print(f"twice\t{face_id}")
    print(
        f"{result.published} recorded, {result.stored} stored, {len(result.missing)} missing"
        f" ({result.missing_overflow} of them published without the journal),"
        f" {len(result.duplicates)} stored twice"
    )
    return 0 if result.ok else 1


def _confirm(question: str) -> bool:
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def _delete(store: FaceStore, args: argparse.Namespace) -> int:
    which = _filter(args)
    if which.ids and (which.node or which.since or which.until):
        raise ConfigError("use either --id or --node/--since/--until")
    if not which.ids and which.node is None:
        raise ConfigError("say what to delete: --id ID... or --node N [--since T] [--until T]")
    faces = list(store.faces(which, _progress))
    missing = sorted(which.ids - {face.id for face in faces})
    if missing:
        print(f"not found: {', '.join(missing)}", file=sys.stderr)
    criteria = which.describe()
    described = ", ".join(f"{k} {v}" for k, v in criteria.items() if k != "ids") or "by id"
    if args.dry_run:
        for face in faces:
            print(face.key)
        print(f"would delete {len(faces)} faces ({described}); dry run, nothing deleted")
        return 0
    if not faces:
        print(f"no faces match ({described}); nothing deleted")
        return 1 if missing else 0
    if not args.yes and not _confirm(
        f"delete {len(faces)} faces from {store.describe()} ({described})?"
    ):
        print("not confirmed; nothing deleted", file=sys.stderr)
        return 1
    extra = {"access_key_id": store.access_key_id} if isinstance(store, S3Store) else {}
    record = delete_faces(store, faces, criteria, who_am_i(extra), _progress)
    print(f"deleted {record.count} faces; record: {store.describe().rstrip('/')}/{record.key}")
    return 1 if missing else 0


def _retention(store: FaceStore, args: argparse.Namespace) -> int:
    if isinstance(store, S3Store):
        if args.show:
            for prefix, days in store.retention().items():
                print(f"{store.prefix}{prefix}\t{f'{days} days' if days else 'kept forever'}")
            return 0
        if args.days < 0:
            raise ConfigError("--days must be 0 (keep forever) or more")
        store.set_retention(args.days)
        if args.days:
            print(f"{store.describe()}: faces and dead letters expire after {args.days} days")
        else:
            print(f"{store.describe()}: faces and dead letters are kept forever")
        return 0
    assert isinstance(store, DirectoryStore)
    if args.show:
        raise ConfigError("a directory store has no rules to show; its retention is a timer")
    if args.days < 0:
        raise ConfigError("--days must be 0 (keep forever) or more")
    if args.days == 0:
        print(f"{store.describe()}: retention 0, kept forever; nothing deleted")
        return 0
    record, dead_letters = expire(store, args.days, who_am_i({"by": "retention"}))
    print(
        f"{store.describe()}: deleted {record.count} faces and {dead_letters} dead letters "
        f"older than {args.days} days (before {record.criteria['until']})"
    )
    return 0


def run_faces(args: argparse.Namespace) -> int:
    actions = {
        "list": _list,
        "get": _get,
        "delete": _delete,
        "reconcile": _reconcile,
        "retention": _retention,
    }
    try:
        store = _open(args)
        return actions[args.action](store, args)
    except StoreError as exc:
        message = str(exc)
        if any(marker in message for marker in _USAGE_ERRORS):
            raise ConfigError(message) from None
        print(f"facefleet faces {args.action}: {message}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `facefleet faces list | head`
        return 0
