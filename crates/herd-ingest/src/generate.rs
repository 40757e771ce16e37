//! `herd generate`: a deterministic PostHog-like event stream of any size.
//!
//! Same seed and sizes → the same events, uuids included. The model:
//! - `users` (default events/50) each belong to one company (`$group_0`, default users/20
//!   companies); companies own 1–5 projects (`$group_1`, ≈3 on average); a sparse `team` type
//!   (`$group_2`) is on ~5 % of events.
//! - Every user has a first day; from it, some walk the funnel `$pageview → signed_up →
//!   created_project → upgraded_plan` over days (55 % sign up, half of those create a project,
//!   30 % of those upgrade), each step preceded by a `$pageview`. Steps after the last day are
//!   never emitted, so conversion is partial.
//! - The rest of each day's quota is ~30 event names with a Zipf-like skew (`$pageview` first).
//! - A company or project is `$groupidentify`'d the first time it appears (`plan`, `industry`,
//!   `employees` / `name`); an upgrade may move its company's plan up, with a new identify.
//! - Properties carry `$browser`, `$current_url`, the company's current `plan`, `$groups`.
//!
//! Days are generated in order; within a day rows are not sorted (the loader orders each batch).

use std::sync::Arc;

use arrow::array::{FixedSizeBinaryBuilder, StringBuilder, TimestampMicrosecondArray};
use chrono::NaiveDate;
use herd_core::{GroupTypeMapping, MAX_GROUP_TYPES};
use serde_json::Value;

use crate::bulk::SourceRows;
use crate::{Error, Result};

const DAY_US: i64 = 86_400_000_000;
const PLANS: [&str; 4] = ["free", "startup", "growth", "enterprise"];
const INDUSTRIES: [&str; 8] = [
    "software",
    "fintech",
    "health",
    "retail",
    "media",
    "education",
    "logistics",
    "gaming",
];
const BROWSERS: [&str; 5] = ["Chrome", "Safari", "Firefox", "Edge", "Opera"];
const FILLER: [&str; 27] = [
    "$pageview",
    "$autocapture",
    "$pageleave",
    "viewed_dashboard",
    "clicked_button",
    "searched",
    "invited_teammate",
    "created_insight",
    "viewed_insight",
    "logged_in",
    "opened_settings",
    "exported_csv",
    "shared_link",
    "commented",
    "uploaded_file",
    "created_dashboard",
    "edited_profile",
    "viewed_pricing",
    "started_trial",
    "connected_integration",
    "ran_query",
    "created_alert",
    "dismissed_banner",
    "opened_docs",
    "submitted_feedback",
    "$rageclick",
    "$exception",
];

/// Sizes and seed of a dataset.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Events to generate, `$groupidentify` included.
    pub events: u64,
    /// Seed.
    pub seed: u64,
    /// Users (default events/50).
    pub users: Option<u64>,
    /// Companies (default users/20).
    pub companies: Option<u64>,
    /// Days (default 90).
    pub days: u32,
    /// First day (default 2024-01-01).
    pub start: NaiveDate,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            events: 1_000_000,
            seed: 42,
            users: None,
            companies: None,
            days: 90,
            start: NaiveDate::from_ymd_opt(2024, 1, 1).unwrap_or_default(),
        }
    }
}

/// splitmix64: a stateless hash so each user's journey is independent of generation order.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A small deterministic stream (splitmix64 over a counter).
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        mix(self.0)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    SignedUp,
    CreatedProject,
    UpgradedPlan,
}

#[derive(Debug, Clone)]
struct Company {
    plan: u8,
    identified: bool,
    projects_identified: u8,
    /// Timestamp of its last `$groupidentify`: each one is later than the one before, so
    /// merges in event-time order give the order they were generated in.
    last_identify: i64,
}

