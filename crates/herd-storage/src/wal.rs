//! The write-ahead log: durable before acknowledged, one fsync for many requests.
//!
//! ```text
//!  request ─┐ append(bytes) → ticket n          writer thread
//!  request ─┼──────────────▶ channel ──▶ drain everything queued ─▶ write ─▶ fsync
//!  request ─┘                                                       │
//!        wait_durable(n) ◀──────── watch: durable up to ticket m ◀──┘   (group commit)
//! ```
//!
//! Segments are files `<seq:020>.wal` in a local folder. A record is framed as
//! `magic "HWL1" | payload length u32 LE | crc32 of payload u32 LE | payload`. Replay reads the
//! segments in order and stops a segment at the first frame that is short, has a bad magic or
//! a bad checksum: a torn tail from a crash mid-write is detected and dropped, never misread.
//! Rotation starts a new segment; once everything in older segments is in Parquet, they are
//! deleted.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use parking_lot::Mutex;
use tokio::sync::{oneshot, watch};

use crate::store::sync_file_and_parent;
use crate::{Error, Result};

const MAGIC: &[u8; 4] = b"HWL1";
const HEADER: usize = 12;
/// Largest payload a frame may carry (a 20 MiB batch body decodes into less than this).
const MAX_PAYLOAD: usize = 256 << 20;
/// Drain at most this many bytes into one write + fsync.
const MAX_GROUP_BYTES: usize = 32 << 20;

/// Frames a payload.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Reads the intact frames of a segment's bytes. Returns the payloads and whether a torn or
/// corrupt tail was dropped.
pub fn read_frames(bytes: &[u8]) -> (Vec<&[u8]>, bool) {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        if rest.len() < HEADER || &rest[..4] != MAGIC {
            return (out, true);
        }
        let len = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        let crc = u32::from_le_bytes([rest[8], rest[9], rest[10], rest[11]]);
        if len > MAX_PAYLOAD || rest.len() < HEADER + len {
            return (out, true);
        }
        let payload = &rest[HEADER..HEADER + len];
        if crc32fast::hash(payload) != crc {
            return (out, true);
        }
        out.push(payload);
        pos += HEADER + len;
    }
    (out, false)
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("list WAL {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("list WAL {}", dir.display()), e))?;
        let name = entry.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((seq, entry.path()));
    }
    out.sort();
    Ok(out)
}

/// A segment read back at start-up.
#[derive(Debug)]
pub struct ReplayedSegment {
    /// Its sequence number.
    pub seq: u64,
    /// The payloads of its intact records, in order.
    pub records: Vec<Vec<u8>>,
    /// Whether a torn or corrupt tail was dropped.
    pub torn_tail: bool,
}

#[derive(Debug, Clone, Default)]
struct Durable {
    /// Every ticket up to this one is durable, except those in `lost`.
    ticket: u64,
    /// Why the writer refuses writes, while it does.
    failed: Option<String>,
    /// Ticket ranges (inclusive) the writer refused: never durable, never to be acknowledged.
    /// One per recovery, ascending and disjoint (tickets only grow).
    lost: Vec<(u64, u64)>,
}

impl Durable {
    /// A binary search: a disk that fills up again and again adds a range a second, and
    /// every request asks.
    fn is_lost(&self, ticket: u64) -> bool {
        let after = self.lost.partition_point(|&(first, _)| first <= ticket);
        after
            .checked_sub(1)
            .and_then(|i| self.lost.get(i))
            .is_some_and(|&(_, last)| last >= ticket)
    }
}

enum Command {
    Append {
        framed: Vec<u8>,
        ticket: u64,
    },
    Rotate {
        reply: oneshot::Sender<std::result::Result<u64, String>>,
    },
    Recover {
        last_handed: u64,
        reply: oneshot::Sender<std::result::Result<Option<(u64, u64)>, String>>,
    },
}

/// The write-ahead log. Cheap to share behind an `Arc`.
///
/// A failed write or fsync (a full disk, an I/O error) puts the writer in a *failed* state:
/// the segment is cut back to its last fsynced length, every ticket not yet durable fails,
/// and appends are refused until [`Wal::recover`] finds the disk writable again. Nothing is
/// acknowledged that is not durable, and nothing refused is replayed later.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    sender: Mutex<(u64, Option<mpsc::Sender<Command>>)>,
    durable: watch::Receiver<Durable>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Append { ticket, .. } => write!(f, "Append({ticket})"),
            Command::Rotate { .. } => write!(f, "Rotate"),
            Command::Recover { last_handed, .. } => write!(f, "Recover({last_handed})"),
        }
    }
}

