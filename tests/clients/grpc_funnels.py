"""A Python grpcio client of herd's Funnel and Retention RPCs, stubs generated from proto/ at
run time with grpcio-tools.

Usage: grpc_funnels.py PROTO_DIR OUT_DIR HOST:PORT SECRET_KEY
Prints one JSON document with what the server answered; the Rust test checks the numbers.
"""

import json
import sys

import grpc

from grpc_insights import generate


def main() -> None:
    proto_dir, out_dir, target, key = sys.argv[1:5]
    generate(proto_dir, out_dir)
    sys.path.insert(0, out_dir)
    from herd.v1 import insights_pb2 as pb, insights_pb2_grpc

    channel = grpc.insecure_channel(target)
    meta = [("authorization", f"Bearer {key}")]
    insights = insights_pb2_grpc.InsightsServiceStub(channel)
    out = {}

    def steps(*names):
        return [pb.FunnelStep(event=n) for n in names]

    # Spec example B: signup → install → purchase by company, 1-day window.
    r = insights.Funnel(
        pb.FunnelRequest(
            steps=steps("signup", "install", "purchase"),
            window=pb.ConversionWindow(value=1, unit=pb.WINDOW_UNIT_DAY),
            aggregation_group_type="company",
            date_from="2024-01-01", date_to="2024-01-07",
        ),
        metadata=meta, timeout=30,
    )
    out["by_company"] = [
        {
            "name": s.name,
            "count": s.count,
            "avg": s.average_conversion_time if s.HasField("average_conversion_time") else None,
            "median": s.median_conversion_time if s.HasField("median_conversion_time") else None,
        }
        for s in r.lines[0].steps
    ]

    # The same by person.
    r = insights.Funnel(
        pb.FunnelRequest(
            steps=steps("signup", "install", "purchase"),
            window=pb.ConversionWindow(value=1, unit=pb.WINDOW_UNIT_DAY),
            date_from="2024-01-01", date_to="2024-01-07",
        ),
        metadata=meta, timeout=30,
    )
    out["by_person"] = [s.count for s in r.lines[0].steps]

    # Funnel trends by company, daily.
    r = insights.Funnel(
        pb.FunnelRequest(
            steps=steps("signup", "install"),
            window=pb.ConversionWindow(value=1, unit=pb.WINDOW_UNIT_DAY),
            aggregation_group_type="company",
            date_from="2024-01-01", date_to="2024-01-02",
            viz=pb.FUNNEL_VIZ_TRENDS, interval=pb.INTERVAL_DAY,
        ),
        metadata=meta, timeout=30,
    )
    out["trends"] = [
        [p.label, p.reached_from_step_count, p.reached_to_step_count, p.conversion_rate]
        for p in r.trends[0].data
    ]

    # Retention by company: any event, daily, 3 periods ending 2024-01-03.
    r = insights.Retention(
        pb.RetentionRequest(
            period=pb.INTERVAL_DAY, periods=3, aggregation_group_type="company",
            date_to="2024-01-03",
        ),
        metadata=meta, timeout=30,
    )
    out["retention"] = [[c.date, list(c.values)] for c in r.cohorts]

    # Bad requests: one step; an exclusion outside the steps.
    out["bad"] = []
    for req in [
        pb.FunnelRequest(steps=steps("signup"), date_from="2024-01-01"),
        pb.FunnelRequest(
            steps=steps("signup", "install"), date_from="2024-01-01",
            exclusions=[pb.FunnelExclusion(event="x", from_step=0, to_step=5)],
        ),
    ]:
        try:
            insights.Funnel(req, metadata=meta, timeout=30)
            out["bad"].append(None)
        except grpc.RpcError as e:
            out["bad"].append([e.code().name, e.details()])

    print(json.dumps(out))


if __name__ == "__main__":
    main()