/// The generator: call [`Generator::next_batch`] until it returns `None`.
#[derive(Debug)]
pub struct Generator {
    opts: GenerateOptions,
    users: u64,
    companies: Vec<Company>,
    /// Journey steps per day: (user, step).
    journeys: Vec<Vec<(u32, Step)>>,
    rng: Rng,
    start_us: i64,
    day: u32,
    journey_cursor: usize,
    emitted_today: u64,
    emitted: u64,
    filler_cdf: Vec<f64>,
}

/// Rows under construction.
struct Rows {
    uuid: FixedSizeBinaryBuilder,
    event: StringBuilder,
    distinct_id: StringBuilder,
    timestamp: Vec<i64>,
    properties: StringBuilder,
    groups: [StringBuilder; MAX_GROUP_TYPES],
}

impl Rows {
    fn new(cap: usize) -> Self {
        Self {
            uuid: FixedSizeBinaryBuilder::with_capacity(cap, 16),
            event: StringBuilder::with_capacity(cap, cap * 12),
            distinct_id: StringBuilder::with_capacity(cap, cap * 12),
            timestamp: Vec::with_capacity(cap),
            properties: StringBuilder::with_capacity(cap, cap * 300),
            groups: std::array::from_fn(|_| StringBuilder::with_capacity(cap, cap * 8)),
        }
    }
    fn len(&self) -> usize {
        self.timestamp.len()
    }
}

impl Generator {
    /// Rows per batch.
    pub const BATCH: usize = 64 * 1024;

    /// A generator for these options.
    pub fn new(opts: GenerateOptions) -> Result<Self> {
        if opts.days == 0 {
            return Err(Error::BadRequest("--days must be at least 1".into()));
        }
        let users = opts.users.unwrap_or(opts.events / 50).max(1);
        let n_companies = opts.companies.unwrap_or(users / 20).max(1);
        if users > u32::MAX as u64 || n_companies > u32::MAX as u64 {
            return Err(Error::BadRequest(
                "at most 4 billion users and companies".into(),
            ));
        }
        let days = opts.days as u64;
        let seed = mix(opts.seed);
        let mut journeys: Vec<Vec<(u32, Step)>> = vec![Vec::new(); opts.days as usize];
        for u in 0..users {
            let h = |salt: u64| mix(seed ^ mix(u.wrapping_mul(31).wrapping_add(salt)));
            let first = h(1) % days;
            if h(2) % 100 >= 55 {
                continue;
            }
            let signup = first + h(3) % 4;
            let mut push = |day: u64, step| {
                if day < days {
                    journeys[day as usize].push((u as u32, step));
                }
            };
            push(signup, Step::SignedUp);
            if h(4) % 100 < 50 {
                let created = signup + h(5) % 7;
                push(created, Step::CreatedProject);
                if h(6) % 100 < 30 {
                    push(created + 1 + h(7) % 30, Step::UpgradedPlan);
                }
            }
        }
        let mut rng = Rng(seed);
        let companies = (0..n_companies)
            .map(|_| {
                let r = rng.below(100);
                let plan = match r {
                    0..50 => 0,
                    50..75 => 1,
                    75..90 => 2,
                    _ => 3,
                };
                Company {
                    plan,
                    identified: false,
                    projects_identified: 0,
                    last_identify: i64::MIN,
                }
            })
            .collect();
        // Zipf-like weights, $pageview boosted.
        let weights: Vec<f64> = (0..FILLER.len())
            .map(|i| {
                if i == 0 {
                    6.0
                } else {
                    1.0 / ((i + 1) as f64).powf(1.1)
                }
            })
            .collect();
        let sum: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let filler_cdf = weights
            .iter()
            .map(|w| {
                acc += w / sum;
                acc
            })
            .collect();
        let start_us = opts
            .start
            .and_hms_opt(0, 0, 0)
            .map_or(0, |t| t.and_utc().timestamp_micros());
        Ok(Self {
            opts,
            users,
            companies,
            journeys,
            rng,
            start_us,
            day: 0,
            journey_cursor: 0,
            emitted_today: 0,
            emitted: 0,
            filler_cdf,
        })
    }