impl Wal {
    /// Opens the WAL folder: reads every existing segment back, then starts writing a new
    /// segment after them. The caller applies the replayed records, makes them durable
    /// elsewhere, and then calls [`Wal::delete_segments_before`] with the first segment still needed.
    pub fn open(dir: &Path) -> Result<(Wal, Vec<ReplayedSegment>)> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create WAL folder {}", dir.display()), e))?;
        let mut replayed = Vec::new();
        let mut next_seq = 1;
        for (seq, path) in list_segments(dir)? {
            let bytes = std::fs::read(&path)
                .map_err(|e| Error::io(format!("read WAL {}", path.display()), e))?;
            let (frames, torn_tail) = read_frames(&bytes);
            if torn_tail {
                tracing::warn!(segment = %path.display(), intact = frames.len(), "dropped a torn WAL tail");
            }
            replayed.push(ReplayedSegment {
                seq,
                records: frames.into_iter().map(<[u8]>::to_vec).collect(),
                torn_tail,
            });
            next_seq = seq + 1;
        }
        let file = open_segment(dir, next_seq)?;
        let (tx, rx) = mpsc::channel();
        let (durable_tx, durable_rx) = watch::channel(Durable::default());
        let writer = Writer {
            dir: dir.to_path_buf(),
            seq: next_seq,
            file,
            good_len: 0,
            cut_pending: false,
            failed: None,
            durable: durable_tx,
        };
        let thread = std::thread::Builder::new()
            .name("herd-wal".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| Error::io("start WAL writer", e))?;
        Ok((
            Wal {
                dir: dir.to_path_buf(),
                sender: Mutex::new((0, Some(tx))),
                durable: durable_rx,
                thread: Mutex::new(Some(thread)),
            },
            replayed,
        ))
    }

    /// Queues a record; returns the ticket to wait on with [`Wal::wait_durable`]. Records are
    /// written in ticket order. Refused at once while the writer is failed.
    pub fn append(&self, payload: &[u8]) -> Result<u64> {
        if let Some(reason) = self.failure() {
            return Err(Error::WalUnavailable(reason));
        }
        let framed = frame(payload);
        let mut guard = self.sender.lock();
        let (next, sender) = &mut *guard;
        let sender = sender
            .as_ref()
            .ok_or_else(|| Error::WalUnavailable("closed".into()))?;
        let ticket = *next + 1;
        sender
            .send(Command::Append { framed, ticket })
            .map_err(|_| {
                Error::WalUnavailable(self.failure().unwrap_or_else(|| "writer stopped".into()))
            })?;
        *next = ticket;
        Ok(ticket)
    }

    /// The last ticket handed out.
    pub fn last_ticket(&self) -> u64 {
        self.sender.lock().0
    }

    /// The ticket a request that appends nothing waits on so that it is answered only after
    /// everything queued before it: the last one handed out, or, when that one was lost (a
    /// failed write refuses a tail of tickets), the last durable one.
    pub fn last_live_ticket(&self) -> u64 {
        let last = self.last_ticket();
        if self.is_lost(last) {
            self.durable_ticket()
        } else {
            last
        }
    }

    /// Every ticket up to this one is durable (or was refused: see [`Wal::is_lost`]).
    pub fn durable_ticket(&self) -> u64 {
        self.durable.borrow().ticket
    }

    /// Whether `ticket` was refused by a failed writer (it will never be durable).
    pub fn is_lost(&self, ticket: u64) -> bool {
        self.durable.borrow().is_lost(ticket)
    }

    /// Waits until every record up to `ticket` is fsynced; an error if the writer failed
    /// before it was.
    pub async fn wait_durable(&self, ticket: u64) -> Result<()> {
        let mut rx = self.durable.clone();
        let state = rx
            .wait_for(|d| d.ticket >= ticket || d.failed.is_some() || d.is_lost(ticket))
            .await
            .map_err(|_| Error::WalUnavailable("writer stopped".into()))?;
        if state.is_lost(ticket) {
            return Err(Error::WalUnavailable(
                "a WAL write failed before this record was durable".into(),
            ));
        }
        match (&state.failed, state.ticket >= ticket) {
            (_, true) => Ok(()),
            (Some(reason), false) => Err(Error::WalUnavailable(reason.clone())),
            (None, false) => Err(Error::WalUnavailable("writer stopped".into())),
        }
    }

    /// Why the writer refuses writes, while it does.
    pub fn failure(&self) -> Option<String> {
        self.durable.borrow().failed.clone()
    }

    /// Starts a new segment after everything queued so far; returns its sequence number.
    /// Every record appended before this call is in a segment with a smaller number, and is
    /// durable or lost when this returns.
    pub async fn rotate(&self) -> Result<u64> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Rotate { reply })?;
        rx.await
            .map_err(|_| Error::WalUnavailable("writer stopped".into()))?
            .map_err(Error::WalUnavailable)
    }

    /// Brings a failed writer back when its disk is writable again: checks that a probe of
    /// [`PROBE_BYTES`] can be written and fsynced, and then accepts appends again. Returns
    /// the tickets that were lost (`None` when none were, or the writer had not failed). The
    /// caller must make sure no append races with this (see [`crate::Db`]'s ingest gate).
    pub async fn recover(&self) -> Result<Option<(u64, u64)>> {
        let (reply, rx) = oneshot::channel();
        {
            let guard = self.sender.lock();
            let sender = guard
                .1
                .as_ref()
                .ok_or_else(|| Error::WalUnavailable("closed".into()))?;
            sender
                .send(Command::Recover {
                    last_handed: guard.0,
                    reply,
                })
                .map_err(|_| Error::WalUnavailable("writer stopped".into()))?;
        }
        rx.await
            .map_err(|_| Error::WalUnavailable("writer stopped".into()))?
            .map_err(Error::WalUnavailable)
    }

    fn send(&self, command: Command) -> Result<()> {
        let guard = self.sender.lock();
        let sender = guard
            .1
            .as_ref()
            .ok_or_else(|| Error::WalUnavailable("closed".into()))?;
        sender
            .send(command)
            .map_err(|_| Error::WalUnavailable("writer stopped".into()))
    }

    /// Deletes every segment numbered below `seq` (their records are in Parquet now).
    pub fn delete_segments_before(&self, seq: u64) -> Result<usize> {
        let mut n = 0;
        for (s, path) in list_segments(&self.dir)? {
            if s < seq {
                std::fs::remove_file(&path)
                    .map_err(|e| Error::io(format!("delete WAL {}", path.display()), e))?;
                n += 1;
            }
        }
        if n > 0 {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::io("fsync WAL folder", e))?;
        }
        Ok(n)
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops the writer after everything queued is durable (or refused).
    pub fn close(&self) {
        self.sender.lock().1 = None;
        if let Some(handle) = self.thread.lock().take() {
            let _ = handle.join();
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.close();
    }
}

