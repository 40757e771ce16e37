//! `herd query funnel` and `herd query retention`: flags → a gRPC request → a table or one JSON
//! document (shape in the README).

use anyhow::bail;
use herd_server::grpc::proto;
use proto::insights_service_client::InsightsServiceClient;
use serde_json::{Value, json};

use super::query::{
    ClientArgs, Format, IntervalArg, authorized, channel, interval, micros_rfc3339, number,
    parse_filter, split_source, status_error,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OrderArg {
    Ordered,
    Strict,
    Unordered,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum UnitArg {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
enum VizArg {
    Steps,
    Trends,
    TimeToConvert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
enum RetentionTypeArg {
    Recurring,
    FirstTime,
}

#[derive(Debug, clap::Args)]
pub(crate) struct FunnelArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// A step's event, in order (at least two). Append `?` to make a step optional
    /// (`--step viewed_pricing?`).
    #[arg(long = "step", required = true)]
    steps: Vec<String>,
    /// Step order.
    #[arg(long, value_enum, default_value_t = OrderArg::Ordered)]
    order: OrderArg,
    /// Conversion window, in --window-unit units, from the first step.
    #[arg(long, default_value_t = 14)]
    window: i64,
    #[arg(long, value_enum, default_value_t = UnitArg::Day)]
    window_unit: UnitArg,
    /// Count groups of this type instead of users.
    #[arg(long)]
    group_type: Option<String>,
    /// An exclusion `EVENT:FROM_STEP:TO_STEP` (0-based steps), e.g. `churned:0:2`.
    #[arg(long)]
    exclude: Vec<String>,
    /// Break down by `[GROUP_TYPE:]KEY`.
    #[arg(long)]
    breakdown: Option<String>,
    /// first_touch, last_touch, all_events or step:N.
    #[arg(long, default_value = "first_touch")]
    attribution: String,
    /// Breakdown values shown.
    #[arg(long, default_value_t = 25)]
    breakdown_limit: u32,
    /// Start: a date, a date-time or relative like -7d.
    #[arg(long, default_value = "-7d", allow_hyphen_values = true)]
    from: String,
    /// End, inclusive (default now).
    #[arg(long, default_value = "", hide_default_value = true)]
    to: String,
    /// IANA timezone.
    #[arg(long, default_value = "UTC")]
    tz: String,
    /// A filter on every event, `[GROUP_TYPE:]KEY OPERATOR [VALUE]`; repeat to AND.
    #[arg(long)]
    filter: Vec<String>,
    /// steps, trends (conversion per interval) or time_to_convert.
    #[arg(long, value_enum, default_value_t = VizArg::Steps)]
    viz: VizArg,
    /// Trends bucket width.
    #[arg(long, value_enum, default_value_t = IntervalArg::Day)]
    interval: IntervalArg,
    /// Time-to-convert bins (1..90).
    #[arg(long)]
    bins: Option<u32>,
    /// Let conversions finish after --to for entries made before it.
    #[arg(long)]
    window_past_date_to: bool,
    /// Print the funnel's physical plan (EXPLAIN) instead of running it.
    #[arg(long)]
    explain: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RetentionArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The event that puts an actor in a cohort (default: any event).
    #[arg(long, default_value = "", hide_default_value = true)]
    target: String,
    /// The event that counts as coming back (default: any event).
    #[arg(long, default_value = "", hide_default_value = true)]
    returning: String,
    #[arg(long, value_enum, default_value_t = IntervalArg::Day)]
    period: IntervalArg,
    /// Number of cohorts and periods.
    #[arg(long, default_value_t = 7)]
    periods: u32,
    #[arg(long = "type", value_enum, default_value_t = RetentionTypeArg::Recurring)]
    retention_type: RetentionTypeArg,
    /// Count groups of this type instead of users.
    #[arg(long)]
    group_type: Option<String>,
    /// Break down by `[GROUP_TYPE:]KEY`.
    #[arg(long)]
    breakdown: Option<String>,
    /// The last period holds this date (default now).
    #[arg(long, default_value = "", hide_default_value = true)]
    to: String,
    /// IANA timezone.
    #[arg(long, default_value = "UTC")]
    tz: String,
    /// A filter on every event; repeat to AND.
    #[arg(long)]
    filter: Vec<String>,
    /// Print the query's physical plan (EXPLAIN) instead of running it.
    #[arg(long)]
    explain: bool,
}

fn filters(list: &[String]) -> anyhow::Result<Option<proto::PropertyGroup>> {
    let filters = list
        .iter()
        .map(|f| parse_filter(f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((!filters.is_empty()).then(|| proto::PropertyGroup {
        op: proto::BoolOp::And as i32,
        filters,
        groups: vec![],
    }))
}

fn breakdown(text: &Option<String>, limit: u32) -> Option<proto::Breakdown> {
    text.as_deref().map(|b| {
        let (group_type, property) = split_source(b);
        proto::Breakdown {
            property,
            group_type,
            limit,
            hide_other: false,
        }
    })
}

/// Runs `herd query funnel`.
pub(crate) async fn funnel(args: FunnelArgs) -> anyhow::Result<()> {
    let request = funnel_request(&args)?;
    let mut client = InsightsServiceClient::new(channel(&args.client).await?);
    let r = client
        .funnel(authorized(&args.client, request)?)
        .await
        .map_err(status_error)?
        .into_inner();
    if args.explain {
        print!("{}", r.plan);
        return Ok(());
    }
    if args.client.format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&funnel_json(&r))?);
        return Ok(());
    }
    print_funnel(&args, &r);
    let entered = r
        .lines
        .iter()
        .any(|l| l.steps.first().is_some_and(|s| s.count > 0))
        || r.trends
            .iter()
            .any(|l| l.data.iter().any(|p| p.reached_from_step_count > 0))
        || r.time_to_convert
            .as_ref()
            .is_some_and(|t| t.bins.iter().any(|b| b.actors > 0));
    if !entered {
        super::query::empty_range_note(&args.from);
    }
    Ok(())
}

/// The `(attribution, step)` of `--attribution`.
fn attribution(text: &str) -> anyhow::Result<(proto::Attribution, u32)> {
    Ok(match text {
        "first_touch" => (proto::Attribution::FirstTouch, 0),
        "last_touch" => (proto::Attribution::LastTouch, 0),
        "all_events" => (proto::Attribution::AllEvents, 0),
        other => match other.strip_prefix("step:").map(str::parse::<u32>) {
            Some(Ok(n)) => (proto::Attribution::Step, n),
            _ => bail!(
                "--attribution {other:?}: expected first_touch, last_touch, all_events or step:N"
            ),
        },
    })
}

/// The gRPC request of `herd query funnel`'s arguments.
fn funnel_request(args: &FunnelArgs) -> anyhow::Result<proto::FunnelRequest> {
    let steps = args
        .steps
        .iter()
        .map(|s| {
            let (event, optional) = match s.strip_suffix('?') {
                Some(e) => (e.to_string(), true),
                None => (s.clone(), false),
            };
            proto::FunnelStep {
                event,
                optional,
                ..Default::default()
            }
        })
        .collect();
    let exclusions = args
        .exclude
        .iter()
        .map(|x| {
            let mut parts = x.rsplitn(3, ':');
            let (Some(to), Some(from), Some(event)) = (parts.next(), parts.next(), parts.next())
            else {
                bail!("--exclude {x:?}: expected EVENT:FROM_STEP:TO_STEP");
            };
            Ok(proto::FunnelExclusion {
                event: event.to_string(),
                filters: None,
                from_step: from.parse()?,
                to_step: to.parse()?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (attribution, attribution_step) = attribution(&args.attribution)?;
    Ok(proto::FunnelRequest {
        steps,
        order: match args.order {
            OrderArg::Ordered => proto::FunnelOrder::Ordered,
            OrderArg::Strict => proto::FunnelOrder::Strict,
            OrderArg::Unordered => proto::FunnelOrder::Unordered,
        } as i32,
        window: Some(proto::ConversionWindow {
            value: args.window,
            unit: match args.window_unit {
                UnitArg::Second => proto::WindowUnit::Second,
                UnitArg::Minute => proto::WindowUnit::Minute,
                UnitArg::Hour => proto::WindowUnit::Hour,
                UnitArg::Day => proto::WindowUnit::Day,
                UnitArg::Week => proto::WindowUnit::Week,
                UnitArg::Month => proto::WindowUnit::Month,
            } as i32,
        }),
        aggregation_group_type: args.group_type.clone().unwrap_or_default(),
        exclusions,
        breakdown: breakdown(&args.breakdown, args.breakdown_limit),
        attribution: attribution as i32,
        attribution_step,
        date_from: args.from.clone(),
        date_to: args.to.clone(),
        timezone: args.tz.clone(),
        filters: filters(&args.filter)?,
        viz: match args.viz {
            VizArg::Steps => proto::FunnelViz::Steps,
            VizArg::Trends => proto::FunnelViz::Trends,
            VizArg::TimeToConvert => proto::FunnelViz::TimeToConvert,
        } as i32,
        interval: interval(args.interval) as i32,
        week_start: proto::WeekStart::Sunday as i32,
        from_step: None,
        to_step: None,
        bin_count: args.bins,
        window_past_date_to: args.window_past_date_to,
        explain: args.explain,
    })
}

/// The answer as tables on standard output.
fn print_funnel(args: &FunnelArgs, r: &proto::FunnelResponse) {
    let seconds = |v: Option<f64>| v.map_or("-".to_string(), number);
    match args.viz {
        VizArg::Steps => {
            for line in &r.lines {
                if let Some(b) = &line.breakdown_value {
                    println!("[{b}]");
                }
                println!(
                    "{:<4}  {:<24}  {:>10}  {:>8}  {:>12}  {:>12}",
                    "step", "name", "count", "of first", "avg s", "median s"
                );
                let first = line.steps.first().map_or(0, |s| s.count);
                for s in &line.steps {
                    let pct = if first == 0 {
                        0.0
                    } else {
                        s.count as f64 * 100.0 / first as f64
                    };
                    println!(
                        "{:<4}  {:<24}  {:>10}  {:>7.1}%  {:>12}  {:>12}",
                        s.order,
                        s.name,
                        s.count,
                        pct,
                        seconds(s.average_conversion_time),
                        seconds(s.median_conversion_time)
                    );
                }
            }
        }
        VizArg::Trends => {
            for line in &r.trends {
                if let Some(b) = &line.breakdown_value {
                    println!("[{b}]");
                }
                println!(
                    "{:<26}  {:>8}  {:>8}  {:>8}",
                    "bucket", "entered", "converted", "rate %"
                );
                for p in &line.data {
                    println!(
                        "{:<26}  {:>8}  {:>8}  {:>8}",
                        p.label,
                        p.reached_from_step_count,
                        p.reached_to_step_count,
                        number(p.conversion_rate)
                    );
                }
            }
        }
        VizArg::TimeToConvert => {
            let t = r.time_to_convert.clone().unwrap_or_default();
            println!("average {} s", seconds(t.average_conversion_time));
            println!("{:>14}  {:>8}", "from s", "actors");
            for b in &t.bins {
                println!("{:>14}  {:>8}", number(b.start_seconds), b.actors);
            }
        }
    }
}

/// The documented JSON shape of a funnel answer.
fn funnel_json(r: &proto::FunnelResponse) -> Value {
    json!({
        "timezone": r.timezone,
        "date_from": micros_rfc3339(r.date_from_unix_micros),
        "date_to": micros_rfc3339(r.date_to_unix_micros),
        "lines": r.lines.iter().map(|l| json!({
            "breakdown_value": l.breakdown_value,
            "steps": l.steps.iter().map(|s| json!({
                "order": s.order,
                "name": s.name,
                "event": s.event,
                "optional": s.optional,
                "count": s.count,
                "average_conversion_time": s.average_conversion_time,
                "median_conversion_time": s.median_conversion_time,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "time_to_convert": r.time_to_convert.as_ref().map(|t| json!({
            "bins": t.bins.iter().map(|b| json!([b.start_seconds, b.actors])).collect::<Vec<_>>(),
            "average_conversion_time": t.average_conversion_time,
        })),
        "trends": r.trends.iter().map(|l| json!({
            "breakdown_value": l.breakdown_value,
            "data": l.data.iter().map(|p| json!({
                "label": p.label,
                "reached_from_step_count": p.reached_from_step_count,
                "reached_to_step_count": p.reached_to_step_count,
                "conversion_rate": p.conversion_rate,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// Runs `herd query retention`.
pub(crate) async fn retention(args: RetentionArgs) -> anyhow::Result<()> {
    let entity = |event: &str| proto::RetentionEntity {
        event: event.to_string(),
        filters: None,
    };
    let request = proto::RetentionRequest {
        target: Some(entity(&args.target)),
        returning: Some(entity(&args.returning)),
        period: interval(args.period) as i32,
        periods: args.periods,
        retention_type: match args.retention_type {
            RetentionTypeArg::Recurring => proto::RetentionType::Recurring,
            RetentionTypeArg::FirstTime => proto::RetentionType::FirstTime,
        } as i32,
        aggregation_group_type: args.group_type.clone().unwrap_or_default(),
        breakdown: breakdown(&args.breakdown, 0),
        date_to: args.to.clone(),
        timezone: args.tz.clone(),
        week_start: proto::WeekStart::Sunday as i32,
        filters: filters(&args.filter)?,
        explain: args.explain,
    };
    let mut client = InsightsServiceClient::new(channel(&args.client).await?);
    let r = client
        .retention(authorized(&args.client, request)?)
        .await
        .map_err(status_error)?
        .into_inner();
    if args.explain {
        print!("{}", r.plan);
        return Ok(());
    }
    if args.client.format == Format::Json {
        let doc = json!({
            "timezone": r.timezone,
            "date_from": micros_rfc3339(r.date_from_unix_micros),
            "date_to": micros_rfc3339(r.date_to_unix_micros),
            "labels": r.labels,
            "cohorts": r.cohorts.iter().map(|c| json!({
                "label": c.label,
                "date": c.date,
                "breakdown_value": c.breakdown_value,
                "values": c.values,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    print!("{:<12}", "cohort");
    for l in &r.labels {
        print!("  {l:>8}");
    }
    println!();
    for c in &r.cohorts {
        let head = match &c.breakdown_value {
            Some(b) => format!("{} [{b}]", c.date),
            None => c.date.clone(),
        };
        print!("{head:<12}");
        for v in &c.values {
            print!("  {v:>8}");
        }
        println!();
    }
    Ok(())
}
