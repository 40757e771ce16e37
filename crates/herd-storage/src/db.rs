//! [`Db`]: the event store of one data folder — projects, their tables, the WAL, the flusher.
//!
//! ```text
//!  ingest ──lock(project)──▶ ProjectGuard: group types, dedup, group state (undo on drop)
//!                                   │ commit(events, group rows, warnings)
//!                                   ▼
//!                   WAL append (ticket) + pending rows ──▶ wait_durable(ticket)
//!                                   ──▶ publish: pending rows up to the durable ticket → active buffer ──▶ 200
//!  flusher: rotate WAL (under the ingest gate) ▶ publish ▶ freeze active buffers
//!           ▶ Parquet per day ▶ catalog commit ▶ drop frozen ▶ delete old WAL segments
//! ```
//!
//! Visibility: readers see the active and frozen buffers only, so a row becomes visible once
//! its WAL record is durable, before its request is acknowledged, and a row whose WAL write
//! failed is never seen. When the WAL fails (a full disk), [`Db::heal`] waits for the disk to
//! take writes again, then drops the rows of the lost tickets and undoes what they changed in
//! the ingest state (dedup, group state, actor numbers), newest first, so a client's retry is
//! taken as new. Backpressure: past [`DbConfig::max_buffer_bytes`] buffered, capture is refused
//! with [`Error::BufferFull`] until a flush succeeds.
//!
//! Deduplication: within a project, an event whose `uuid` was already stored for the same UTC
//! day of `timestamp` is dropped before it reaches the WAL. Each day's uuid set is loaded lazily
//! from that day's files and buffers (so it is exact across restarts) and the least recently
//! used days are evicted past a memory cap. A request made only of duplicates still waits until
//! everything queued before it is durable, so a retry is never acknowledged ahead of the
//! original's fsync.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use bytes::Bytes;
use futures::StreamExt;
use herd_core::groups::{groups_batch, groups_from_batch};
use herd_core::schema::{events_col, groups_schema};
use herd_core::time::{day_of, day_string};
use herd_core::warning::{warnings_batch, warnings_from_batch, warnings_schema};
use herd_core::{GroupRow, GroupState, GroupTypeMapping, GroupTypeSlot, IngestWarning, ProjectId};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard, RwLock as AsyncRwLock, RwLockReadGuard};

use crate::buffer::{Buffer, split_by_day};
use crate::catalog::{self, Catalog, FileEntry};
use crate::numbers::{ActorNumbers, Mark, NumberRow, numbers_batch, numbers_schema};
use crate::parquet_files::{self, decode_uuids, uuids_of};
use crate::projects::{self, NewProject, Project};
use crate::record::WalRecord;
use crate::store::Storage;
use crate::wal::Wal;
use crate::{Error, Result, layout};

mod compact;
pub use compact::CompactStats;

/// Tunables of the store.
#[derive(Debug, Clone)]
pub struct DbConfig {
    /// Folder of the write-ahead log (local disk).
    pub wal_dir: PathBuf,
    /// Flush a project's buffer once its oldest row is this old.
    pub flush_interval: Duration,
    /// Flush once a project's buffer holds this many events.
    pub flush_rows: usize,
    /// Keep at most this many uuids in the dedup index before evicting whole days.
    pub dedup_max_uuids: usize,
    /// Refuse new writes ([`Error::BufferFull`]) while the write buffers of all projects hold
    /// more than this many bytes (flushes failing or falling behind).
    pub max_buffer_bytes: usize,
}

impl DbConfig {
    /// Defaults with the given WAL folder.
    pub fn new(wal_dir: PathBuf) -> Self {
        Self {
            wal_dir,
            flush_interval: Duration::from_secs(5),
            flush_rows: 500_000,
            dedup_max_uuids: 20_000_000,
            max_buffer_bytes: DEFAULT_MAX_BUFFER_BYTES,
        }
    }
}

/// Default of [`DbConfig::max_buffer_bytes`]: 1 GiB.
pub const DEFAULT_MAX_BUFFER_BYTES: usize = 1 << 30;

/// Everything a reader needs to see a project's tables at one instant.
#[derive(Debug, Clone)]
pub struct TableSnapshot {
    /// The committed files.
    pub catalog: Arc<Catalog>,
    /// Acknowledged events not yet in a file (events schema).
    pub buffered_events: Vec<RecordBatch>,
    /// Groups rows not yet in a file.
    pub buffered_groups: Vec<GroupRow>,
    /// Ingestion warnings not yet in a file.
    pub buffered_warnings: Vec<IngestWarning>,
}

#[derive(Debug, Default)]
struct Tables {
    catalog: Arc<Catalog>,
    active: Buffer,
    frozen: Vec<Buffer>,
    /// Committed rows whose WAL record is not known durable yet, in ticket order: not
    /// visible to readers (see the module doc).
    pending: std::collections::VecDeque<Pending>,
    /// The catalog's events files by day partition (positions in `catalog.events`), kept
    /// with the catalog by [`Tables::set_catalog`]: a day's files without a scan of them all.
    day_files: HashMap<String, Vec<usize>>,
}

/// One request's rows waiting for their WAL ticket, with the undo log of what the request
/// changed in the ingest state (applied if the ticket is lost).
#[derive(Debug)]
struct Pending {
    ticket: u64,
    events: Option<RecordBatch>,
    /// First and last day of `events`.
    days: (i32, i32),
    /// Arrow's memory count of `events` (taken once: capture checks the total per request).
    bytes: usize,
    groups: Vec<GroupRow>,
    warnings: Vec<IngestWarning>,
    numbers: Vec<NumberRow>,
    undo: Vec<Undo>,
}

impl Tables {
    /// Swaps in a new catalog version.
    fn set_catalog(&mut self, catalog: Arc<Catalog>) {
        self.day_files.clear();
        for (i, f) in catalog.events.iter().enumerate() {
            if let Some(day) = &f.day {
                self.day_files.entry(day.clone()).or_default().push(i);
            }
        }
        self.catalog = catalog;
    }

    /// The events files of one day partition.
    fn files_of_day(&self, day: &str) -> Vec<FileEntry> {
        self.day_files.get(day).map_or_else(Vec::new, |at| {
            at.iter()
                .filter_map(|&i| self.catalog.events.get(i).cloned())
                .collect()
        })
    }

