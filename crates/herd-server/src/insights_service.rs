//! `herd.v1.InsightsService`: typed insight requests → herd-query → typed responses.
//!
//! This module owns the translation between the protobuf messages and herd-query's request
//! types (rejecting unknown enum values with the field's path) and the mapping of query
//! errors to gRPC statuses. A client deadline (`grpc-timeout`, enforced by tonic) or a
//! cancelled call drops the handler's future, which drops the running DataFusion streams.

use herd_query::{
    BoolOp, Breakdown, Display, Interval, Math, MathSpec, Operator, PropertyFilter, PropertyGroup,
    PropertySource, QueryEngine, Series, TrendsQuery, WeekStart,
};
use tonic::{Request, Response, Status};

use crate::grpc::authenticate;
use crate::grpc::proto;
use crate::grpc::proto::insights_service_server::InsightsService;

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

/// The one place query errors become statuses.
pub fn status(e: herd_query::Error) -> Status {
    use herd_query::Error as E;
    match e {
        E::Invalid { .. } => Status::invalid_argument(e.to_string()),
        E::UnknownProject(_) => Status::not_found(e.to_string()),
        E::DataFusion(datafusion_error)
            if matches!(
                datafusion_error.find_root(),
                datafusion::error::DataFusionError::ResourcesExhausted(_)
            ) =>
        {
            Status::resource_exhausted(datafusion_error.to_string())
        }
        other => {
            tracing::error!(error = %other, "query failed");
            Status::internal(other.to_string())
        }
    }
}

fn invalid(field: &str, message: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {message}"))
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
        Ok(P::Unspecified) => return Err(invalid(field, "operator required")),
        Err(_) => return Err(invalid(field, format!("unknown operator {value}"))),
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
        Err(_) => return Err(invalid(&format!("{field}.op"), format!("unknown {}", g.op))),
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
        Err(_) => return Err(invalid(field, format!("unknown math {value}"))),
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
        Err(_) => return Err(invalid(field, format!("unknown interval {value}"))),
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
    let week_start = match proto::WeekStart::try_from(req.week_start) {
        Ok(proto::WeekStart::Sunday) => WeekStart::Sunday,
        Ok(proto::WeekStart::Monday) => WeekStart::Monday,
        Err(_) => return Err(invalid("week_start", format!("unknown {}", req.week_start))),
    };
    let display = match proto::Display::try_from(req.display) {
        Ok(proto::Display::TimeSeries) => Display::TimeSeries,
        Ok(proto::Display::TotalValue) => Display::TotalValue,
        Ok(proto::Display::Cumulative) => Display::Cumulative,
        Err(_) => return Err(invalid("display", format!("unknown {}", req.display))),
    };
    let breakdown = req.breakdown.map(|b| Breakdown {
        property: b.property,
        source: source(b.group_type),
        limit: b.limit as usize,
        hide_other: b.hide_other,
    });
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
        let query = trends_query(request.into_inner())?;
        let now = chrono::Utc::now().timestamp_micros();
        let r = self
            .engine
            .trends(project, &query, now)
            .await
            .map_err(status)?;
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
        }))
    }
}
