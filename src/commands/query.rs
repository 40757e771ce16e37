//! `herd query trends|funnel|retention|groups|group-types|info`: a gRPC client of a running
//! `herd serve` that prints a table, or one JSON document (`--format json`, shape documented in
//! the README).

use anyhow::{Context, bail};
use herd_server::grpc::proto;
use proto::groups_service_client::GroupsServiceClient;
use proto::insights_service_client::InsightsServiceClient;
use proto::server_info_service_client::ServerInfoServiceClient;
use serde_json::{Value, json};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

/// Where the server is and how to authenticate.
#[derive(Debug, clap::Args)]
pub(crate) struct ClientArgs {
    /// gRPC address of `herd serve`.
    #[arg(long, env = "HERD_GRPC_URL", default_value = "http://127.0.0.1:50051")]
    server: String,
    /// The project's secret key (`herd project list` shows it).
    #[arg(long, env = "HERD_SECRET_KEY")]
    key: String,
    /// Output: a table, or one JSON document.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub(crate) format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    Table,
    Json,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum QueryCommand {
    /// Counts per time bucket: events, unique users, unique groups, actives, property math.
    Trends(TrendsArgs),
    /// How many users or groups get through a sequence of steps.
    Funnel(super::query_funnel::FunnelArgs),
    /// Of each period's cohort, how many come back in the following periods.
    Retention(super::query_funnel::RetentionArgs),
    /// Groups of one type with their current properties.
    Groups(GroupsArgs),
    /// The project's group types.
    GroupTypes(ClientArgs),
    /// The server's version and the project: its group types and ingestion warnings.
    Info(ClientArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
enum MathArg {
    Total,
    Dau,
    UniqueGroup,
    WeeklyActive,
    MonthlyActive,
    Sum,
    Avg,
    Min,
    Max,
    Median,
    P90,
    P95,
    P99,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum IntervalArg {
    Hour,
    Day,
    Week,
    Month,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DisplayArg {
    Series,
    Total,
    Cumulative,
}

#[derive(Debug, clap::Args)]
pub(crate) struct TrendsArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Event of a series (repeat for several series); omit for one series over all events.
    #[arg(long)]
    event: Vec<String>,
    /// Math of every series.
    #[arg(long, value_enum, default_value_t = MathArg::Total)]
    math: MathArg,
    /// Group type counted by unique_group (and dau/weekly/monthly active on groups).
    #[arg(long)]
    group_type: Option<String>,
    /// Numeric event property for sum/avg/min/max/median/p90/p95/p99.
    #[arg(long)]
    property: Option<String>,
    #[arg(long, value_enum, default_value_t = IntervalArg::Day)]
    interval: IntervalArg,
    /// Start: YYYY-MM-DD, local date-time, RFC 3339, or relative like -7d.
    #[arg(long, default_value = "-7d", allow_hyphen_values = true)]
    from: String,
    /// End, inclusive (default now).
    #[arg(long, default_value = "", hide_default_value = true)]
    to: String,
    /// IANA timezone of the buckets.
    #[arg(long, default_value = "UTC")]
    tz: String,
    /// Weeks start on Monday instead of Sunday.
    #[arg(long)]
    week_start_monday: bool,
    /// series (one value per bucket), total (one value over the range) or cumulative.
    #[arg(long, value_enum, default_value_t = DisplayArg::Series)]
    display: DisplayArg,
    /// A filter `[GROUP_TYPE:]KEY OPERATOR [VALUE[,VALUE…]]`, e.g. `company:plan exact
    /// enterprise` or `$browser icontains chrome`; repeat to AND several.
    #[arg(long)]
    filter: Vec<String>,
    /// Break down by `[GROUP_TYPE:]KEY`, e.g. `company:plan` or `$browser`.
    #[arg(long)]
    breakdown: Option<String>,
    /// Breakdown values shown.
    #[arg(long, default_value_t = 25)]
    breakdown_limit: u32,
    /// Drop values beyond the limit instead of an "other" line.
    #[arg(long)]
    hide_other: bool,
    /// Print the physical plans the query ran (EXPLAIN) instead of its results.
    #[arg(long)]
    explain: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct GroupsArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Group type, e.g. company.
    #[arg(long)]
    group_type: String,
    /// Case-insensitive substring of the key or a property value.
    #[arg(long, default_value = "", hide_default_value = true)]
    search: String,
    /// Page size (at most 1000).
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// `next_cursor` of the previous page.
    #[arg(long, default_value = "", hide_default_value = true)]
    cursor: String,
}

pub(crate) async fn channel(args: &ClientArgs) -> anyhow::Result<Channel> {
    Channel::from_shared(args.server.clone())
        .context("--server must be a URL like http://127.0.0.1:50051")?
        .connect()
        .await
        .with_context(|| format!("connect to {}", args.server))
}

pub(crate) fn authorized<T>(args: &ClientArgs, message: T) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    let value: MetadataValue<_> = format!("Bearer {}", args.key)
        .parse()
        .context("--key is not valid in a header")?;
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

pub(crate) fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

/// `[GROUP_TYPE:]KEY` → (group type, key).
pub(crate) fn split_source(text: &str) -> (String, String) {
    match text.split_once(':') {
        Some((g, k)) if !g.is_empty() && !g.starts_with('$') => (g.to_string(), k.to_string()),
        _ => (String::new(), text.to_string()),
    }
}

pub(crate) fn parse_filter(text: &str) -> anyhow::Result<proto::PropertyFilter> {
    let mut parts = text.trim().splitn(3, char::is_whitespace);
    let (Some(target), Some(op)) = (parts.next(), parts.next()) else {
        bail!("--filter {text:?}: expected `[GROUP_TYPE:]KEY OPERATOR [VALUE]`");
    };
    let operator = match op {
        "exact" | "=" => proto::Operator::Exact,
        "is_not" | "!=" => proto::Operator::IsNot,
        "icontains" => proto::Operator::Icontains,
        "not_icontains" => proto::Operator::NotIcontains,
        "regex" => proto::Operator::Regex,
        "not_regex" => proto::Operator::NotRegex,
        "gt" | ">" => proto::Operator::Gt,
        "gte" | ">=" => proto::Operator::Gte,
        "lt" | "<" => proto::Operator::Lt,
        "lte" | "<=" => proto::Operator::Lte,
        "is_set" => proto::Operator::IsSet,
        "is_not_set" => proto::Operator::IsNotSet,
        "is_date_before" => proto::Operator::IsDateBefore,
        "is_date_after" => proto::Operator::IsDateAfter,
        other => bail!("--filter {text:?}: unknown operator {other:?}"),
    };
    let value = parts.next().unwrap_or("").trim();
    let values = match operator {
        proto::Operator::IsSet | proto::Operator::IsNotSet => vec![],
        proto::Operator::Exact | proto::Operator::IsNot => {
            value.split(',').map(str::to_string).collect()
        }
        _ => vec![value.to_string()],
    };
    let (group_type, key) = split_source(target);
    Ok(proto::PropertyFilter {
        key,
        operator: operator as i32,
        values,
        group_type,
    })
}

/// The protobuf interval of `--interval` / `--period`.
pub(crate) fn interval(i: IntervalArg) -> proto::Interval {
    match i {
        IntervalArg::Hour => proto::Interval::Hour,
        IntervalArg::Day => proto::Interval::Day,
        IntervalArg::Week => proto::Interval::Week,
        IntervalArg::Month => proto::Interval::Month,
    }
}

/// Runs a `herd query` subcommand.
pub(crate) async fn run(command: QueryCommand) -> anyhow::Result<()> {
    match command {
        QueryCommand::Trends(args) => trends(args).await,
        QueryCommand::Funnel(args) => super::query_funnel::funnel(args).await,
        QueryCommand::Retention(args) => super::query_funnel::retention(args).await,
        QueryCommand::Groups(args) => groups(args).await,
        QueryCommand::Info(args) => info(args).await,
        QueryCommand::GroupTypes(args) => {
            let mut client = GroupsServiceClient::new(channel(&args).await?);
            let r = client
                .list_group_types(authorized(&args, proto::ListGroupTypesRequest {})?)
                .await
                .map_err(status_error)?
                .into_inner();
            if args.format == Format::Json {
                let types: Vec<Value> = r
                    .group_types
                    .iter()
                    .map(|t| json!({"index": t.index, "name": t.name}))
                    .collect();
                println!("{}", json!({ "group_types": types }));
            } else {
                println!("index  name");
                for t in r.group_types {
                    println!("{:<5}  {}", t.index, t.name);
                }
            }
            Ok(())
        }
    }
}

/// Runs `herd query info`.
async fn info(args: ClientArgs) -> anyhow::Result<()> {
    let mut client = ServerInfoServiceClient::new(channel(&args).await?);
    let r = client
        .get_server_info(authorized(&args, proto::GetServerInfoRequest {})?)
        .await
        .map_err(status_error)?
        .into_inner();
    let project = r.project.unwrap_or_default();
    let warnings: std::collections::BTreeMap<_, _> = project.ingestion_warnings.iter().collect();
    if args.format == Format::Json {
        let doc = json!({
            "version": r.version,
            "started_at": micros_rfc3339(r.started_at_unix_micros),
            "project": {"id": project.id, "name": project.name,
                        "group_types": project.group_types, "ingestion_warnings": warnings},
        });
        println!("{doc}");
        return Ok(());
    }
    println!(
        "herd {} (started {})",
        r.version,
        micros_rfc3339(r.started_at_unix_micros)
    );
    println!("project {} ({})", project.id, project.name);
    println!("group types: {}", project.group_types.join(", "));
    if warnings.is_empty() {
        println!("ingestion warnings: none");
    } else {
        println!("ingestion warnings:");
        for (kind, n) in warnings {
            println!("  {kind:<28} {n}");
        }
    }
    Ok(())
}

async fn trends(args: TrendsArgs) -> anyhow::Result<()> {
    let request = trends_request(&args)?;
    let mut client = InsightsServiceClient::new(channel(&args.client).await?);
    let r = client
        .trends(authorized(&args.client, request)?)
        .await
        .map_err(status_error)?
        .into_inner();
    if args.explain {
        print!("{}", r.plan);
        return Ok(());
    }
    if args.client.format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&trends_json(&r))?);
        return Ok(());
    }
    print_trends(&r);
    let nothing = r
        .results
        .iter()
        .all(|s| s.count == 0.0 && s.aggregated_value.unwrap_or(0.0) == 0.0);
    if nothing {
        empty_range_note(&args.from);
    }
    Ok(())
}

/// The gRPC request of `herd query trends`'s arguments.
fn trends_request(args: &TrendsArgs) -> anyhow::Result<proto::TrendsRequest> {
    let math = match args.math {
        MathArg::Total => proto::Math::Total,
        MathArg::Dau => proto::Math::Dau,
        MathArg::UniqueGroup => proto::Math::UniqueGroup,
        MathArg::WeeklyActive => proto::Math::WeeklyActive,
        MathArg::MonthlyActive => proto::Math::MonthlyActive,
        MathArg::Sum => proto::Math::Sum,
        MathArg::Avg => proto::Math::Avg,
        MathArg::Min => proto::Math::Min,
        MathArg::Max => proto::Math::Max,
        MathArg::Median => proto::Math::Median,
        MathArg::P90 => proto::Math::P90,
        MathArg::P95 => proto::Math::P95,
        MathArg::P99 => proto::Math::P99,
    };
    let events = if args.event.is_empty() {
        vec![String::new()]
    } else {
        args.event.clone()
    };
    let series = events
        .into_iter()
        .map(|event| proto::Series {
            event,
            math: math as i32,
            math_group_type: args.group_type.clone().unwrap_or_default(),
            math_property: args.property.clone().unwrap_or_default(),
            filters: None,
            name: String::new(),
        })
        .collect();
    let filters = args
        .filter
        .iter()
        .map(|f| parse_filter(f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(proto::TrendsRequest {
        series,
        interval: interval(args.interval) as i32,
        date_from: args.from.clone(),
        date_to: args.to.clone(),
        timezone: args.tz.clone(),
        week_start: if args.week_start_monday {
            proto::WeekStart::Monday
        } else {
            proto::WeekStart::Sunday
        } as i32,
        filters: (!filters.is_empty()).then(|| proto::PropertyGroup {
            op: proto::BoolOp::And as i32,
            filters,
            groups: vec![],
        }),
        breakdown: args.breakdown.as_deref().map(|b| {
            let (group_type, property) = split_source(b);
            proto::Breakdown {
                property,
                group_type,
                limit: args.breakdown_limit,
                hide_other: args.hide_other,
            }
        }),
        display: match args.display {
            DisplayArg::Series => proto::Display::TimeSeries,
            DisplayArg::Total => proto::Display::TotalValue,
            DisplayArg::Cumulative => proto::Display::Cumulative,
        } as i32,
        explain: args.explain,
    })
}

/// The answer as a table on standard output: a column per line, a row per bucket.
fn print_trends(r: &proto::TrendsResponse) {
    let heads: Vec<String> = r
        .results
        .iter()
        .map(|s| match &s.breakdown_value {
            Some(b) => format!("{} [{}]", s.label, b),
            None => s.label.clone(),
        })
        .collect();
    let total = r.results.iter().any(|s| s.aggregated_value.is_some());
    let first = if total { "range" } else { "bucket" };
    let width = r.labels.iter().map(String::len).max().unwrap_or(6).max(6);
    print!("{first:<width$}");
    for h in &heads {
        print!("  {h:>12}");
    }
    println!();
    if total {
        print!("{:<width$}", "total");
        for s in &r.results {
            print!("  {:>12}", number(s.aggregated_value.unwrap_or(s.count)));
        }
        println!();
    } else {
        for (i, label) in r.labels.iter().enumerate() {
            print!("{label:<width$}");
            for s in &r.results {
                print!("  {:>12}", number(s.data.get(i).copied().unwrap_or(0.0)));
            }
            println!();
        }
    }
}

/// Says so on stderr when a table of zeros came from the default range, which a new user's
/// backfilled data often lies outside.
pub(crate) fn empty_range_note(from: &str) {
    if from == "-7d" {
        eprintln!(
            "note: nothing counted in the default range (the last 7 days); pass --from and --to \
             to look elsewhere"
        );
    }
}

pub(crate) fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.4}")
    }
}