    /// Buffered and pending events batches that may hold rows of `day` (durable or not:
    /// their uuids count for dedup all the same).
    fn batches_of_day(&self, day: i32) -> Vec<RecordBatch> {
        let buffered = self
            .frozen
            .iter()
            .chain(std::iter::once(&self.active))
            .flat_map(|b| b.events.iter().zip(&b.days));
        let pending = self
            .pending
            .iter()
            .filter_map(|p| p.events.as_ref().map(|e| (e, &p.days)));
        buffered
            .chain(pending)
            .filter(|(_, (first, last))| (*first..=*last).contains(&day))
            .map(|(b, _)| b.clone())
            .collect()
    }

    /// Moves the pending rows with tickets up to `durable` to the active buffer.
    fn publish(&mut self, durable: u64) {
        while self.pending.front().is_some_and(|p| p.ticket <= durable) {
            if let Some(p) = self.pending.pop_front() {
                self.active.push(p.events, p.groups, p.warnings, p.numbers);
            }
        }
    }

    fn buffered_bytes(&self) -> usize {
        self.active.bytes
            + self.frozen.iter().map(|b| b.bytes).sum::<usize>()
            + self.pending.iter().map(|p| p.bytes).sum::<usize>()
    }
}

/// uuids are random (v4) or random in their low bits (v7): folding the two halves is a good
/// enough hash, and much cheaper than SipHash on the hot path of every ingested event.
#[derive(Debug, Default, Clone, Copy)]
struct UuidHasher(u64);

impl std::hash::Hasher for UuidHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(b))
                .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = ((v as u64) ^ ((v >> 64) as u64)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type UuidSet = HashSet<u128, std::hash::BuildHasherDefault<UuidHasher>>;

#[derive(Debug, Default)]
struct DaySet {
    uuids: UuidSet,
    last_used: u64,
}

#[derive(Debug, Default)]
struct DedupIndex {
    days: HashMap<i32, DaySet, foldhash::fast::FixedState>,
    total: usize,
    clock: u64,
}

#[derive(Debug)]
struct ProjectState {
    mapping: GroupTypeMapping,
    groups: HashMap<(u8, String), GroupState>,
    dedup: DedupIndex,
    numbers: ActorNumbers,
    /// Rate limit of ingestion warnings, per kind.
    warning_limits: HashMap<String, WarningBucket>,
}

/// Ingestion warnings of one kind a project may raise at once before the rate limit applies.
pub const WARNING_BURST: f64 = 100.0;
/// Ingestion warnings of one kind a project may raise per second once its burst is spent.
pub const WARNING_RATE_PER_SEC: f64 = 1.0;

/// A token bucket for one kind of ingestion warning (PostHog limits its ingestion warnings
/// per team and type the same way): a bad client repeating one mistake records a few rows
/// and a count, not one row per event.
#[derive(Debug)]
struct WarningBucket {
    tokens: f64,
    /// µs of the last refill.
    last: i64,
    /// Warnings dropped since the last one recorded.
    suppressed: u64,
}

impl WarningBucket {
    fn admit(&mut self, now: i64) -> Option<u64> {
        let elapsed = now.saturating_sub(self.last).max(0) as f64 / 1e6;
        self.tokens = (self.tokens + elapsed * WARNING_RATE_PER_SEC).min(WARNING_BURST);
        self.last = self.last.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// One project: its descriptor, its ingest-side state and its visible tables.
#[derive(Debug)]
pub struct ProjectHandle {
    project: Project,
    state: Arc<AsyncMutex<ProjectState>>,
    tables: parking_lot::Mutex<Tables>,
}

impl ProjectHandle {
    /// The project.
    pub fn project(&self) -> &Project {
        &self.project
    }
}

#[derive(Debug)]
enum Undo {
    Uuid(i32, u128),
    /// Boxed: the undo log holds a uuid entry per event, and this variant is large.
    Group(Box<((u8, String), Option<GroupState>)>),
    /// Actor numbers given after this mark.
    Numbers(Box<Mark>),
}

/// Exclusive access to one project's ingest state for the length of one request.
///
/// Changes made through it (dedup entries, group state) are undone if it is dropped without
/// [`ProjectGuard::commit`], so a request that fails never half-applies.
#[derive(Debug)]
pub struct ProjectGuard<'a> {
    db: &'a Db,
    handle: Arc<ProjectHandle>,
    state: OwnedMutexGuard<ProjectState>,
    _gate: RwLockReadGuard<'a, ()>,
    undo: Vec<Undo>,
    /// Dedup clock when the guard was taken: days used since then are never evicted, so one
    /// request always sees its own uuids.
    start_clock: u64,
}

impl ProjectGuard<'_> {
    /// The project.
    pub fn project(&self) -> &Project {
        &self.handle.project
    }

    /// The project's group types.
    pub fn mapping(&self) -> &GroupTypeMapping {
        &self.state.mapping
    }

    /// The slot of a group type, assigning and durably persisting a new one when needed.
    pub async fn resolve_group_type(&mut self, group_type: &str) -> Result<GroupTypeSlot> {
        if let Some(index) = self.state.mapping.index_of(group_type) {
            return Ok(GroupTypeSlot::Existing(index));
        }
        let mut next = self.state.mapping.clone();
        let slot = next.resolve_or_assign(group_type);
        if let GroupTypeSlot::Assigned(index) = slot {
            let bytes = serde_json::to_vec_pretty(&next.to_json())
                .map_err(|e| Error::corrupt("group_types.json", e.to_string()))?;
            self.db
                .storage
                .put_durable(
                    &layout::group_types_file(self.handle.project.id),
                    Bytes::from(bytes),
                )
                .await?;
            tracing::info!(
                project = self.handle.project.id,
                group_type,
                index,
                "new group type"
            );
            self.state.mapping = next;
        }
        Ok(slot)
    }

    /// Records `uuid` for its day; `false` when it was already stored (a duplicate).
    pub async fn insert_uuid(&mut self, uuid: u128, timestamp: i64) -> Result<bool> {
        let day = day_of(timestamp);
        self.ensure_day_loaded(day).await?;
        let dedup = &mut self.state.dedup;
        dedup.clock += 1;
        let clock = dedup.clock;
        let Some(set) = dedup.days.get_mut(&day) else {
            return Err(Error::corrupt(
                "dedup index",
                format!("day {day} not loaded"),
            ));
        };
        set.last_used = clock;
        if set.uuids.insert(uuid) {
            dedup.total += 1;
            self.undo.push(Undo::Uuid(day, uuid));
            Ok(true)
        } else {
            Ok(false)
        }
    }

    async fn ensure_day_loaded(&mut self, day: i32) -> Result<()> {
        if self.state.dedup.days.contains_key(&day) {
            return Ok(());
        }
        let uuids = self.db.load_day_uuids(&self.handle, day).await?;
        let dedup = &mut self.state.dedup;
        dedup.total += uuids.len();
        dedup.days.insert(
            day,
            DaySet {
                uuids,
                last_used: dedup.clock,
            },
        );
        // Evict the least recently used days past the cap, never one this request used.
        let start_clock = self.start_clock;
        while dedup.total > self.db.config.dedup_max_uuids {
            let Some((&victim, _)) = dedup
                .days
                .iter()
                .filter(|(d, s)| **d != day && s.last_used <= start_clock)
                .min_by_key(|(_, s)| s.last_used)
            else {
                break;
            };
            if let Some(set) = dedup.days.remove(&victim) {
                dedup.total -= set.uuids.len();
            }
        }
        Ok(())
    }

    /// Whether an ingestion warning of `kind` raised at `now` (µs) is recorded, under the
    /// project's rate limit ([`WARNING_BURST`], then [`WARNING_RATE_PER_SEC`]): `Some(n)` with
    /// the number of warnings of that kind suppressed since the last one recorded.
    pub fn admit_warning(&mut self, kind: &str, now: i64) -> Option<u64> {
        let limits = &mut self.state.warning_limits;
        // A lookup by `&str` first: no key allocated per warning once the kind is known.
        if let Some(bucket) = limits.get_mut(kind) {
            return bucket.admit(now);
        }
        let mut bucket = WarningBucket {
            tokens: WARNING_BURST,
            last: now,
            suppressed: 0,
        };
        let admitted = bucket.admit(now);
        limits.insert(kind.to_string(), bucket);
        admitted
    }

    /// The current state of a group.
    pub fn group(&self, index: u8, key: &str) -> Option<&GroupState> {
        self.state.groups.get(&(index, key.to_string()))
    }

    /// Replaces the current state of a group.
    pub fn set_group(&mut self, index: u8, key: &str, state: GroupState) {
        let k = (index, key.to_string());
        let old = self.state.groups.insert(k.clone(), state);
        self.undo.push(Undo::Group(Box::new((k, old))));
    }

    /// Numbers the actors of an events batch (undone with the guard's other changes unless
    /// it commits): the stored batch and the numbers it gave.
    fn numbered(
        &mut self,
        events: Option<RecordBatch>,
    ) -> Result<(Option<RecordBatch>, Vec<NumberRow>)> {
        let Some(batch) = events.filter(|b| b.num_rows() > 0) else {
            return Ok((None, Vec::new()));
        };
        let mark = self.state.numbers.mark();
        let mut new = Vec::new();
        let stored = self.state.numbers.number(&batch, &mut new)?;
        if !new.is_empty() {
            self.undo.push(Undo::Numbers(Box::new(mark)));
        }
        Ok((Some(stored), new))
    }

    /// Makes the request's rows part of the project: queues them on the WAL and adds them to
    /// the write buffer. Returns the WAL ticket to wait on before acknowledging.
    pub fn commit(
        &mut self,
        events: Option<RecordBatch>,
        groups: Vec<GroupRow>,
        warnings: Vec<IngestWarning>,
    ) -> Result<u64> {
        let events = events.filter(|b| b.num_rows() > 0);
        if events.is_none() && groups.is_empty() && warnings.is_empty() {
            self.undo.clear();
            return Ok(self.db.wal.last_live_ticket());
        }
        let (stored, numbers) = self.numbered(events.clone())?;
        let record = WalRecord {
            project: self.handle.project.id,
            events,
            groups,
            warnings,
        };
        let ticket = self.db.wal.append(&record.encode()?)?;
        let days = stored
            .as_ref()
            .map_or((i32::MAX, i32::MIN), crate::buffer::day_range);
        let bytes = stored
            .as_ref()
            .map_or(0, RecordBatch::get_array_memory_size);
        self.handle.tables.lock().pending.push_back(Pending {
            ticket,
            days,
            bytes,
            events: stored,
            groups: record.groups,
            warnings: record.warnings,
            numbers,
            undo: std::mem::take(&mut self.undo),
        });
        Ok(ticket)
    }
}

impl ProjectGuard<'_> {
    /// Adds rows to the write buffer without a WAL record: for bulk loads (backfill,
    /// generate) whose durability comes from re-reading their source from a checkpoint, where
    /// dedup makes re-processing exact, and for WAL replay. They reach Parquet at the next
    /// flush.
    pub fn commit_unlogged(
        &mut self,
        events: Option<RecordBatch>,
        groups: Vec<GroupRow>,
        warnings: Vec<IngestWarning>,
    ) -> Result<()> {
        let (stored, numbers) = self.numbered(events)?;
        self.undo.clear();
        self.handle
            .tables
            .lock()
            .active
            .push(stored, groups, warnings, numbers);
        Ok(())
    }
}