    /// The group types of the generated data, in slot order.
    pub fn group_types() -> GroupTypeMapping {
        let mut m = GroupTypeMapping::default();
        for t in ["company", "project", "team"] {
            m.resolve_or_assign(t);
        }
        m
    }

    fn company_of(&self, user: u64) -> u64 {
        mix(mix(self.opts.seed) ^ mix(user.wrapping_mul(31).wrapping_add(8)))
            % self.companies.len() as u64
    }

    fn projects_of(company: u64) -> u64 {
        1 + mix(company ^ 0xABCD) % 5
    }

    fn quota(&self, day: u32) -> u64 {
        let days = self.opts.days as u64;
        self.opts.events / days + u64::from((day as u64) < self.opts.events % days)
    }

    /// The next batch of at most [`Generator::BATCH`] rows, `None` when done.
    pub fn next_batch(&mut self) -> Option<SourceRows> {
        let mut rows = Rows::new(Self::BATCH);
        while rows.len() < Self::BATCH - 8 && self.day < self.opts.days {
            let quota = self.quota(self.day);
            if self.emitted_today >= quota {
                self.day += 1;
                self.journey_cursor = 0;
                self.emitted_today = 0;
                continue;
            }
            let day_us = self.start_us + self.day as i64 * DAY_US;
            let left = quota - self.emitted_today;
            let before = rows.len();
            if let Some(&(user, step)) = self.journeys[self.day as usize].get(self.journey_cursor) {
                self.journey_cursor += 1;
                let ts = day_us + self.rng.below((DAY_US - 3_600_000_000) as u64) as i64;
                let view_ts = ts - 1_000_000 * (1 + self.rng.below(600)) as i64;
                self.emit(
                    &mut rows,
                    user as u64,
                    "$pageview",
                    view_ts.max(day_us),
                    left,
                );
                let name = match step {
                    Step::SignedUp => "signed_up",
                    Step::CreatedProject => "created_project",
                    Step::UpgradedPlan => "upgraded_plan",
                };
                let left = quota - self.emitted_today - (rows.len() - before) as u64;
                self.emit(&mut rows, user as u64, name, ts, left);
                if step == Step::UpgradedPlan {
                    let c = self.company_of(user as u64) as usize;
                    if self.companies[c].plan < 3 && self.rng.below(2) == 0 {
                        self.companies[c].plan += 1;
                        let left = quota - self.emitted_today - (rows.len() - before) as u64;
                        self.identify_company(&mut rows, c as u64, ts + 1, left);
                    }
                }
            } else {
                // Active users so far, skewed towards early (long-lived) ones.
                let active = ((self.users * (self.day as u64 + 1)) / self.opts.days as u64).max(1);
                let r = self.rng.unit();
                let user = ((r * r) * active as f64) as u64 % self.users;
                let x = self.rng.unit();
                let idx = self.filler_cdf.iter().position(|c| x <= *c).unwrap_or(0);
                let ts = day_us + self.rng.below(DAY_US as u64) as i64;
                self.emit(&mut rows, user, FILLER[idx], ts, left);
            }
            self.emitted_today += (rows.len() - before) as u64;
            self.emitted += (rows.len() - before) as u64;
        }
        (rows.len() > 0).then(|| self.finish(rows))
    }