pub(crate) fn micros_rfc3339(micros: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default()
}

/// The documented JSON shape of a trends answer.
fn trends_json(r: &proto::TrendsResponse) -> Value {
    let interval = match proto::Interval::try_from(r.interval) {
        Ok(proto::Interval::Hour) => "hour",
        Ok(proto::Interval::Week) => "week",
        Ok(proto::Interval::Month) => "month",
        _ => "day",
    };
    json!({
        "interval": interval,
        "timezone": r.timezone,
        "date_from": micros_rfc3339(r.date_from_unix_micros),
        "date_to": micros_rfc3339(r.date_to_unix_micros),
        "labels": r.labels,
        "results": r.results.iter().map(|s| json!({
            "series": s.series_index,
            "label": s.label,
            "breakdown_value": s.breakdown_value,
            "data": s.data,
            "count": s.count,
            "aggregated_value": s.aggregated_value,
        })).collect::<Vec<_>>(),
    })
}

fn value_json(v: &prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(n)) => json!(n),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value_json).collect()),
        Some(Kind::StructValue(s)) => struct_json(s),
    }
}

fn struct_json(s: &prost_types::Struct) -> Value {
    let mut fields: Vec<(&String, &prost_types::Value)> = s.fields.iter().collect();
    fields.sort_by(|a, b| a.0.cmp(b.0));
    Value::Object(
        fields
            .into_iter()
            .map(|(k, v)| (k.clone(), value_json(v)))
            .collect(),
    )
}