impl Drop for ProjectGuard<'_> {
    fn drop(&mut self) {
        self.state.undo(std::mem::take(&mut self.undo));
    }
}

impl ProjectState {
    /// Reverts the changes of an undo log, newest first.
    fn undo(&mut self, mut log: Vec<Undo>) {
        while let Some(undo) = log.pop() {
            match undo {
                Undo::Uuid(day, uuid) => {
                    if let Some(set) = self.dedup.days.get_mut(&day)
                        && set.uuids.remove(&uuid)
                    {
                        self.dedup.total -= 1;
                    }
                }
                Undo::Group(change) => match *change {
                    (key, Some(old)) => {
                        self.groups.insert(key, old);
                    }
                    (key, None) => {
                        self.groups.remove(&key);
                    }
                },
                Undo::Numbers(mark) => self.numbers.truncate(&mark),
            }
        }
    }
}

/// Day files a flush encodes and puts at once (at least; more on machines with more cores).
const FLUSH_PUTS_IN_FLIGHT: usize = 4;

/// First wait before a failed flush is tried again.
pub const FLUSH_RETRY_MIN: Duration = Duration::from_millis(500);
/// Longest wait between tries of a failing flush.
pub const FLUSH_RETRY_MAX: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct FlushFailure {
    since: Instant,
    last: Instant,
    attempts: u32,
    backoff: Duration,
    reason: String,
}

/// What a flush did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FlushStats {
    /// Events written to Parquet.
    pub events: usize,
    /// Files written.
    pub files: usize,
}

