//! `herd.v1.InsightsService`: typed insight requests → herd-query → typed responses.
//!
//! This module owns the translation between the protobuf messages and herd-query's request
//! types (rejecting unknown enum values with the field's path) and the mapping of query
//! errors to gRPC statuses. A client deadline (`grpc-timeout`, enforced by tonic) or a
//! cancelled call drops the handler's future, which drops the running DataFusion streams.

use herd_query::{
    Attribution, BoolOp, Breakdown, Display, FunnelExclusion, FunnelQuery, FunnelStep, FunnelViz,
    Interval, Math, MathSpec, Operator, Order, PropertyFilter, PropertyGroup, PropertySource,
    QueryEngine, RetentionEntity, RetentionQuery, RetentionType, Series, TrendsQuery, WeekStart,
    Window, WindowUnit,
};
use tonic::{Request, Response, Status};

use crate::grpc::proto;
use crate::grpc::proto::insights_service_server::InsightsService;
use crate::grpc::{authenticate, status};

/// The insights service over one query engine.
#[derive(Debug)]
pub struct Insights {
    engine: QueryEngine,
}

impl Insights {
    /// A service answering with `engine`.
    pub fn new(engine: QueryEngine) -> Self {
        Self { engine }
    }
}

fn operator(value: i32, field: &str) -> Result<Operator, Status> {
    use proto::Operator as P;
    Ok(match P::try_from(value) {
        Ok(P::Exact) => Operator::Exact,
        Ok(P::IsNot) => Operator::IsNot,
        Ok(P::Icontains) => Operator::IContains,
        Ok(P::NotIcontains) => Operator::NotIContains,
        Ok(P::Regex) => Operator::Regex,
        Ok(P::NotRegex) => Operator::NotRegex,
        Ok(P::Gt) => Operator::Gt,
        Ok(P::Gte) => Operator::Gte,
        Ok(P::Lt) => Operator::Lt,
        Ok(P::Lte) => Operator::Lte,
        Ok(P::IsSet) => Operator::IsSet,
        Ok(P::IsNotSet) => Operator::IsNotSet,
        Ok(P::IsDateBefore) => Operator::IsDateBefore,
        Ok(P::IsDateAfter) => Operator::IsDateAfter,
        Ok(P::Unspecified) => return Err(status::invalid(field, "operator required")),
        Err(_) => return Err(status::invalid(field, format!("unknown operator {value}"))),
    })
}

fn source(group_type: String) -> PropertySource {
    if group_type.is_empty() {
        PropertySource::Event
    } else {
        PropertySource::Group(group_type)
    }
}

/// A protobuf property group as herd-query's, validating enums.
pub fn property_group(
    group: Option<proto::PropertyGroup>,
    field: &str,
) -> Result<PropertyGroup, Status> {
    let Some(g) = group else {
        return Ok(PropertyGroup::default());
    };
    let op = match proto::BoolOp::try_from(g.op) {
        Ok(proto::BoolOp::And) => BoolOp::And,
        Ok(proto::BoolOp::Or) => BoolOp::Or,
        Err(_) => {
            return Err(status::invalid(
                &format!("{field}.op"),
                format!("unknown {}", g.op),
            ));
        }
    };
    let filters = g
        .filters
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            Ok(PropertyFilter {
                operator: operator(f.operator, &format!("{field}.filters[{i}].operator"))?,
                key: f.key,
                source: source(f.group_type),
                values: f.values,
            })
        })
        .collect::<Result<_, Status>>()?;
    let groups = g
        .groups
        .into_iter()
        .enumerate()
        .map(|(i, g)| property_group(Some(g), &format!("{field}.groups[{i}]")))
        .collect::<Result<_, Status>>()?;
    Ok(PropertyGroup {
        op,
        filters,
        groups,
    })
}

fn math(value: i32, field: &str) -> Result<Math, Status> {
    use proto::Math as P;
    Ok(match P::try_from(value) {
        Ok(P::Unspecified | P::Total) => Math::Total,
        Ok(P::Dau) => Math::Dau,
        Ok(P::UniqueGroup) => Math::UniqueGroup,
        Ok(P::WeeklyActive) => Math::WeeklyActive,
        Ok(P::MonthlyActive) => Math::MonthlyActive,
        Ok(P::Sum) => Math::Sum,
        Ok(P::Avg) => Math::Avg,
        Ok(P::Min) => Math::Min,
        Ok(P::Max) => Math::Max,
        Ok(P::Median) => Math::Median,
        Ok(P::P90) => Math::P90,
        Ok(P::P95) => Math::P95,
        Ok(P::P99) => Math::P99,
        Err(_) => return Err(status::invalid(field, format!("unknown math {value}"))),
    })
}

