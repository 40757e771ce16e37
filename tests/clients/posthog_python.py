"""Drive herd with the real posthog-python client (used by tests/capture_clients.rs).

Usage: posthog_python.py HOST TOKEN
Sends a fixed scenario with explicit uuids and timestamps, once with gzip off and once on,
flushes, and exits non-zero if the client reported any error.
"""
import sys
from datetime import datetime, timezone

from posthog import Posthog

host, token = sys.argv[1], sys.argv[2]
errors = []


def on_error(exc, batch):
    errors.append(f"{exc!r} ({len(batch)} events)")


def ts(*args):
    return datetime(*args, tzinfo=timezone.utc)


plain = Posthog(token, host=host, gzip=False, on_error=on_error, flush_at=10)
plain.capture(
    "signed_up",
    distinct_id="py-user",
    properties={"plan": "pro"},
    groups={"company": "id:5", "project": 42},
    timestamp=ts(2024, 1, 2, 3, 4, 5),
    uuid="00000000-0000-4000-8000-000000000001",
)
plain.group_identify(
    "company",
    "id:5",
    {"name": "Acme", "employees": 11},
    timestamp=ts(2024, 1, 2, 3, 0, 0),
    uuid="00000000-0000-4000-8000-000000000002",
    distinct_id="py-user",
)
plain.set(
    distinct_id="py-user",
    properties={"email": "a@b.c"},
    timestamp=ts(2024, 1, 2, 3, 5, 0),
    uuid="00000000-0000-4000-8000-000000000003",
)
plain.alias(
    previous_id="anon-1",
    distinct_id="py-user",
    timestamp=ts(2024, 1, 2, 3, 6, 0),
    uuid="00000000-0000-4000-8000-000000000004",
)
plain.flush()
plain.shutdown()

gz = Posthog(token, host=host, gzip=True, on_error=on_error, flush_at=10)
gz.capture(
    "created_project",
    distinct_id="py-user",
    groups={"company": "id:5"},
    timestamp=ts(2024, 1, 3, 0, 0, 0),
    uuid="00000000-0000-4000-8000-000000000005",
)
gz.group_identify(
    "project",
    42,
    {"name": "Website"},
    timestamp=ts(2024, 1, 3, 0, 0, 1),
    uuid="00000000-0000-4000-8000-000000000006",
    distinct_id="py-user",
)
gz.flush()
gz.shutdown()

if errors:
    print("client errors:", *errors, sep="\n", file=sys.stderr)
    sys.exit(1)
print("ok")
