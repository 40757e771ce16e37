"""Evaluate herd's flags with the real posthog-python client (used by tests/flags_clients.rs).

Usage: flags_python.py HOST TOKEN SECRET_KEY PAIRS_JSON OUT_JSON
For every pair {distinct_id, company, plan, email, age, send_group_properties} of PAIRS_JSON:
local evaluation (personal key -> /flags/definitions, only_evaluate_locally) and remote
evaluation (/flags). Writes [{"local": {flags, payloads}, "remote": {...}}] to OUT_JSON. Then
reads one flag of each of three pairs both ways, so $feature_flag_called events are sent, and
flushes. Exits non-zero if the client reported any error.
"""
import json
import sys

from posthog import Posthog

host, token, secret, pairs_path, out_path = sys.argv[1:6]
errors = []


def on_error(exc, batch):
    errors.append(f"{exc!r} ({len(batch)} events)")


local = Posthog(token, host=host, personal_api_key=secret, poll_interval=3600,
                on_error=on_error, flush_at=100)
remote = Posthog(token, host=host, on_error=on_error, flush_at=100)
local.load_feature_flags()
if not local.feature_flags or len(local.feature_flags) != 3:
    sys.exit(f"local definitions not loaded: {local.feature_flags!r}")

with open(pairs_path) as f:
    pairs = json.load(f)


def args(p, with_group_properties):
    a = {"groups": {"company": p["company"]},
         "person_properties": {"email": p["email"], "age": p["age"]}}
    if with_group_properties:
        a["group_properties"] = {"company": {"plan": p["plan"]}}
    return a


def both(response):
    return {"flags": response.get("featureFlags") or {},
            "payloads": response.get("featureFlagPayloads") or {}}


out = []
for p in pairs:
    loc = local.get_all_flags_and_payloads(p["distinct_id"], only_evaluate_locally=True,
                                           **args(p, True))
    rem = remote.get_all_flags_and_payloads(p["distinct_id"],
                                            **args(p, p["send_group_properties"]))
    out.append({"local": both(loc), "remote": both(rem)})

for p in pairs[:3]:
    local.get_feature_flag("group-flag", p["distinct_id"], only_evaluate_locally=True,
                           **args(p, True))
    remote.get_feature_flag("group-flag", p["distinct_id"], **args(p, True))

with open(out_path, "w") as f:
    json.dump(out, f)
local.shutdown()
remote.shutdown()
if errors:
    sys.exit("posthog-python errors: " + "; ".join(errors))
