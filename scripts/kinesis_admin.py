#!/usr/bin/env python3
"""Small boto3 CLI for the Kinesis emulators: an independent client for tests and the demo.

Run with the repo's venv (created by scripts/emulators):

    .venv/bin/python scripts/kinesis_admin.py [--endpoint-url URL] [--region R] [--account ID] CMD ...

Commands:
    create-stream NAME [--shards N]      idempotent; waits until ACTIVE; prints the stream ARN
    delete-stream NAME                   idempotent (no error if absent); does not wait
    stream-arn NAME                      prints the stream ARN
    register-consumer STREAM_ARN NAME    idempotent; waits until ACTIVE; prints the consumer ARN
    deregister-consumer STREAM_ARN NAME  idempotent; waits until it is gone
    get-policy ARN                       prints the policy JSON exactly as returned (no newline added);
                                         prints nothing and exits 3 when there is no policy
                                         (kinesis-mock: ResourceNotFoundException "No resource policy
                                         exists"; moto and AWS: Policy "{}")
    put-policy ARN FILE|-                raw PutResourcePolicy (simulates a hand change)
    delete-policy ARN...                 raw DeleteResourcePolicy, one call per ARN in turn

Exit codes: 0 ok, 1 AWS/other error (message on stderr), 2 usage error, 3 no policy (get-policy).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

EXIT_ERROR = 1
EXIT_NO_POLICY = 3
WAIT_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.2


class AdminError(Exception):
    """An error worth one line on stderr."""


def error_code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")


def error_message(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Message", "") or str(exc)


def make_client(args: argparse.Namespace):
    if args.account is not None and not re.fullmatch(r"\d{12}", args.account):
        raise AdminError(f"--account must be 12 digits, got {args.account!r}")
    # kinesis-mock selects the account per request from a 12-digit access key id.
    access_key = args.account if args.account else "test"
    return boto3.session.Session().client(
        "kinesis",
        endpoint_url=args.endpoint_url,
        region_name=args.region,
        aws_access_key_id=access_key,
        aws_secret_access_key="test",
        config=Config(
            connect_timeout=5,
            read_timeout=30,
            retries={"mode": "standard", "max_attempts": 3},
        ),
    )


def wait_until(what: str, probe) -> object:
    """Poll probe() until it returns a non-None value or WAIT_TIMEOUT_S elapses."""
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    last = None
    while True:
        result, last = probe()
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            raise AdminError(f"timed out after {WAIT_TIMEOUT_S:.0f} s waiting for {what} (last state: {last})")
        time.sleep(POLL_INTERVAL_S)


# ------------------------------------------------------------------ streams


def describe_stream(client, name: str) -> dict:
    return client.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]


def cmd_create_stream(client, args) -> int:
    if args.shards < 1:
        raise AdminError("--shards must be >= 1")
    try:
        client.create_stream(StreamName=args.name, ShardCount=args.shards)
    except ClientError as exc:
        if error_code(exc) != "ResourceInUseException":
            raise
        # Already exists (maybe still CREATING): fall through and wait for it.

    def probe():
        summary = describe_stream(client, args.name)
        status = summary.get("StreamStatus")
        return (summary["StreamARN"] if status == "ACTIVE" else None), status

    print(wait_until(f"stream {args.name} to be ACTIVE", probe))
    return 0


def cmd_delete_stream(client, args) -> int:
    try:
        client.delete_stream(StreamName=args.name, EnforceConsumerDeletion=True)
    except ClientError as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise
    return 0


def cmd_stream_arn(client, args) -> int:
    print(describe_stream(client, args.name)["StreamARN"])
    return 0


# ------------------------------------------------------------------ consumers


def cmd_register_consumer(client, args) -> int:
    def describe_by_name():
        try:
            desc = client.describe_stream_consumer(StreamARN=args.stream_arn, ConsumerName=args.name)
            return desc["ConsumerDescription"]["ConsumerARN"]
        except ClientError as exc:
            if error_code(exc) != "ResourceNotFoundException":
                raise
            return None

    def register_probe():
        # Look first: moto registers a duplicate consumer when the name is already taken.
        existing = describe_by_name()
        if existing is not None:
            return existing, "exists"
        try:
            resp = client.register_stream_consumer(StreamARN=args.stream_arn, ConsumerName=args.name)
            return resp["Consumer"]["ConsumerARN"], "registered"
        except ClientError as exc:
            if error_code(exc) != "ResourceInUseException":
                raise
        # Registered concurrently by someone else, or the stream is not ACTIVE yet.
        existing = describe_by_name()
        return existing, ("exists" if existing else "stream not ACTIVE")

    consumer_arn = wait_until(f"consumer {args.name} to be registered", register_probe)

    def active_probe():
        desc = client.describe_stream_consumer(ConsumerARN=consumer_arn)["ConsumerDescription"]
        status = desc.get("ConsumerStatus")
        return (desc["ConsumerARN"] if status == "ACTIVE" else None), status

    print(wait_until(f"consumer {args.name} to be ACTIVE", active_probe))
    return 0


def cmd_deregister_consumer(client, args) -> int:
    try:
        client.deregister_stream_consumer(StreamARN=args.stream_arn, ConsumerName=args.name)
    except ClientError as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise

    def gone_probe():
        try:
            desc = client.describe_stream_consumer(StreamARN=args.stream_arn, ConsumerName=args.name)
            return None, desc["ConsumerDescription"].get("ConsumerStatus")
        except ClientError as exc:
            if error_code(exc) != "ResourceNotFoundException":
                raise
            return True, "gone"

    wait_until(f"consumer {args.name} to be deregistered", gone_probe)
    return 0


# ------------------------------------------------------------------ policies


def is_empty_policy(policy: str) -> bool:
    if not policy.strip():
        return True
    try:
        return json.loads(policy) == {}
    except ValueError:
        return False


def cmd_get_policy(client, args) -> int:
    try:
        policy = client.get_resource_policy(ResourceARN=args.arn).get("Policy")
    except ClientError as exc:
        # kinesis-mock: "No resource policy exists for <arn>". An unknown resource is a real error.
        if error_code(exc) == "ResourceNotFoundException" and "no resource policy" in error_message(exc).lower():
            return EXIT_NO_POLICY
        raise
    if policy is None or is_empty_policy(policy):
        return EXIT_NO_POLICY  # moto and AWS answer Policy "{}" when there is none
    sys.stdout.write(policy)
    sys.stdout.flush()
    return 0


def cmd_put_policy(client, args) -> int:
    try:
        if args.file == "-":
            policy = sys.stdin.read()
        else:
            with open(args.file, encoding="utf-8") as fh:
                policy = fh.read()
    except OSError as exc:
        raise AdminError(f"cannot read {args.file}: {exc.strerror}") from exc
    client.put_resource_policy(ResourceARN=args.arn, Policy=policy)
    return 0


def cmd_delete_policy(client, args) -> int:
    # Several ARNs in one process, so that a test's hand edits land close together rather
    # than a Python start-up apart.
    for arn in args.arns:
        client.delete_resource_policy(ResourceARN=arn)
    return 0


# ------------------------------------------------------------------ CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kinesis_admin.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument(
        "--endpoint-url",
        # As kpr: its own variable first.
        default=os.environ.get("KPR_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
        or "http://127.0.0.1:4568",
        help="Kinesis endpoint (default: $KPR_ENDPOINT_URL, $AWS_ENDPOINT_URL or http://127.0.0.1:4568)",
    )
    parser.add_argument("--region", default="us-east-1", help="region (default: us-east-1)")
    parser.add_argument(
        "--account",
        default=None,
        help="12-digit account id, sent as the access key id (selects the account on kinesis-mock)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("create-stream", help="create a stream (idempotent) and wait until ACTIVE")
    p.add_argument("name")
    p.add_argument("--shards", type=int, default=1)
    p.set_defaults(func=cmd_create_stream)

    p = sub.add_parser("delete-stream", help="delete a stream (idempotent)")
    p.add_argument("name")
    p.set_defaults(func=cmd_delete_stream)

    p = sub.add_parser("stream-arn", help="print a stream's ARN")
    p.add_argument("name")
    p.set_defaults(func=cmd_stream_arn)

    p = sub.add_parser("register-consumer", help="register a consumer (idempotent), wait, print its ARN")
    p.add_argument("stream_arn", metavar="STREAM_ARN")
    p.add_argument("name")
    p.set_defaults(func=cmd_register_consumer)

    p = sub.add_parser("deregister-consumer", help="deregister a consumer (idempotent), wait until gone")
    p.add_argument("stream_arn", metavar="STREAM_ARN")
    p.add_argument("name")
    p.set_defaults(func=cmd_deregister_consumer)

    p = sub.add_parser("get-policy", help="print the resource policy (exit 3 if none)")
    p.add_argument("arn", metavar="ARN")
    p.set_defaults(func=cmd_get_policy)

    p = sub.add_parser("put-policy", help="PutResourcePolicy from a file or stdin (-)")
    p.add_argument("arn", metavar="ARN")
    p.add_argument("file", metavar="FILE_OR_-")
    p.set_defaults(func=cmd_put_policy)

    p = sub.add_parser("delete-policy", help="DeleteResourcePolicy")
    p.add_argument("arns", metavar="ARN", nargs="+")
    p.set_defaults(func=cmd_delete_policy)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        client = make_client(args)
        return args.func(client, args)
    except ClientError as exc:
        op = exc.operation_name or args.command
        print(f"kinesis_admin: {args.command}: {op} failed: {error_code(exc)}: {error_message(exc)}", file=sys.stderr)
    except (BotoCoreError, AdminError) as exc:
        print(f"kinesis_admin: {args.command}: {exc}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
