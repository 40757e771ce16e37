//! herd-query: herd's insights as DataFusion plans.
//!
//! [`QueryEngine`] (in `engine`) owns the DataFusion session and the tables insights read: a
//! project's events (files + write buffer, one snapshot) and its current groups. Each insight
//! has its folder: [`trends`], [`funnel`], [`retention`] (request and answer types, resolve,
//! plan, fold); what they share sits beside them: [`filters`] (property filters, breakdown
//! and group columns), [`calendar`] and [`bucket`] (time buckets), [`unique`] (exact unique
//! counts), `rows` (what every insight does first: events in range, names, actor, group joins,
//! filters), the session's planner for herd's plan nodes. One plan per request, built with
//! DataFusion's APIs; no user input is ever spliced into SQL text.

mod actors;
mod arrays;
pub mod bucket;
pub mod calendar;
pub mod cluster;
mod engine;
mod error;
pub mod event_mask;
mod explain;
pub mod files;
pub mod filters;
pub mod funnel;
mod number_set;
mod params;
mod planner;
pub mod related;
pub mod retention;
mod rows;
pub mod trends;
pub mod unique;

pub(crate) use arrays::{column_as, strings};
pub use calendar::{Interval, WeekStart};
pub use engine::{Events, QueryEngine, STORE_URL, query_events_schema};
pub use error::{Error, Result};
pub use explain::{EXPLAIN_ENV, analyze};
pub(crate) use explain::{Explain, collect, record_plans, show_plans};
pub use filters::{BoolOp, Operator, PropertyFilter, PropertyGroup, PropertySource};
pub use funnel::{
    Attribution, FunnelExclusion, FunnelLine, FunnelQuery, FunnelResult, FunnelStep,
    FunnelStepResult, FunnelTrendPoint, FunnelTrendsLine, FunnelViz, Order, TimeToConvert, Window,
    WindowUnit,
};
pub use retention::{Cohort, RetentionEntity, RetentionQuery, RetentionResult, RetentionType};
pub use trends::{
    Breakdown, Display, Math, MathSpec, Series, SeriesResult, TrendsQuery, TrendsResult,
};