/// Bytes a recovering writer must be able to write and fsync before it accepts appends.
pub const PROBE_BYTES: usize = 1 << 20;

fn open_segment(dir: &Path, seq: u64) -> Result<File> {
    let path = segment_path(dir, seq);
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| Error::io(format!("open WAL segment {}", path.display()), e))?;
    sync_file_and_parent(&path)?;
    Ok(file)
}

/// The writer thread's state.
struct Writer {
    dir: PathBuf,
    seq: u64,
    file: File,
    /// Length of the segment up to its last successful fsync.
    good_len: u64,
    /// The segment may hold bytes past `good_len` that a failed write left (cut them first).
    cut_pending: bool,
    failed: Option<String>,
    durable: watch::Sender<Durable>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Command>) {
        let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
        while let Ok(first) = rx.recv() {
            let mut control = None;
            let mut last_ticket = None;
            let mut next = Some(first);
            while let Some(cmd) = next.take() {
                match cmd {
                    // Refused appends are dropped: their waiters already see the failure.
                    Command::Append { framed, ticket } => {
                        if self.failed.is_none() {
                            buf.extend_from_slice(&framed);
                            last_ticket = Some(ticket);
                        }
                    }
                    other => {
                        control = Some(other);
                        break;
                    }
                }
                if buf.len() >= MAX_GROUP_BYTES {
                    break;
                }
                next = rx.try_recv().ok();
            }
            if let Some(ticket) = last_ticket {
                self.write_group(&buf, ticket);
            }
            buf.clear();
            match control {
                Some(Command::Rotate { reply }) => {
                    let _ = reply.send(self.rotate());
                }
                Some(Command::Recover { last_handed, reply }) => {
                    let _ = reply.send(self.recover(last_handed));
                }
                Some(Command::Append { .. }) | None => {}
            }
        }
        if self.cut_pending {
            self.cut_back();
        }
    }

    fn write_group(&mut self, buf: &[u8], ticket: u64) {
        let result = self
            .file
            .write_all(buf)
            .and_then(|()| self.file.sync_data());
        match result {
            Ok(()) => {
                self.good_len += buf.len() as u64;
                self.durable.send_modify(|d| d.ticket = ticket);
            }
            Err(e) => self.fail(format!("write/fsync WAL segment {}: {e}", self.seq)),
        }
    }

    /// Refuses writes from now on and cuts the segment back to its last fsynced length, so a
    /// partly written group is never replayed.
    fn fail(&mut self, reason: String) {
        tracing::error!(%reason, "WAL write failed; refusing writes until the disk recovers");
        self.cut_pending = true;
        self.cut_back();
        self.failed = Some(reason.clone());
        self.durable.send_modify(|d| d.failed = Some(reason));
    }

    fn cut_back(&mut self) {
        match self
            .file
            .set_len(self.good_len)
            .and_then(|()| self.file.sync_all())
        {
            Ok(()) => self.cut_pending = false,
            Err(e) => tracing::error!(
                segment = self.seq,
                error = %e,
                "cutting the WAL segment back to its last fsynced length failed; will retry"
            ),
        }
    }

    fn rotate(&mut self) -> std::result::Result<u64, String> {
        if let Some(reason) = &self.failed {
            return Err(reason.clone());
        }
        let file = open_segment(&self.dir, self.seq + 1).map_err(|e| format!("rotate WAL: {e}"))?;
        self.file = file;
        self.seq += 1;
        self.good_len = 0;
        Ok(self.seq)
    }

    fn recover(&mut self, last_handed: u64) -> std::result::Result<Option<(u64, u64)>, String> {
        if self.failed.is_none() {
            return Ok(None);
        }
        if self.cut_pending {
            self.cut_back();
            if self.cut_pending {
                return Err("the WAL segment could not be cut back yet".into());
            }
        }
        self.probe()
            .map_err(|e| format!("WAL disk still not writable: {e}"))?;
        let durable = self.durable.borrow().ticket;
        let lost = (last_handed > durable).then_some((durable + 1, last_handed));
        self.failed = None;
        self.durable.send_modify(|d| {
            d.failed = None;
            d.lost.extend(lost);
        });
        tracing::info!(?lost, "WAL writable again; accepting writes");
        Ok(lost)
    }

    fn probe(&self) -> std::io::Result<()> {
        let path = self.dir.join("PROBE");
        let result = (|| {
            let mut f = File::create(&path)?;
            f.write_all(&vec![0u8; PROBE_BYTES])?;
            f.sync_all()
        })();
        let removed = std::fs::remove_file(&path);
        result.and(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_ranges_are_found_by_binary_search() {
        let d = Durable {
            lost: vec![(3, 5), (9, 9), (20, 40)],
            ..Durable::default()
        };
        let lost: Vec<u64> = (0..45).filter(|&t| d.is_lost(t)).collect();
        let expected: Vec<u64> = [3, 4, 5, 9].into_iter().chain(20..=40).collect();
        assert_eq!(lost, expected);
        assert!(!Durable::default().is_lost(1));
    }

    #[test]
    fn frames_round_trip_and_torn_tails_are_dropped() {
        let mut bytes = frame(b"one");
        bytes.extend(frame(b"two"));
        let (frames, torn) = read_frames(&bytes);
        assert_eq!(frames, vec![&b"one"[..], &b"two"[..]]);
        assert!(!torn);
        // Every truncation point keeps exactly the whole frames before it.
        for cut in 0..bytes.len() {
            let (frames, torn) = read_frames(&bytes[..cut]);
            let whole = if cut >= 15 + 15 {
                2
            } else if cut >= 15 {
                1
            } else {
                0
            };
            assert_eq!(frames.len(), whole, "cut at {cut}");
            assert_eq!(torn, cut != 0 && cut != 15, "cut at {cut}");
        }
        // A flipped payload bit fails the checksum.
        let mut bad = bytes.clone();
        bad[13] ^= 1;
        let (frames, torn) = read_frames(&bad);
        assert!(frames.is_empty() && torn);
    }

    #[tokio::test]
    async fn appends_are_durable_and_replayed_after_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (wal, replayed) = Wal::open(dir.path()).expect("open");
            assert!(replayed.is_empty());
            let mut last = 0;
            for i in 0..100u32 {
                last = wal.append(&i.to_le_bytes()).expect("append");
            }
            wal.wait_durable(last).await.expect("durable");
            let seq = wal.rotate().await.expect("rotate");
            assert_eq!(seq, 2);
            let t = wal.append(b"after").expect("append");
            wal.wait_durable(t).await.expect("durable");
        }
        // Simulate a torn write at the end of the last segment.
        let last = segment_path(dir.path(), 2);
        let mut f = OpenOptions::new().append(true).open(&last).expect("open");
        f.write_all(&frame(b"torn")[..7]).expect("write");
        drop(f);

        let (wal, replayed) = Wal::open(dir.path()).expect("reopen");
        assert_eq!(replayed.len(), 2);
        assert_eq!(replayed[0].records.len(), 100);
        assert_eq!(replayed[0].records[99], 99u32.to_le_bytes().to_vec());
        assert_eq!(replayed[1].records, vec![b"after".to_vec()]);
        assert!(replayed[1].torn_tail && !replayed[0].torn_tail);
        assert_eq!(wal.delete_segments_before(3).expect("delete"), 2);
        drop(wal);
        let (_wal, replayed) = Wal::open(dir.path()).expect("reopen");
        assert_eq!(replayed.len(), 1, "only the empty segment 3 is left");
        assert!(replayed[0].records.is_empty());
    }
}