/// The protobuf interval as herd-query's (`None` = default).
pub fn interval(value: i32, field: &str) -> Result<Option<Interval>, Status> {
    use proto::Interval as P;
    Ok(match P::try_from(value) {
        Ok(P::Unspecified) => None,
        Ok(P::Hour) => Some(Interval::Hour),
        Ok(P::Day) => Some(Interval::Day),
        Ok(P::Week) => Some(Interval::Week),
        Ok(P::Month) => Some(Interval::Month),
        Err(_) => return Err(status::invalid(field, format!("unknown interval {value}"))),
    })
}

fn interval_to_proto(i: Interval) -> proto::Interval {
    match i {
        Interval::Hour => proto::Interval::Hour,
        Interval::Day => proto::Interval::Day,
        Interval::Week => proto::Interval::Week,
        Interval::Month => proto::Interval::Month,
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn week_start(value: i32) -> Result<WeekStart, Status> {
    match proto::WeekStart::try_from(value) {
        Ok(proto::WeekStart::Sunday) => Ok(WeekStart::Sunday),
        Ok(proto::WeekStart::Monday) => Ok(WeekStart::Monday),
        Err(_) => Err(status::invalid("week_start", format!("unknown {value}"))),
    }
}

fn breakdown(b: proto::Breakdown) -> Breakdown {
    Breakdown {
        property: b.property,
        source: source(b.group_type),
        limit: b.limit as usize,
        hide_other: b.hide_other,
    }
}

fn window(w: proto::ConversionWindow, field: &str) -> Result<Window, Status> {
    use proto::WindowUnit as P;
    let unit = match P::try_from(w.unit) {
        Ok(P::Unspecified | P::Day) => WindowUnit::Day,
        Ok(P::Second) => WindowUnit::Second,
        Ok(P::Minute) => WindowUnit::Minute,
        Ok(P::Hour) => WindowUnit::Hour,
        Ok(P::Week) => WindowUnit::Week,
        Ok(P::Month) => WindowUnit::Month,
        Err(_) => {
            return Err(status::invalid(
                &format!("{field}.unit"),
                format!("unknown unit {}", w.unit),
            ));
        }
    };
    Ok(Window {
        value: w.value,
        unit,
    })
}

/// A protobuf funnel request as herd-query's.
pub fn funnel_query(req: proto::FunnelRequest) -> Result<FunnelQuery, Status> {
    let steps = req
        .steps
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let field = format!("steps[{i}]");
            Ok(FunnelStep {
                event: non_empty(s.event),
                filters: property_group(s.filters, &format!("{field}.filters"))?,
                name: non_empty(s.name),
                optional: s.optional,
                window: s
                    .window
                    .map(|w| window(w, &format!("{field}.window")))
                    .transpose()?,
            })
        })
        .collect::<Result<_, Status>>()?;
    let exclusions = req
        .exclusions
        .into_iter()
        .enumerate()
        .map(|(i, x)| {
            Ok(FunnelExclusion {
                event: non_empty(x.event),
                filters: property_group(x.filters, &format!("exclusions[{i}].filters"))?,
                from_step: x.from_step as usize,
                to_step: x.to_step as usize,
            })
        })
        .collect::<Result<_, Status>>()?;
    let order = match proto::FunnelOrder::try_from(req.order) {
        Ok(proto::FunnelOrder::Ordered) => Order::Ordered,
        Ok(proto::FunnelOrder::Strict) => Order::Strict,
        Ok(proto::FunnelOrder::Unordered) => Order::Unordered,
        Err(_) => {
            return Err(status::invalid(
                "order",
                format!("unknown order {}", req.order),
            ));
        }
    };
    let attribution = match proto::Attribution::try_from(req.attribution) {
        Ok(proto::Attribution::FirstTouch) => Attribution::FirstTouch,
        Ok(proto::Attribution::LastTouch) => Attribution::LastTouch,
        Ok(proto::Attribution::AllEvents) => Attribution::AllEvents,
        Ok(proto::Attribution::Step) => Attribution::Step(req.attribution_step as usize),
        Err(_) => {
            return Err(status::invalid(
                "attribution",
                format!("unknown attribution {}", req.attribution),
            ));
        }
    };
    let viz = match proto::FunnelViz::try_from(req.viz) {
        Ok(proto::FunnelViz::Steps) => FunnelViz::Steps,
        Ok(proto::FunnelViz::Trends) => FunnelViz::Trends,
        Ok(proto::FunnelViz::TimeToConvert) => FunnelViz::TimeToConvert,
        Err(_) => return Err(status::invalid("viz", format!("unknown viz {}", req.viz))),
    };
    Ok(FunnelQuery {
        steps,
        order,
        window: req.window.map(|w| window(w, "window")).transpose()?,
        aggregation_group_type: non_empty(req.aggregation_group_type),
        exclusions,
        breakdown: req.breakdown.map(breakdown),
        attribution,
        date_from: req.date_from,
        date_to: req.date_to,
        timezone: req.timezone,
        filters: property_group(req.filters, "filters")?,
        viz,
        interval: interval(req.interval, "interval")?,
        week_start: week_start(req.week_start)?,
        from_step: req.from_step.map(|v| v as usize),
        to_step: req.to_step.map(|v| v as usize),
        bin_count: req.bin_count.map(|v| v as usize),
        window_past_date_to: req.window_past_date_to,
    })
}