/// The event store of one data folder.
#[derive(Debug)]
pub struct Db {
    storage: Storage,
    wal: Wal,
    config: DbConfig,
    projects: parking_lot::RwLock<HashMap<ProjectId, Arc<ProjectHandle>>>,
    /// Held shared by ingestion, exclusively by a flush while it freezes buffers and rotates
    /// the WAL: every record in an old segment is then in a frozen buffer.
    gate: AsyncRwLock<()>,
    flush_lock: Arc<AsyncMutex<()>>,
    /// One compaction at a time ([`Db::compact_events`]).
    compact_lock: AsyncMutex<()>,
    /// Events files compaction took out of the catalog, with when, to delete once no query
    /// can still be reading them ([`Db::delete_retired`]).
    retired: parking_lot::Mutex<Vec<(Instant, String)>>,
    last_reload: parking_lot::Mutex<Option<Instant>>,
    /// The failure of the last flush, while flushes fail.
    flush_failure: parking_lot::Mutex<Option<FlushFailure>>,
    /// Exclusive lock on `<wal_dir>/LOCK`: one writing process per data folder.
    _lock: std::fs::File,
}

impl Db {
    /// Opens the store of the local folder `dir` with the default settings, its WAL in
    /// `dir/wal` (where `herd serve --data DIR` keeps it).
    pub async fn open_local(dir: &std::path::Path) -> Result<Arc<Db>> {
        let location = dir.to_str().ok_or_else(|| Error::InvalidLocation {
            location: dir.display().to_string(),
            reason: "not UTF-8".into(),
        })?;
        Self::open(Storage::open(location)?, DbConfig::new(dir.join("wal"))).await
    }

