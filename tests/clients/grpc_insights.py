"""A gRPC client of herd outside Rust: stubs generated from proto/ at run time with
grpcio-tools, then Trends, ListGroups and server reflection against a running `herd serve`.

Usage: grpc_insights.py PROTO_DIR OUT_DIR HOST:PORT SECRET_KEY
Prints one JSON document with what the server answered; the Rust test checks the numbers.
"""

import json
import os
import sys

import grpc
from grpc_tools import protoc
import grpc_tools


def generate(proto_dir: str, out_dir: str) -> None:
    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    files = [
        os.path.join(proto_dir, "herd/v1", name)
        for name in ("server.proto", "groups.proto", "insights.proto")
    ]
    rc = protoc.main(
        ["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out_dir}",
         f"--grpc_python_out={out_dir}", *files]
    )
    if rc != 0:
        raise SystemExit(f"protoc failed with {rc}")


def main() -> None:
    proto_dir, out_dir, target, key = sys.argv[1:5]
    generate(proto_dir, out_dir)
    sys.path.insert(0, out_dir)
    from herd.v1 import insights_pb2, insights_pb2_grpc, groups_pb2, groups_pb2_grpc

    channel = grpc.insecure_channel(target)
    meta = [("authorization", f"Bearer {key}")]
    insights = insights_pb2_grpc.InsightsServiceStub(channel)
    groups = groups_pb2_grpc.GroupsServiceStub(channel)
    out = {}

    # Unique companies per day doing signed_up.
    r = insights.Trends(
        insights_pb2.TrendsRequest(
            series=[insights_pb2.Series(event="signed_up", math=insights_pb2.MATH_UNIQUE_GROUP,
                                        math_group_type="company")],
            interval=insights_pb2.INTERVAL_DAY,
            date_from="2024-01-01", date_to="2024-01-03", timezone="UTC",
        ),
        metadata=meta, timeout=30,
    )
    out["daily"] = {"labels": list(r.labels), "data": list(r.results[0].data)}

    # Events broken down by the company's current plan.
    r = insights.Trends(
        insights_pb2.TrendsRequest(
            series=[insights_pb2.Series(event="signed_up", math=insights_pb2.MATH_TOTAL)],
            date_from="2024-01-01", date_to="2024-01-03",
            breakdown=insights_pb2.Breakdown(property="plan", group_type="company"),
        ),
        metadata=meta, timeout=30,
    )
    out["by_plan"] = [[s.breakdown_value, list(s.data)] for s in r.results]

    # Total value: unique companies over the range.
    r = insights.Trends(
        insights_pb2.TrendsRequest(
            series=[insights_pb2.Series(event="signed_up", math=insights_pb2.MATH_UNIQUE_GROUP,
                                        math_group_type="company")],
            date_from="2024-01-01", date_to="2024-01-03",
            display=insights_pb2.DISPLAY_TOTAL_VALUE,
        ),
        metadata=meta, timeout=30,
    )
    out["total"] = r.results[0].aggregated_value

    # A bad request: the status and its message.
    try:
        insights.Trends(
            insights_pb2.TrendsRequest(
                series=[insights_pb2.Series(event="signed_up", math=insights_pb2.MATH_UNIQUE_GROUP,
                                            math_group_type="planet")],
                date_from="2024-01-01", date_to="2024-01-03",
            ),
            metadata=meta, timeout=30,
        )
        out["bad"] = None
    except grpc.RpcError as e:
        out["bad"] = [e.code().name, e.details()]

    # Groups of type company, two pages of one.
    page1 = groups.ListGroups(groups_pb2.ListGroupsRequest(group_type="company", page_size=1),
                              metadata=meta, timeout=30)
    page2 = groups.ListGroups(groups_pb2.ListGroupsRequest(group_type="company", page_size=1,
                                                           cursor=page1.next_cursor),
                              metadata=meta, timeout=30)
    out["groups"] = [
        [g.key, dict(g.properties)] for g in list(page1.groups) + list(page2.groups)
    ]
    out["next_cursor"] = page1.next_cursor

    # Reflection: the services the server lists.
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )
    db = ProtoReflectionDescriptorDatabase(channel)
    out["services"] = sorted(db.get_services())

    print(json.dumps(out))


if __name__ == "__main__":
    main()