/// A protobuf retention request as herd-query's.
pub fn retention_query(req: proto::RetentionRequest) -> Result<RetentionQuery, Status> {
    let entity =
        |e: Option<proto::RetentionEntity>, field: &str| -> Result<RetentionEntity, Status> {
            let e = e.unwrap_or_default();
            Ok(RetentionEntity {
                event: non_empty(e.event),
                filters: property_group(e.filters, &format!("{field}.filters"))?,
            })
        };
    let retention_type = match proto::RetentionType::try_from(req.retention_type) {
        Ok(proto::RetentionType::Recurring) => RetentionType::Recurring,
        Ok(proto::RetentionType::FirstTime) => RetentionType::FirstTime,
        Err(_) => {
            return Err(status::invalid(
                "retention_type",
                format!("unknown retention type {}", req.retention_type),
            ));
        }
    };
    Ok(RetentionQuery {
        target: entity(req.target, "target")?,
        returning: entity(req.returning, "returning")?,
        period: interval(req.period, "period")?,
        periods: req.periods as usize,
        retention_type,
        aggregation_group_type: non_empty(req.aggregation_group_type),
        breakdown: req.breakdown.map(breakdown),
        date_to: req.date_to,
        timezone: req.timezone,
        week_start: week_start(req.week_start)?,
        filters: property_group(req.filters, "filters")?,
    })
}

/// A protobuf trends request as herd-query's.
pub fn trends_query(req: proto::TrendsRequest) -> Result<TrendsQuery, Status> {
    let series = req
        .series
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let field = format!("series[{i}]");
            Ok(Series {
                event: non_empty(s.event),
                math: MathSpec {
                    math: math(s.math, &format!("{field}.math"))?,
                    group_type: non_empty(s.math_group_type),
                    property: non_empty(s.math_property),
                },
                filters: property_group(s.filters, &format!("{field}.filters"))?,
                name: non_empty(s.name),
            })
        })
        .collect::<Result<_, Status>>()?;
    let week_start = week_start(req.week_start)?;
    let display = match proto::Display::try_from(req.display) {
        Ok(proto::Display::TimeSeries) => Display::TimeSeries,
        Ok(proto::Display::TotalValue) => Display::TotalValue,
        Ok(proto::Display::Cumulative) => Display::Cumulative,
        Err(_) => {
            return Err(status::invalid(
                "display",
                format!("unknown {}", req.display),
            ));
        }
    };
    let breakdown = req.breakdown.map(breakdown);
    Ok(TrendsQuery {
        series,
        interval: interval(req.interval, "interval")?,
        date_from: req.date_from,
        date_to: req.date_to,
        timezone: req.timezone,
        week_start,
        filters: property_group(req.filters, "filters")?,
        breakdown,
        display,
    })
}