async fn groups(args: GroupsArgs) -> anyhow::Result<()> {
    let mut client = GroupsServiceClient::new(channel(&args.client).await?);
    let r = client
        .list_groups(authorized(
            &args.client,
            proto::ListGroupsRequest {
                group_type: args.group_type.clone(),
                search: args.search.clone(),
                page_size: args.limit,
                cursor: args.cursor.clone(),
            },
        )?)
        .await
        .map_err(status_error)?
        .into_inner();
    let rows: Vec<Value> = r
        .groups
        .iter()
        .map(|g| {
            json!({
                "key": g.key,
                "properties": g.properties.as_ref().map(struct_json).unwrap_or(json!({})),
                "created_at": micros_rfc3339(g.created_at_unix_micros),
                "version": g.version,
            })
        })
        .collect();
    if args.client.format == Format::Json {
        let doc = json!({
            "group_type": args.group_type,
            "groups": rows,
            "next_cursor": r.next_cursor,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let width = r
        .groups
        .iter()
        .map(|g| g.key.len())
        .max()
        .unwrap_or(3)
        .max(3);
    println!("{:<width$}  {:<27}  properties", "key", "created_at");
    for row in &rows {
        println!(
            "{:<width$}  {:<27}  {}",
            row["key"].as_str().unwrap_or_default(),
            row["created_at"].as_str().unwrap_or_default(),
            row["properties"]
        );
    }
    if !r.next_cursor.is_empty() {
        println!("(more: --cursor {})", r.next_cursor);
    }
    Ok(())
}