    fn uuid(&mut self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.rng.next().to_le_bytes());
        b[8..].copy_from_slice(&self.rng.next().to_le_bytes());
        *uuid::Builder::from_random_bytes(b).into_uuid().as_bytes()
    }

    fn push_row(
        &mut self,
        rows: &mut Rows,
        event: &str,
        distinct_id: &str,
        ts: i64,
        properties: &str,
        groups: [&str; 3],
    ) {
        let id = self.uuid();
        let _ = rows.uuid.append_value(id);
        rows.event.append_value(event);
        rows.distinct_id.append_value(distinct_id);
        rows.timestamp.push(ts);
        rows.properties.append_value(properties);
        for (slot, b) in rows.groups.iter_mut().enumerate() {
            b.append_value(groups.get(slot).copied().unwrap_or(""));
        }
    }

    fn identify_company(&mut self, rows: &mut Rows, c: u64, ts: i64, left: u64) {
        if left == 0 {
            return;
        }
        let ts = ts.max(self.companies[c as usize].last_identify.saturating_add(1));
        self.companies[c as usize].last_identify = ts;
        let company = &self.companies[c as usize];
        let industry = INDUSTRIES[(mix(c ^ 0x1D) % INDUSTRIES.len() as u64) as usize];
        let employees = 1u64 << (1 + mix(c ^ 0xE) % 13);
        let props = format!(
            r#"{{"$group_type":"company","$group_key":"id:{c}","$group_set":{{"plan":"{}","industry":"{industry}","employees":{employees}}},"$lib":"herd-generate"}}"#,
            PLANS[company.plan as usize]
        );
        self.push_row(
            rows,
            "$groupidentify",
            &format!("$company_id:{c}"),
            ts,
            &props,
            ["", "", ""],
        );
        self.companies[c as usize].identified = true;
    }

    /// Emits one event of `user` (after any `$groupidentify` its groups need), within `left`.
    fn emit(&mut self, rows: &mut Rows, user: u64, event: &str, ts: i64, mut left: u64) {
        if left == 0 {
            return;
        }
        let c = self.company_of(user);
        if !self.companies[c as usize].identified {
            self.identify_company(rows, c, ts - 2_000_000, left);
            left -= 1;
        }
        let k = mix(user ^ 0x77) % Self::projects_of(c);
        if left > 1 && (self.companies[c as usize].projects_identified as u64) <= k {
            let props = format!(
                r#"{{"$group_type":"project","$group_key":"p{c}-{k}","$group_set":{{"name":"Project {k} of {c}"}},"$lib":"herd-generate"}}"#
            );
            self.push_row(
                rows,
                "$groupidentify",
                &format!("$project_p{c}-{k}"),
                ts - 1_000_000,
                &props,
                ["", "", ""],
            );
            self.companies[c as usize].projects_identified = (k + 1) as u8;
            left -= 1;
        }
        if left == 0 {
            return;
        }
        let team = (self.rng.below(100) < 5).then(|| format!("t{c}-{}", user % 3));
        let company = format!("id:{c}");
        let project = format!("p{c}-{k}");
        let browser = BROWSERS[(mix(user ^ 0xB) % BROWSERS.len() as u64) as usize];
        let path = match event {
            "$pageview" | "$pageleave" => {
                ["home", "pricing", "docs", "dashboard", "settings"][(self.rng.below(5)) as usize]
            }
            other => other.trim_start_matches('$'),
        };
        let plan = PLANS[self.companies[c as usize].plan as usize];
        let team_json = match &team {
            Some(t) => format!(r#","team":"{t}""#),
            None => String::new(),
        };
        let team_slot = match &team {
            Some(t) => format!(r#","$group_2":"{t}""#),
            None => String::new(),
        };
        let props = format!(
            r#"{{"$browser":"{browser}","$current_url":"https://app.example.com/{path}","$lib":"herd-generate","plan":"{plan}","$groups":{{"company":"{company}","project":"{project}"{team_json}}},"$group_0":"{company}","$group_1":"{project}"{team_slot}}}"#
        );
        let distinct_id = format!("user-{user}");
        self.push_row(
            rows,
            event,
            &distinct_id,
            ts,
            &props,
            [&company, &project, team.as_deref().unwrap_or("")],
        );
    }

    fn finish(&mut self, mut rows: Rows) -> SourceRows {
        let groups = rows.groups.each_mut().map(|b| b.finish());
        SourceRows {
            uuid: rows.uuid.finish(),
            event: rows.event.finish(),
            distinct_id: rows.distinct_id.finish(),
            timestamp: TimestampMicrosecondArray::from(std::mem::take(&mut rows.timestamp))
                .with_timezone("UTC"),
            properties: rows.properties.finish(),
            groups: Some((groups, Self::group_types())),
            created_at: None,
            prepared: None,
        }
    }

    /// Events emitted so far.
    pub fn emitted(&self) -> u64 {
        self.emitted
    }
}

/// Writes generated batches as a plain PostHog-style export: `events/part-NNNNN.parquet` with
/// `uuid` (text), `event`, `distinct_id`, `timestamp`, `properties`, plus `person_id` and
/// `elements_chain` as real exports have; and `groups.parquet` at the end.
#[derive(Debug)]
pub struct Exporter {
    dir: std::path::PathBuf,
    part: usize,
    rows_in_part: usize,
    writer: Option<parquet::arrow::ArrowWriter<std::fs::File>>,
}

/// Rows per export file.
const EXPORT_PART_ROWS: usize = 1 << 20;

fn export_schema() -> arrow::datatypes::SchemaRef {
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    Arc::new(Schema::new(vec![
        Field::new("uuid", DataType::Utf8, false),
        Field::new("event", DataType::Utf8, false),
        Field::new("distinct_id", DataType::Utf8, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("properties", DataType::Utf8, false),
        Field::new("person_id", DataType::Utf8, false),
        Field::new("elements_chain", DataType::Utf8, false),
    ]))
}

fn io_err(path: &std::path::Path, e: impl std::fmt::Display) -> Error {
    Error::Source {
        file: path.display().to_string(),
        reason: e.to_string(),
    }
}

impl Exporter {
    /// An exporter into `dir` (created).
    pub fn new(dir: &std::path::Path) -> Result<Self> {
        std::fs::create_dir_all(dir.join("events")).map_err(|e| io_err(dir, e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            part: 0,
            rows_in_part: 0,
            writer: None,
        })
    }

    fn props() -> parquet::file::properties::WriterProperties {
        parquet::file::properties::WriterProperties::builder()
            .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
            .set_max_row_group_row_count(Some(EXPORT_PART_ROWS))
            .build()
    }

    /// Appends one batch.
    pub fn write(&mut self, rows: &SourceRows) -> Result<()> {
        use arrow::array::{ArrayRef, RecordBatch, StringArray};
        if self.writer.is_none() {
            let path = self
                .dir
                .join(format!("events/part-{:05}.parquet", self.part));
            let file = std::fs::File::create(&path).map_err(|e| io_err(&path, e))?;
            let w =
                parquet::arrow::ArrowWriter::try_new(file, export_schema(), Some(Self::props()))
                    .map_err(|e| io_err(&path, e))?;
            self.writer = Some(w);
        }
        let uuids: StringArray = (0..rows.len())
            .map(|i| {
                let b: [u8; 16] = rows.uuid.value(i).try_into().unwrap_or([0; 16]);
                Some(uuid::Uuid::from_bytes(b).to_string())
            })
            .collect();
        let persons: StringArray = rows
            .distinct_id
            .iter()
            .map(|d| {
                d.map(|d| uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, d.as_bytes()).to_string())
            })
            .collect();
        let chains: StringArray = (0..rows.len()).map(|_| Some("")).collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(uuids),
            Arc::new(rows.event.clone()),
            Arc::new(rows.distinct_id.clone()),
            Arc::new(rows.timestamp.clone()),
            Arc::new(rows.properties.clone()),
            Arc::new(persons),
            Arc::new(chains),
        ];
        let batch = RecordBatch::try_new(export_schema(), columns)?;
        let dir = self.dir.clone();
        if let Some(w) = self.writer.as_mut() {
            w.write(&batch).map_err(|e| io_err(&dir, e))?;
        }
        self.rows_in_part += rows.len();
        if self.rows_in_part >= EXPORT_PART_ROWS {
            self.close_part()?;
        }
        Ok(())
    }

    fn close_part(&mut self) -> Result<()> {
        if let Some(w) = self.writer.take() {
            w.close().map_err(|e| io_err(&self.dir, e))?;
            self.part += 1;
            self.rows_in_part = 0;
        }
        Ok(())
    }

    /// Closes the last part and writes `groups.parquet` from (type, key, properties, created_at).
    pub fn finish(mut self, groups: &[(String, String, Value, i64)]) -> Result<()> {
        use arrow::array::{ArrayRef, RecordBatch, StringArray};
        use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
        self.close_part()?;
        let schema = Arc::new(Schema::new(vec![
            Field::new("group_type", DataType::Utf8, false),
            Field::new("group_key", DataType::Utf8, false),
            Field::new("group_properties", DataType::Utf8, false),
            Field::new(
                "created_at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(
                groups
                    .iter()
                    .map(|g| Some(g.0.clone()))
                    .collect::<StringArray>(),
            ),
            Arc::new(
                groups
                    .iter()
                    .map(|g| Some(g.1.clone()))
                    .collect::<StringArray>(),
            ),
            Arc::new(
                groups
                    .iter()
                    .map(|g| Some(g.2.to_string()))
                    .collect::<StringArray>(),
            ),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(groups.iter().map(|g| g.3))
                    .with_timezone("UTC"),
            ),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        let path = self.dir.join("groups.parquet");
        let file = std::fs::File::create(&path).map_err(|e| io_err(&path, e))?;
        let mut w = parquet::arrow::ArrowWriter::try_new(file, schema, Some(Self::props()))
            .map_err(|e| io_err(&path, e))?;
        w.write(&batch).map_err(|e| io_err(&path, e))?;
        w.close().map_err(|e| io_err(&path, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(opts: GenerateOptions) -> Vec<SourceRows> {
        let mut g = Generator::new(opts).expect("generator");
        std::iter::from_fn(|| g.next_batch()).collect()
    }

    #[test]
    fn exact_count_deterministic_and_shaped_like_product_data() {
        let opts = GenerateOptions {
            events: 20_000,
            seed: 7,
            ..Default::default()
        };
        let a = all(opts.clone());
        let b = all(opts);
        let n: usize = a.iter().map(SourceRows::len).sum();
        assert_eq!(n, 20_000);
        let uuids = |v: &[SourceRows]| -> Vec<Vec<u8>> {
            v.iter()
                .flat_map(|r| {
                    (0..r.len())
                        .map(|i| r.uuid.value(i).to_vec())
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        assert_eq!(uuids(&a), uuids(&b), "same seed, same uuids");
        let other = all(GenerateOptions {
            events: 20_000,
            seed: 8,
            ..Default::default()
        });
        assert_ne!(uuids(&a), uuids(&other));
        let mut counts = std::collections::HashMap::<String, usize>::new();
        for r in &a {
            for e in r.event.iter().flatten() {
                *counts.entry(e.to_string()).or_default() += 1;
            }
        }
        let top = counts
            .iter()
            .max_by_key(|(_, c)| **c)
            .map(|(e, _)| e.clone());
        assert_eq!(top.as_deref(), Some("$pageview"));
        for e in [
            "signed_up",
            "created_project",
            "upgraded_plan",
            "invited_teammate",
            "$groupidentify",
        ] {
            assert!(counts.get(e).copied().unwrap_or(0) > 0, "{e} present");
        }
        assert!(counts["signed_up"] > counts["created_project"]);
        assert!(counts["created_project"] > counts["upgraded_plan"]);
        assert!(counts.len() >= 25, "~30 names, got {}", counts.len());
        // Timestamps stay inside the 90 days.
        let lo = GenerateOptions::default()
            .start
            .and_hms_opt(0, 0, 0)
            .expect("t")
            .and_utc()
            .timestamp_micros();
        for r in &a {
            for t in r.timestamp.values() {
                assert!(*t >= lo && *t < lo + 90 * DAY_US);
            }
        }
    }
}