#[tonic::async_trait]
impl InsightsService for Insights {
    async fn trends(
        &self,
        request: Request<proto::TrendsRequest>,
    ) -> Result<Response<proto::TrendsResponse>, Status> {
        let project = authenticate(self.engine.db(), &request)?.project().id;
        let request = request.into_inner();
        let explain = request.explain;
        let query = trends_query(request)?;
        let now = chrono::Utc::now().timestamp_micros();
        if explain {
            let plan = self
                .engine
                .explain_trends(project, &query, now)
                .await
                .map_err(status::query)?;
            return Ok(Response::new(proto::TrendsResponse {
                plan,
                ..Default::default()
            }));
        }
        let r = self
            .engine
            .trends(project, &query, now)
            .await
            .map_err(status::query)?;
        Ok(Response::new(proto::TrendsResponse {
            labels: r.labels,
            bucket_starts_unix_micros: r.bucket_starts,
            results: r
                .results
                .into_iter()
                .map(|s| proto::SeriesResult {
                    series_index: s.series_index as u32,
                    label: s.label,
                    breakdown_value: s.breakdown_value,
                    data: s.data,
                    count: s.count,
                    aggregated_value: s.aggregated_value,
                })
                .collect(),
            date_from_unix_micros: r.date_from,
            date_to_unix_micros: r.date_to,
            timezone: r.timezone,
            interval: interval_to_proto(r.interval) as i32,
            plan: String::new(),
        }))
    }

    async fn funnel(
        &self,
        request: Request<proto::FunnelRequest>,
    ) -> Result<Response<proto::FunnelResponse>, Status> {
        let project = authenticate(self.engine.db(), &request)?.project().id;
        let request = request.into_inner();
        let explain = request.explain;
        let query = funnel_query(request)?;
        let now = chrono::Utc::now().timestamp_micros();
        if explain {
            let plan = self
                .engine
                .explain_funnel(project, &query, now)
                .await
                .map_err(status::query)?;
            return Ok(Response::new(proto::FunnelResponse {
                plan,
                ..Default::default()
            }));
        }
        let r = self
            .engine
            .funnel(project, &query, now)
            .await
            .map_err(status::query)?;
        Ok(Response::new(proto::FunnelResponse {
            lines: r
                .lines
                .into_iter()
                .map(|l| proto::FunnelLine {
                    breakdown_value: l.breakdown_value,
                    steps: l
                        .steps
                        .into_iter()
                        .map(|s| proto::FunnelStepResult {
                            order: s.order as u32,
                            name: s.name,
                            event: s.event.unwrap_or_default(),
                            optional: s.optional,
                            count: s.count,
                            average_conversion_time: s.average_conversion_time,
                            median_conversion_time: s.median_conversion_time,
                        })
                        .collect(),
                })
                .collect(),
            time_to_convert: r.time_to_convert.map(|t| proto::TimeToConvert {
                bins: t
                    .bins
                    .into_iter()
                    .map(|(start, actors)| proto::TimeToConvertBin {
                        start_seconds: start,
                        actors,
                    })
                    .collect(),
                average_conversion_time: t.average_conversion_time,
            }),
            trends: r
                .trends
                .into_iter()
                .map(|l| proto::FunnelTrendsLine {
                    breakdown_value: l.breakdown_value,
                    data: l
                        .data
                        .into_iter()
                        .map(|p| proto::FunnelTrendPoint {
                            label: p.label,
                            start_unix_micros: p.start,
                            reached_from_step_count: p.reached_from_step_count,
                            reached_to_step_count: p.reached_to_step_count,
                            conversion_rate: p.conversion_rate,
                        })
                        .collect(),
                })
                .collect(),
            date_from_unix_micros: r.date_from,
            date_to_unix_micros: r.date_to,
            timezone: r.timezone,
            plan: String::new(),
        }))
    }

    async fn retention(
        &self,
        request: Request<proto::RetentionRequest>,
    ) -> Result<Response<proto::RetentionResponse>, Status> {
        let project = authenticate(self.engine.db(), &request)?.project().id;
        let request = request.into_inner();
        let explain = request.explain;
        let query = retention_query(request)?;
        let now = chrono::Utc::now().timestamp_micros();
        if explain {
            let plan = self
                .engine
                .explain_retention(project, &query, now)
                .await
                .map_err(status::query)?;
            return Ok(Response::new(proto::RetentionResponse {
                plan,
                ..Default::default()
            }));
        }
        let r = self
            .engine
            .retention(project, &query, now)
            .await
            .map_err(status::query)?;
        Ok(Response::new(proto::RetentionResponse {
            labels: r.labels,
            cohorts: r
                .cohorts
                .into_iter()
                .map(|c| proto::Cohort {
                    label: c.label,
                    start_unix_micros: c.start,
                    date: c.date,
                    breakdown_value: c.breakdown_value,
                    values: c.values,
                })
                .collect(),
            date_from_unix_micros: r.date_from,
            date_to_unix_micros: r.date_to,
            timezone: r.timezone,
            period: interval_to_proto(r.period) as i32,
            plan: String::new(),
        }))
    }
}