    /// Opens the store: loads projects, replays the WAL, and starts flushing what it replayed.
    pub async fn open(storage: Storage, config: DbConfig) -> Result<Arc<Db>> {
        std::fs::create_dir_all(&config.wal_dir)
            .map_err(|e| Error::io(format!("create WAL folder {}", config.wal_dir.display()), e))?;
        let lock_path = config.wal_dir.join("LOCK");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(format!("open {}", lock_path.display()), e))?;
        lock.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => Error::Locked(storage.location().to_string()),
            std::fs::TryLockError::Error(e) => {
                Error::io(format!("lock {}", lock_path.display()), e)
            }
        })?;
        let (wal, replayed) = Wal::open(&config.wal_dir)?;
        let db = Arc::new(Db {
            storage,
            wal,
            config,
            projects: Default::default(),
            gate: AsyncRwLock::new(()),
            flush_lock: Arc::new(AsyncMutex::new(())),
            compact_lock: AsyncMutex::new(()),
            retired: Default::default(),
            last_reload: Default::default(),
            flush_failure: Default::default(),
            _lock: lock,
        });
        db.reload_projects().await?;
        let mut replayed_records = 0usize;
        let mut replayed_events = 0usize;
        let mut known_warnings = HashMap::new();
        for segment in replayed {
            for bytes in segment.records {
                let record = WalRecord::decode(&bytes)?;
                replayed_records += 1;
                replayed_events += db.replay(record, &mut known_warnings).await?;
            }
        }
        // Files of flushes that a crash interrupted: before this start's first flush, whose
        // own pending files are not orphans.
        if let Err(e) = db.remove_orphans().await {
            tracing::warn!(error = %e, "removing orphaned files failed; will try at the next start");
        }
        // Writes whatever was replayed and deletes every segment from before this start, in
        // the background: the replayed rows are durable and visible from the buffer, so the
        // store serves at once however many day files they make. A store that cannot take
        // writes now (a full disk) still serves: the rows stay buffered and in the WAL, and
        // the flusher retries. [`Db::flush`] and [`Db::close`] wait for this flush.
        if let Err(e) = db.start_flush().await {
            tracing::error!(error = %e, "flush at start-up did not start; serving, and retrying in the background");
        }
        if replayed_records > 0 {
            tracing::info!(
                replayed_records,
                replayed_events,
                "replayed the write-ahead log"
            );
        }
        Ok(db)
    }

    /// The storage root.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The configuration.
    pub fn config(&self) -> &DbConfig {
        &self.config
    }

    /// Re-applies one WAL record. Events are deduplicated by uuid and group rows by version;
    /// warnings by `(kind, event uuid, time)` against those already stored (`known` caches
    /// them per project), so a record replayed after its flush committed adds nothing twice.
    async fn replay(
        &self,
        mut record: WalRecord,
        known: &mut HashMap<ProjectId, HashSet<(String, String, i64)>>,
    ) -> Result<usize> {
        if !record.warnings.is_empty() {
            if let std::collections::hash_map::Entry::Vacant(slot) = known.entry(record.project) {
                let stored = self
                    .warnings(record.project)
                    .await?
                    .into_iter()
                    .map(|w| (w.kind, w.event_uuid, w.timestamp))
                    .collect();
                slot.insert(stored);
            }
            if let Some(seen) = known.get_mut(&record.project) {
                record
                    .warnings
                    .retain(|w| seen.insert((w.kind.clone(), w.event_uuid.clone(), w.timestamp)));
            }
        }
        let Some(handle) = self.project(record.project) else {
            tracing::warn!(
                project = record.project,
                "WAL record for an unknown project skipped"
            );
            return Ok(0);
        };
        let mut guard = self.lock_handle(handle).await;
        let mut kept_events = None;
        if let Some(batch) = &record.events {
            let ts = batch
                .column(events_col::TIMESTAMP)
                .as_any()
                .downcast_ref::<arrow::array::TimestampMicrosecondArray>()
                .ok_or_else(|| Error::corrupt("WAL record", "timestamp column type"))?;
            let uuids: Vec<u128> =
                uuids_of(batch.column(events_col::UUID).as_ref(), "WAL record")?.collect();
            let mut keep = Vec::with_capacity(batch.num_rows());
            for (row, uuid) in uuids.iter().enumerate() {
                keep.push(guard.insert_uuid(*uuid, ts.value(row)).await?);
            }
            let mask = arrow::array::BooleanArray::from(keep);
            kept_events = Some(arrow::compute::filter_record_batch(batch, &mask)?);
        }
        let n = kept_events.as_ref().map_or(0, RecordBatch::num_rows);
        let mut groups = Vec::new();
        for row in record.groups {
            let newer = guard
                .group(row.group_type_index, &row.group_key)
                .is_none_or(|g| g.version < row.version);
            if newer {
                guard.set_group(row.group_type_index, &row.group_key, row.to_state());
                groups.push(row);
            }
        }
        // Already in the WAL: straight to the buffer.
        guard.commit_unlogged(kept_events, groups, record.warnings)?;
        Ok(n)
    }

    /// Re-reads the project registry (cheap; rate-limited to once a second when asked for an
    /// unknown token).
    pub async fn reload_projects(&self) -> Result<()> {
        *self.last_reload.lock() = Some(Instant::now());
        for project in projects::load_all(&self.storage).await? {
            if self.projects.read().contains_key(&project.id) {
                continue;
            }
            let handle = Arc::new(self.open_project(project).await?);
            self.projects
                .write()
                .entry(handle.project.id)
                .or_insert(handle);
        }
        Ok(())
    }

    async fn open_project(&self, project: Project) -> Result<ProjectHandle> {
        let catalog = catalog::load_latest(&self.storage, project.id).await?;
        let mapping = match self
            .storage
            .get_opt(&layout::group_types_file(project.id))
            .await?
        {
            Some(bytes) => {
                let value: serde_json::Value = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::corrupt("group_types.json", e.to_string()))?;
                GroupTypeMapping::from_json(&value)?
            }
            None => GroupTypeMapping::default(),
        };
        let mut groups: HashMap<(u8, String), GroupState> = HashMap::new();
        for file in &catalog.groups {
            let bytes = self.storage.get(&file.path.as_str().into()).await?;
            for batch in parquet_files::decode(bytes, &file.path, &groups_schema())? {
                for row in groups_from_batch(&batch)? {
                    let key = (row.group_type_index, row.group_key.clone());
                    if groups.get(&key).is_none_or(|g| g.version < row.version) {
                        groups.insert(key, row.to_state());
                    }
                }
            }
        }
        let mut numbers = ActorNumbers::default();
        for file in &catalog.numbers {
            let bytes = self.storage.get(&file.path.as_str().into()).await?;
            for batch in parquet_files::decode(bytes, &file.path, &numbers_schema())? {
                numbers.load(&batch, &file.path)?;
            }
        }
        Ok(ProjectHandle {
            project,
            state: Arc::new(AsyncMutex::new(ProjectState {
                mapping,
                groups,
                dedup: DedupIndex::default(),
                numbers,
                warning_limits: HashMap::new(),
            })),
            tables: parking_lot::Mutex::new({
                let mut tables = Tables::default();
                tables.set_catalog(Arc::new(catalog));
                tables
            }),
        })
    }

    /// Tidies the data files after a crash, so that every folder's `*.parquet` files are
    /// exactly the catalog's (see [`layout`]'s twins): a pending twin of a committed file is
    /// renamed to its name (the process died between the commit and the rename); pending twins
    /// no catalog names (it died before the commit), retired twins (no query is running yet)
    /// and data files no catalog names (left by older versions of herd) are deleted. Safe
    /// because this process holds the data folder's write lock. Returns the files changed.
    async fn remove_orphans(&self) -> Result<usize> {
        let mut changed = 0;
        let handles: Vec<Arc<ProjectHandle>> = self.projects.read().values().cloned().collect();
        for h in handles {
            let catalog = h.tables.lock().catalog.clone();
            let live: HashSet<&str> = catalog.all_paths().collect();
            let dir = object_store::path::Path::from(format!("projects/{}", h.project.id));
            for meta in self.storage.list(&dir).await? {
                let path = &meta.location;
                let committed_twin = match layout::twin_of(path) {
                    Some((name, layout::Twin::Pending)) if live.contains(name.as_ref()) => {
                        Some(name)
                    }
                    Some(_) => None,
                    None if path.as_ref().ends_with(".parquet")
                        && !live.contains(path.as_ref()) =>
                    {
                        None
                    }
                    None => continue,
                };
                match committed_twin {
                    Some(name) if !self.storage.exists(&name).await? => {
                        tracing::info!(%name, "naming a file committed just before a crash");
                        self.storage.publish(&name).await?;
                    }
                    _ => {
                        tracing::warn!(%path, "removing a data file no catalog names (left by a crash)");
                        self.storage.delete(path).await?;
                    }
                }
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// Creates a project in this store and opens it.
    pub async fn create_project(&self, new: NewProject) -> Result<Project> {
        let project = projects::create(&self.storage, new).await?;
        self.reload_projects().await?;
        Ok(project)
    }

    /// Every project, by id.
    pub fn projects(&self) -> Vec<Project> {
        let mut all: Vec<Project> = self
            .projects
            .read()
            .values()
            .map(|h| h.project.clone())
            .collect();
        all.sort_by_key(|p| p.id);
        all
    }

    /// A project by id.
    pub fn project(&self, id: ProjectId) -> Option<Arc<ProjectHandle>> {
        self.projects.read().get(&id).cloned()
    }

    /// Forgets the uuids the dedup index holds for `project` (up to
    /// [`DbConfig::dedup_max_uuids`]; a write reloads the days it needs from the files), giving
    /// their memory back: what a bulk load does before it compacts. Returns how many.
    pub async fn release_dedup(&self, project: ProjectId) -> usize {
        let Some(handle) = self.project(project) else {
            return 0;
        };
        let mut state = handle.state.lock().await;
        let dedup = std::mem::take(&mut state.dedup);
        dedup.total
    }

    /// The project a public token belongs to. An unknown token re-reads the registry (at most
    /// once a second), so projects created by `herd project create` are picked up.
    pub async fn project_by_token(&self, token: &str) -> Result<Option<Arc<ProjectHandle>>> {
        let find = || {
            self.projects
                .read()
                .values()
                .find(|h| h.project.token == token)
                .cloned()
        };
        if let Some(h) = find() {
            return Ok(Some(h));
        }
        let stale = self
            .last_reload
            .lock()
            .is_none_or(|t| t.elapsed() > Duration::from_secs(1));
        if stale {
            self.reload_projects().await?;
        }
        Ok(find())
    }

    /// The project a secret key belongs to. Keys are compared in constant time (every
    /// project's, whichever matches), so response times do not tell how much of a guess
    /// was right.
    pub fn project_by_secret(&self, key: &str) -> Option<Arc<ProjectHandle>> {
        use subtle::ConstantTimeEq;
        let mut found = None;
        for h in self.projects.read().values() {
            if bool::from(h.project.secret_key.as_bytes().ct_eq(key.as_bytes())) {
                found = Some(h.clone());
            }
        }
        found
    }

    async fn lock_handle(&self, handle: Arc<ProjectHandle>) -> ProjectGuard<'_> {
        let gate = self.gate.read().await;
        let mut state = handle.state.clone().lock_owned().await;
        state.dedup.clock += 1;
        let start_clock = state.dedup.clock;
        ProjectGuard {
            db: self,
            handle,
            state,
            _gate: gate,
            undo: Vec::new(),
            start_clock,
        }
    }

    /// Locks a project for one request.
    pub async fn lock(&self, handle: &Arc<ProjectHandle>) -> ProjectGuard<'_> {
        self.lock_handle(handle.clone()).await
    }

    /// Waits until WAL ticket `ticket` (and everything before it) is durable, then makes the
    /// rows committed with durable tickets visible. An error when the ticket was lost.
    pub async fn wait_durable(&self, ticket: u64) -> Result<()> {
        self.wal.wait_durable(ticket).await?;
        self.publish();
        Ok(())
    }

    /// Moves every project's pending rows with durable tickets to its active buffer.
    fn publish(&self) {
        let durable = self.wal.durable_ticket();
        for h in self.projects.read().values() {
            h.tables.lock().publish(durable);
        }
    }

    /// Refuses a write while the buffers hold more than [`DbConfig::max_buffer_bytes`] or the
    /// WAL is failed: the client should retry later (HTTP 503).
    pub fn check_capacity(&self) -> Result<()> {
        if let Some(reason) = self.wal.failure() {
            return Err(Error::WalUnavailable(reason));
        }
        let bytes = self.buffered_bytes();
        if bytes > self.config.max_buffer_bytes {
            let why = match &*self.flush_failure.lock() {
                Some(f) => format!("flushes are failing: {}", f.reason),
                None => "flushes are behind".to_string(),
            };
            return Err(Error::BufferFull(format!(
                "{bytes} bytes buffered, over the {} limit; {why}",
                self.config.max_buffer_bytes
            )));
        }
        Ok(())
    }

    /// Bytes held by every project's write buffers.
    pub fn buffered_bytes(&self) -> usize {
        self.projects
            .read()
            .values()
            .map(|h| h.tables.lock().buffered_bytes())
            .sum()
    }

    /// What keeps the store from working normally, if anything: a failed WAL, failing
    /// flushes, a full write buffer. Empty when healthy.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(reason) = self.wal.failure() {
            out.push(format!("write-ahead log failed: {reason}"));
        }
        if let Some(f) = &*self.flush_failure.lock() {
            out.push(format!(
                "flushes failing ({} attempts since {:.0?} ago): {}",
                f.attempts,
                f.since.elapsed(),
                f.reason
            ));
        }
        if let Err(e) = self.check_capacity()
            && matches!(e, Error::BufferFull(_))
        {
            out.push(e.to_string());
        }
        out
    }

    /// Brings a failed WAL back once its disk takes writes again: the rows of the lost
    /// tickets are dropped and their changes to the ingest state undone. Returns whether the
    /// WAL had failed and is writable now. Cheap when nothing failed.
    pub async fn heal(&self) -> Result<bool> {
        if self.wal.failure().is_none() {
            return Ok(false);
        }
        // No request holds a project between its WAL append and its pending rows now.
        let _gate = self.gate.write().await;
        let Some((first, last)) = self.wal.recover().await? else {
            return Ok(self.wal.failure().is_none());
        };
        let durable = self.wal.durable_ticket();
        let handles: Vec<Arc<ProjectHandle>> = self.projects.read().values().cloned().collect();
        let mut dropped = 0usize;
        for h in handles {
            let mut state = h.state.lock().await;
            let lost: Vec<Pending> = {
                let mut t = h.tables.lock();
                t.publish(durable);
                let (lost, keep): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut t.pending)
                    .into_iter()
                    .partition(|p| (first..=last).contains(&p.ticket));
                t.pending = keep.into();
                lost
            };
            for p in lost.into_iter().rev() {
                dropped += p.events.as_ref().map_or(0, RecordBatch::num_rows);
                state.undo(p.undo);
            }
        }
        tracing::warn!(
            first_ticket = first,
            last_ticket = last,
            events = dropped,
            "WAL writable again; the refused requests' rows were dropped"
        );
        Ok(true)
    }

    /// The project's tables as one consistent snapshot.
    pub fn snapshot(&self, project: ProjectId) -> Option<TableSnapshot> {
        let handle = self.project(project)?;
        let tables = handle.tables.lock();
        let buffers = tables.frozen.iter().chain(std::iter::once(&tables.active));
        let mut buffered_events = Vec::new();
        let mut buffered_groups = Vec::new();
        let mut buffered_warnings = Vec::new();
        for b in buffers {
            buffered_events.extend(b.events.iter().cloned());
            buffered_groups.extend(b.groups.iter().cloned());
            buffered_warnings.extend(b.warnings.iter().cloned());
        }
        Some(TableSnapshot {
            catalog: tables.catalog.clone(),
            buffered_events,
            buffered_groups,
            buffered_warnings,
        })
    }

    /// Every ingestion warning of a project: its warnings files plus the write buffer.
    pub async fn warnings(&self, project: ProjectId) -> Result<Vec<IngestWarning>> {
        let Some(snapshot) = self.snapshot(project) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for file in &snapshot.catalog.warnings {
            let bytes = self.storage.get(&file.path.as_str().into()).await?;
            for batch in parquet_files::decode(bytes, &file.path, &warnings_schema())? {
                out.extend(warnings_from_batch(&batch)?);
            }
        }
        out.extend(snapshot.buffered_warnings);
        Ok(out)
    }

    /// The current properties of every group of a project (type index, key) → state.
    pub async fn current_groups(
        &self,
        project: ProjectId,
    ) -> Option<HashMap<(u8, String), GroupState>> {
        let handle = self.project(project)?;
        let state = handle.state.lock().await;
        Some(state.groups.clone())
    }

    /// The current state of a project's groups of one type, key → state (a copy of that
    /// type only; the project lock is held while copying).
    pub async fn current_groups_of_type(
        &self,
        project: ProjectId,
        index: u8,
    ) -> Option<Vec<(String, GroupState)>> {
        let handle = self.project(project)?;
        let state = handle.state.lock().await;
        Some(
            state
                .groups
                .iter()
                .filter(|((i, _), _)| *i == index)
                .map(|((_, key), g)| (key.clone(), g.clone()))
                .collect(),
        )
    }

    /// The current state of one group.
    pub async fn current_group(
        &self,
        project: ProjectId,
        index: u8,
        key: &str,
    ) -> Option<GroupState> {
        let handle = self.project(project)?;
        let state = handle.state.lock().await;
        state.groups.get(&(index, key.to_string())).cloned()
    }

    /// The project's group-type mapping.
    pub async fn group_types(&self, project: ProjectId) -> Option<GroupTypeMapping> {
        let handle = self.project(project)?;
        let state = handle.state.lock().await;
        Some(state.mapping.clone())
    }

    async fn load_day_uuids(&self, handle: &ProjectHandle, day: i32) -> Result<UuidSet> {
        let (files, buffered) = {
            let tables = handle.tables.lock();
            (
                tables.files_of_day(&day_string(day)),
                tables.batches_of_day(day),
            )
        };
        let mut set = UuidSet::default();
        for file in files {
            let bytes = self.storage.get(&file.path.as_str().into()).await?;
            set.extend(decode_uuids(bytes, &file.path)?);
        }
        for batch in buffered {
            let ts = buffered_timestamps(&batch)?;
            let uuids = uuids_of(batch.column(events_col::UUID).as_ref(), "write buffer")?;
            for (row, uuid) in uuids.enumerate() {
                if day_of(ts.value(row)) == day {
                    set.insert(uuid);
                }
            }
        }
        Ok(set)
    }

    /// Events waiting in a project's buffers (not yet in Parquet).
    pub fn buffered_rows(&self, project: ProjectId) -> usize {
        self.project(project).map_or(0, |h| {
            let t = h.tables.lock();
            t.active.rows + t.frozen.iter().map(|b| b.rows).sum::<usize>()
        })
    }

    /// Rows of a project buffered and not yet handed to a flush (a running flush holds the
    /// rest of [`Db::buffered_rows`]).
    pub fn active_rows(&self, project: ProjectId) -> usize {
        self.project(project)
            .map_or(0, |h| h.tables.lock().active.rows)
    }

    /// Whether any project's buffer is due for a flush: full, old, or left by a failed flush
    /// (retried with a backoff from [`FLUSH_RETRY_MIN`] doubling to [`FLUSH_RETRY_MAX`]).
    pub fn flush_due(&self) -> bool {
        self.publish();
        if let Some(f) = &*self.flush_failure.lock()
            && f.last.elapsed() < f.backoff
        {
            return false;
        }
        let half_limit = self.config.max_buffer_bytes / 2;
        // Frozen rows with no flush running were left by a failed one.
        let idle = self.flush_lock.try_lock().is_ok();
        self.projects.read().values().any(|h| {
            let t = h.tables.lock();
            (idle && !t.frozen.is_empty())
                || t.active.rows >= self.config.flush_rows
                || t.buffered_bytes() >= half_limit
                || t.active
                    .oldest
                    .is_some_and(|o| o.elapsed() >= self.config.flush_interval)
        })
    }

    fn record_flush(&self, result: &Result<FlushStats>) {
        let mut failure = self.flush_failure.lock();
        match result {
            Ok(_) => {
                if let Some(f) = failure.take() {
                    tracing::info!(attempts = f.attempts, "flushing again after failures");
                }
            }
            Err(e) => {
                let now = Instant::now();
                let f = failure.get_or_insert(FlushFailure {
                    since: now,
                    last: now,
                    attempts: 0,
                    backoff: FLUSH_RETRY_MIN / 2,
                    reason: String::new(),
                });
                f.attempts += 1;
                f.last = now;
                f.backoff = (f.backoff * 2).min(FLUSH_RETRY_MAX);
                f.reason = e.to_string();
            }
        }
    }

    /// Writes every buffered row to Parquet, commits the catalogs, and deletes the WAL
    /// segments that are now redundant.
    pub async fn flush(&self) -> Result<FlushStats> {
        let _one_at_a_time = self.flush_lock.lock().await;
        let (handles, live_segment) = self.freeze().await?;
        let result = self.write_frozen(handles, live_segment).await;
        self.record_flush(&result);
        result
    }

    /// Starts a flush of every row buffered now and writes them in a background task, whose
    /// handle is returned: rows added after this returns go to the next flush (a bulk load
    /// chooses where its flushes cut the input).
    pub async fn start_flush(
        self: &Arc<Self>,
    ) -> Result<tokio::task::JoinHandle<Result<FlushStats>>> {
        let one_at_a_time = self.flush_lock.clone().lock_owned().await;
        let (handles, live_segment) = self.freeze().await?;
        let db = self.clone();
        Ok(tokio::spawn(async move {
            let _one_at_a_time = one_at_a_time;
            let result = db.write_frozen(handles, live_segment).await;
            db.record_flush(&result);
            result
        }))
    }

    /// Starts a new WAL segment, publishes the rows now durable, and moves every project's
    /// active buffer to its frozen ones: the projects, and the first segment that a flush of
    /// the frozen buffers leaves needed (`None` when the WAL could not rotate: the flush then
    /// writes the rows but keeps every segment, and the next start replays and dedups them).
    async fn freeze(&self) -> Result<(Vec<Arc<ProjectHandle>>, Option<u64>)> {
        let handles: Vec<Arc<ProjectHandle>> = self.projects.read().values().cloned().collect();
        let _gate = self.gate.write().await;
        let live_segment = match self.wal.rotate().await {
            Ok(seq) => Some(seq),
            Err(e) => {
                tracing::warn!(error = %e, "WAL did not rotate; this flush keeps every segment");
                None
            }
        };
        let durable = self.wal.durable_ticket();
        for h in &handles {
            let mut t = h.tables.lock();
            t.publish(durable);
            if !t.active.is_empty() {
                let frozen = std::mem::take(&mut t.active);
                t.frozen.push(frozen);
            }
        }
        Ok((handles, live_segment))
    }

    /// Writes the frozen buffers of `handles`, commits the catalogs, and deletes the WAL
    /// segments before `live_segment`.
    async fn write_frozen(
        &self,
        handles: Vec<Arc<ProjectHandle>>,
        live_segment: Option<u64>,
    ) -> Result<FlushStats> {
        let mut stats = FlushStats::default();
        let mut first_error = None;
        for h in &handles {
            match self.flush_project(h).await {
                Ok(s) => {
                    stats.events += s.events;
                    stats.files += s.files;
                }
                Err(e) => {
                    tracing::error!(project = h.project.id, error = %e, "flush failed; rows stay buffered and in the WAL");
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        if let Some(seq) = live_segment {
            self.wal.delete_segments_before(seq)?;
        }
        if stats.files > 0 {
            tracing::debug!(events = stats.events, files = stats.files, "flushed");
        }
        Ok(stats)
    }

    async fn flush_project(&self, handle: &ProjectHandle) -> Result<FlushStats> {
        let (frozen, base) = {
            let t = handle.tables.lock();
            (t.frozen.clone(), t.catalog.clone())
        };
        if frozen.is_empty() {
            return Ok(FlushStats::default());
        }
        let project = handle.project.id;
        let mut next = (*base).clone();
        next.version += 1;
        let mut stats = FlushStats::default();

        let events: Vec<RecordBatch> = frozen
            .iter()
            .flat_map(|b| b.events.iter().cloned())
            .collect();
        // Sort and encode the day files on blocking threads and put them, several days at a
        // time: a flush holding rows of thousands of days (a backfill through capture) pays
        // the per-file put and fsync latency in parallel, not one day after another.
        let parallel = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .max(FLUSH_PUTS_IN_FLIGHT);
        let mut written = futures::stream::iter(split_by_day(&events)?)
            .map(|(day, batches)| async move {
                let (path, bytes, entry) =
                    tokio::task::spawn_blocking(move || encode_day(project, day, &batches))
                        .await
                        .map_err(|e| Error::io("encode task", std::io::Error::other(e)))??;
                self.storage.put_pending(&path, bytes).await?;
                Ok::<_, Error>(entry)
            })
            .buffered(parallel);
        let mut failed = None;
        while let Some(entry) = written.next().await {
            match entry {
                Ok(entry) => {
                    stats.events += entry.rows as usize;
                    stats.files += 1;
                    next.events.push(entry);
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        drop(written);
        let result = match failed {
            Some(e) => Err(e),
            None => {
                self.write_tables(project, &frozen, &base, &mut next, &mut stats)
                    .await
            }
        };
        let old: HashSet<&str> = base.all_paths().collect();
        let new_paths: Vec<String> = next
            .all_paths()
            .filter(|p| !old.contains(p))
            .map(str::to_string)
            .collect();
        if let Err(e) = result {
            // Nothing names the pending files written so far: remove them now rather than
            // at the next start (a flush retried against a full disk must not fill it more).
            self.discard_pending(&new_paths).await;
            return Err(e);
        }
        self.name_committed(&new_paths).await;
        let mut t = handle.tables.lock();
        t.set_catalog(Arc::new(next));
        t.frozen.drain(..frozen.len());
        Ok(stats)
    }

    /// The groups, warnings and actor-numbers files of a flush, then the catalog commit.
    async fn write_tables(
        &self,
        project: ProjectId,
        frozen: &[Buffer],
        base: &Catalog,
        next: &mut Catalog,
        stats: &mut FlushStats,
    ) -> Result<()> {
        if frozen.iter().any(|b| !b.numbers.is_empty()) {
            let numbers = numbers_batch(frozen.iter().flat_map(|b| &b.numbers))?;
            let path = layout::new_numbers_file(project);
            next.numbers.push(self.write_plain(path, &numbers).await?);
            stats.files += 1;
        }
        let groups: Vec<GroupRow> = frozen
            .iter()
            .flat_map(|b| b.groups.iter().cloned())
            .collect();
        if !groups.is_empty() {
            let path = layout::new_groups_file(project);
            next.groups
                .push(self.write_plain(path, &groups_batch(&groups)).await?);
            stats.files += 1;
        }
        let warnings: Vec<IngestWarning> = frozen
            .iter()
            .flat_map(|b| b.warnings.iter().cloned())
            .collect();
        if !warnings.is_empty() {
            let path = layout::new_warnings_file(project);
            next.warnings
                .push(self.write_plain(path, &warnings_batch(&warnings)).await?);
            stats.files += 1;
        }
        catalog::commit(&self.storage, project, base, next).await
    }

    /// Gives committed data files their names (see [`layout`]'s twins). A rename that fails
    /// is logged and left: reads find the pending twin, and the next start renames it.
    async fn name_committed(&self, paths: &[String]) {
        for chunk in paths.chunks(FLUSH_PUTS_IN_FLIGHT) {
            let renames = chunk.iter().map(|p| {
                let (storage, path) = (
                    self.storage.clone(),
                    object_store::path::Path::from(p.as_str()),
                );
                async move {
                    let result = storage.publish(&path).await;
                    (path, result)
                }
            });
            for (path, result) in futures::future::join_all(renames).await {
                if let Err(e) = result {
                    tracing::warn!(%path, error = %e, "renaming a committed file failed; the next start retries");
                }
            }
        }
    }

    /// Deletes the pending twins of files no catalog will name.
    async fn discard_pending(&self, paths: &[String]) {
        for p in paths {
            let twin = layout::twin(&p.as_str().into(), layout::Twin::Pending);
            if let Err(e) = self.storage.delete(&twin).await {
                tracing::warn!(path = %twin, error = %e, "deleting an uncommitted file failed; the next start does");
            }
        }
    }

    /// Writes a groups or warnings batch as a new file; returns its catalog entry.
    async fn write_plain(
        &self,
        path: object_store::path::Path,
        batch: &RecordBatch,
    ) -> Result<FileEntry> {
        let bytes = parquet_files::encode_plain(batch, path.as_ref())?;
        let entry = FileEntry {
            path: path.to_string(),
            rows: batch.num_rows() as u64,
            bytes: bytes.len() as u64,
            day: None,
            min_ts: None,
            max_ts: None,
            numbered: false,
        };
        self.storage.put_pending(&path, bytes).await?;
        Ok(entry)
    }

    /// Flushes everything and stops the WAL writer (graceful shutdown). A flush that fails
    /// loses nothing: its rows stay in the WAL, and the next start replays them.
    pub async fn close(&self) -> Result<FlushStats> {
        if let Err(e) = self.heal().await {
            tracing::warn!(error = %e, "WAL still failed at shutdown");
        }
        let stats = match self.flush().await {
            Ok(stats) => stats,
            Err(e) => {
                tracing::error!(
                    error = %e,
                    "flush on shutdown failed; the buffered events stay in the WAL for the next start"
                );
                FlushStats::default()
            }
        };
        self.wal.close();
        Ok(stats)
    }
}

/// The timestamp column of a buffered events batch.
pub(crate) fn buffered_timestamps(
    batch: &RecordBatch,
) -> Result<&arrow::array::TimestampMicrosecondArray> {
    batch
        .column(events_col::TIMESTAMP)
        .as_any()
        .downcast_ref::<arrow::array::TimestampMicrosecondArray>()
        .ok_or_else(|| Error::corrupt("write buffer", "timestamp column type"))
}

/// Sorts one day's rows and encodes them as an events file.
fn encode_day(
    project: ProjectId,
    day: i32,
    batches: &[RecordBatch],
) -> Result<(object_store::path::Path, Bytes, FileEntry)> {
    let day_text = day_string(day);
    let path = layout::new_events_file(project, &day_text);
    let bytes = parquet_files::encode_sorted_events(batches, path.as_ref())?;
    let (mut rows, mut min_ts, mut max_ts) = (0, None::<i64>, None::<i64>);
    for b in batches {
        let ts = buffered_timestamps(b)?;
        rows += b.num_rows() as u64;
        for &t in ts.values() {
            min_ts = Some(min_ts.map_or(t, |m| m.min(t)));
            max_ts = Some(max_ts.map_or(t, |m| m.max(t)));
        }
    }
    let entry = FileEntry {
        path: path.to_string(),
        rows,
        bytes: bytes.len() as u64,
        day: Some(day_text),
        min_ts,
        max_ts,
        numbered: true,
    };
    Ok((path, bytes, entry))
}
