//! The durable Raft log: segmented append-only files with a CRC per record, group-committed
//! with `fdatasync` on a flusher thread; plus the vote and the purge point in small atomic
//! state files.
//!
//! # On disk (`<data_dir>/raft/log/`)
//! - `seg-<seq>.wal`: 8 magic bytes, then records `[len u32][crc32(payload) u32]
//!   [crc32(len, crc) u32][payload]`, little-endian; the payload is a postcard `Record`:
//!   an entry (a later one at the same index replaces it), a truncation point (entries from
//!   that index on are gone; fsynced at once), or the committed log id (written with no fsync
//!   of its own: losing it only means re-applying more on restart). A segment is closed (fsynced) when it passes
//!   `segment_bytes`; the last segment is the one appended to.
//! - `vote`, `purged`: [`crate::files`] state files (temp + fsync + rename).
//!
//! # Recovery
//! Only the tail of the *last* segment may be torn: a header cut short, a header whose
//! checksum fails with nothing but zeros after it, a payload shorter than its length, or a
//! payload whose CRC fails and which ends exactly at the end of the file. Such a tail is cut
//! off (with a warning) and the node starts. Anything else — a bad record in the middle, a
//! bad segment header, a torn record in a closed segment, an undecodable payload, an unreadable vote or purge file — is an [`FileError`] naming the
//! file, the offset and what is wrong.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{LogId, RaftLogReader, StorageError, StorageIOError, Vote};
use serde::{Deserialize, Serialize};

use crate::files::{self, u32_at, FileError};
use crate::{Entry, NodeId, TypeConfig};

const SEGMENT_MAGIC: &[u8; 8] = b"NCLRLOG1";
const VOTE_MAGIC: &[u8; 8] = b"NCLVOTE1";
const PURGED_MAGIC: &[u8; 8] = b"NCLPURG1";
const RECORD_HEADER: usize = 12;
/// No record may be larger (a length above it is corruption, not a big entry).
const MAX_RECORD: usize = 256 << 20;
/// Recently appended entries kept decoded, for replication and apply (count, bytes).
const CACHE_ENTRIES: usize = 4096;
const CACHE_BYTES: usize = 32 << 20;
/// Flush requests queued to the flusher thread before `append` waits.
const FLUSH_QUEUE: usize = 1024;

/// One record of a segment.
#[derive(Serialize, Deserialize)]
enum Record {
    Entry(Entry),
    Committed(Option<LogId<NodeId>>),
    /// Entries from this index on are removed.
    TruncateFrom(u64),
}

/// Where an entry lives.
#[derive(Clone, Debug)]
struct Pos {
    log_id: LogId<NodeId>,
    seg: u64,
    /// Offset of the record header.
    offset: u64,
    /// Payload length.
    len: u32,
}

struct Segment {
    seq: u64,
    path: PathBuf,
    file: Arc<File>,
    /// Bytes in the file (the next record goes there).
    len: u64,
}

struct Inner {
    dir: PathBuf,
    segment_bytes: u64,
    segments: Vec<Segment>,
    /// Positions of the entries held.
    index: BTreeMap<u64, Pos>,
    /// Recently appended entries, decoded, with their encoded size.
    cache: BTreeMap<u64, (Entry, usize)>,
    cache_bytes: usize,
    purged: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    flusher: mpsc::SyncSender<FlushReq>,
    shared: Arc<LogShared>,
}

/// Counters the node reads for its metrics without locking the log.
#[derive(Debug, Default)]
pub struct LogShared {
    /// Committed index + 1 (0 = none).
    pub committed: AtomicU64,
    /// Number of entries held.
    pub entries: AtomicU64,
    /// fsyncs done by the flusher.
    pub fsyncs: AtomicU64,
}

/// A record's postcard bytes, and the entry it holds (for the index and the cache).
type EncodedRecord = (Vec<u8>, Option<(LogId<NodeId>, Entry)>);

struct FlushReq {
    files: Vec<Arc<File>>,
    done: LogFlushed<TypeConfig>,
}

/// The log store handed to openraft (also its own reader: clones share the state).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

/// Options of the log.
#[derive(Clone, Debug)]
pub struct LogOptions {
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_bytes: 64 << 20,
        }
    }
}

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

fn write_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_logs(&io_err(e)).into()
}

fn read_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::read_logs(&io_err(e)).into()
}

impl LogStore {
    /// Opens (or creates) the log under `dir`, recovering as the module docs say.
    pub fn open(dir: &Path, options: LogOptions) -> Result<LogStore, FileError> {
        files::ensure_dir(dir)?;
        let vote = files::read_state::<Vote<NodeId>>(&dir.join("vote"), VOTE_MAGIC)?;
        let purged = files::read_state::<Option<LogId<NodeId>>>(&dir.join("purged"), PURGED_MAGIC)?
            .flatten();
        let mut seqs = Vec::new();
        let listing = fs::read_dir(dir).map_err(|e| FileError::io(dir, "cannot list", &e))?;
        for item in listing {
            let item = item.map_err(|e| FileError::io(dir, "cannot list", &e))?;
            let name = item.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(seq) = name
                .strip_prefix("seg-")
                .and_then(|s| s.strip_suffix(".wal"))
            {
                let seq: u64 = seq.parse().map_err(|_| {
                    FileError::new(&item.path(), "segment file name is not seg-<number>.wal")
                })?;
                seqs.push(seq);
            } else if name.ends_with(".tmp") {
                let _ = fs::remove_file(item.path());
            }
        }
        seqs.sort_unstable();
        let shared = Arc::new(LogShared::default());
        let (flusher, rx) = mpsc::sync_channel(FLUSH_QUEUE);
        let flush_shared = shared.clone();
        thread::Builder::new()
            .name("nacelle-raft-fsync".into())
            .spawn(move || flusher_loop(rx, flush_shared))
            .map_err(|e| FileError::io(dir, "cannot start the flusher thread", &e))?;
        let mut inner = Inner {
            dir: dir.to_path_buf(),
            segment_bytes: options.segment_bytes.max(4096),
            segments: Vec::new(),
            index: BTreeMap::new(),
            cache: BTreeMap::new(),
            cache_bytes: 0,
            purged,
            vote,
            committed: None,
            flusher,
            shared,
        };
        let n = seqs.len();
        for (i, seq) in seqs.into_iter().enumerate() {
            inner.recover_segment(seq, i + 1 == n)?;
        }
        if inner.segments.is_empty() {
            inner.new_segment(0)?;
        }
        if let (Some(c), Some(p)) = (&inner.committed, &inner.purged) {
            if c < p {
                inner.committed = Some(*p);
            }
        }
        inner.publish();
        Ok(LogStore {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the state as consistent as the files: go on.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The counters shared with the node's metrics.
    pub fn shared(&self) -> Arc<LogShared> {
        self.lock().shared.clone()
    }
}

impl Inner {
    fn seg_path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("seg-{seq:010}.wal"))
    }

    fn last_log_id(&self) -> Option<LogId<NodeId>> {
        self.index
            .last_key_value()
            .map(|(_, p)| p.log_id)
            .or(self.purged)
    }

    fn publish(&self) {
        let c = self.committed.map_or(0, |c| c.index + 1);
        self.shared.committed.store(c, Ordering::Relaxed);
        self.shared
            .entries
            .store(self.index.len() as u64, Ordering::Relaxed);
    }

    fn new_segment(&mut self, seq: u64) -> Result<(), FileError> {
        let path = self.seg_path(seq);
        let create = || -> std::io::Result<File> {
            let f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&path)?;
            f.write_all_at(SEGMENT_MAGIC, 0)?;
            f.sync_all()?;
            Ok(f)
        };
        let file = create().map_err(|e| FileError::io(&path, "cannot create the segment", &e))?;
        files::sync_dir(&self.dir)?;
        self.segments.push(Segment {
            seq,
            path,
            file: Arc::new(file),
            len: SEGMENT_MAGIC.len() as u64,
        });
        Ok(())
    }

    /// Reads one segment into the index; `last`: the segment appended to, whose tail may be
    /// torn.
    fn recover_segment(&mut self, seq: u64, last: bool) -> Result<(), FileError> {
        let path = self.seg_path(seq);
        let bytes = fs::read(&path).map_err(|e| FileError::io(&path, "cannot read", &e))?;
        let torn_header = bytes.len() < SEGMENT_MAGIC.len()
            || (bytes[..SEGMENT_MAGIC.len()] != SEGMENT_MAGIC[..] && all_zero(&bytes));
        if torn_header {
            if !last {
                return Err(FileError::new(&path, "closed segment without a header"));
            }
            // Created, never written: power loss at rotation.
            tracing::warn!(file = %path.display(), "raft log: empty segment (torn creation), recreated");
            return self.new_segment(seq);
        }
        if bytes[..SEGMENT_MAGIC.len()] != SEGMENT_MAGIC[..] {
            return Err(FileError::new(
                &path,
                "bad segment header (not a Nacelle Raft log segment)",
            ));
        }
        let mut at = SEGMENT_MAGIC.len();
        let mut cut: Option<(usize, &'static str)> = None;
        while at < bytes.len() {
            let rest = &bytes[at..];
            if rest.len() < RECORD_HEADER {
                cut = Some((at, "record header cut short"));
                break;
            }
            let len = u32_at(rest, 0) as usize;
            let crc = u32_at(rest, 4);
            let hcrc = u32_at(rest, 8);
            if crc32fast::hash(&rest[..8]) != hcrc || len == 0 || len > MAX_RECORD {
                if all_zero(rest) {
                    cut = Some((at, "zeros where a record header should be"));
                    break;
                }
                return Err(FileError::new(
                    &path,
                    format!("bad record header at offset {at} (not at a torn tail)"),
                ));
            }
            if rest.len() < RECORD_HEADER + len {
                cut = Some((at, "record payload cut short"));
                break;
            }
            let payload = &rest[RECORD_HEADER..RECORD_HEADER + len];
            let end = at + RECORD_HEADER + len;
            if crc32fast::hash(payload) != crc {
                if end == bytes.len() || all_zero(&bytes[end..]) {
                    cut = Some((at, "CRC mismatch in the last record"));
                    break;
                }
                return Err(FileError::new(
                    &path,
                    format!("CRC mismatch in the record at offset {at} (not the last record)"),
                ));
            }
            let record: Record = postcard::from_bytes(payload).map_err(|e| {
                FileError::new(&path, format!("undecodable record at offset {at}: {e}"))
            })?;
            match record {
                Record::Committed(c) => {
                    if c > self.committed {
                        self.committed = c;
                    }
                }
                Record::Entry(entry) => {
                    let log_id = entry.log_id;
                    if self.purged.is_none_or(|p| log_id.index > p.index) {
                        let pos = Pos {
                            log_id,
                            seg: seq,
                            offset: at as u64,
                            len: len as u32,
                        };
                        self.index.insert(log_id.index, pos);
                    }
                }
                Record::TruncateFrom(index) => {
                    self.index.split_off(&index);
                }
            }
            at = end;
        }
        if let Some((offset, why)) = cut {
            if !last {
                return Err(FileError::new(
                    &path,
                    format!("{why} at offset {offset} in a closed segment"),
                ));
            }
            tracing::warn!(file = %path.display(), offset, why, "raft log: torn tail cut off");
            let f = OpenOptions::new().write(true).open(&path).and_then(|f| {
                f.set_len(offset as u64)?;
                f.sync_all()
            });
            f.map_err(|e| FileError::io(&path, "cannot cut the torn tail", &e))?;
            at = offset;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| FileError::io(&path, "cannot open", &e))?;
        self.segments.push(Segment {
            seq,
            path,
            file: Arc::new(file),
            len: at as u64,
        });
        Ok(())
    }

    fn tail(&mut self) -> Result<&mut Segment, FileError> {
        let rotate = self
            .segments
            .last()
            .is_none_or(|s| s.len >= self.segment_bytes);
        if rotate {
            let next = self.segments.last().map_or(0, |s| s.seq + 1);
            if let Some(s) = self.segments.last() {
                // Closed segments are durable before the next one gets data.
                s.file
                    .sync_data()
                    .map_err(|e| FileError::io(&s.path, "cannot fsync", &e))?;
            }
            self.new_segment(next)?;
        }
        match self.segments.last_mut() {
            Some(s) => Ok(s),
            None => Err(FileError::new(&self.dir, "no segment")),
        }
    }

    /// Appends encoded records to the tail segment; returns the files written.
    fn write_records(
        &mut self,
        records: &[EncodedRecord],
        files: &mut Vec<Arc<File>>,
    ) -> Result<(), FileError> {
        for (payload, entry) in records {
            let seg = self.tail()?;
            let mut buf = Vec::with_capacity(RECORD_HEADER + payload.len());
            buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
            let hcrc = crc32fast::hash(&buf[..8]);
            buf.extend_from_slice(&hcrc.to_le_bytes());
            buf.extend_from_slice(payload);
            seg.file
                .write_all_at(&buf, seg.len)
                .map_err(|e| FileError::io(&seg.path, "cannot write", &e))?;
            let offset = seg.len;
            seg.len += buf.len() as u64;
            let (seq, file) = (seg.seq, seg.file.clone());
            if !files.iter().any(|f| Arc::ptr_eq(f, &file)) {
                files.push(file);
            }
            if let Some((log_id, entry)) = entry {
                let pos = Pos {
                    log_id: *log_id,
                    seg: seq,
                    offset,
                    len: payload.len() as u32,
                };
                self.index.insert(log_id.index, pos);
                self.cache_push(log_id.index, entry.clone(), payload.len());
            }
        }
        Ok(())
    }

    fn cache_push(&mut self, index: u64, entry: Entry, size: usize) {
        if let Some((_, old)) = self.cache.insert(index, (entry, size)) {
            self.cache_bytes -= old;
        }
        self.cache_bytes += size;
        while self.cache.len() > CACHE_ENTRIES || self.cache_bytes > CACHE_BYTES {
            match self.cache.pop_first() {
                Some((_, (_, s))) => self.cache_bytes -= s,
                None => break,
            }
        }
    }

    fn cache_drop(&mut self, dropped: BTreeMap<u64, (Entry, usize)>) {
        self.cache_bytes -= dropped.values().map(|(_, s)| *s).sum::<usize>();
    }

    fn read_entry(&self, index: u64) -> Result<Option<Entry>, String> {
        if let Some((e, _)) = self.cache.get(&index) {
            return Ok(Some(e.clone()));
        }
        let Some(pos) = self.index.get(&index) else {
            return Ok(None);
        };
        let seg = self
            .segments
            .binary_search_by_key(&pos.seg, |s| s.seq)
            .ok()
            .and_then(|i| self.segments.get(i))
            .ok_or_else(|| format!("entry {index}: segment {} is gone", pos.seg))?;
        let mut buf = vec![0u8; RECORD_HEADER + pos.len as usize];
        seg.file
            .read_exact_at(&mut buf, pos.offset)
            .map_err(|e| format!("{}: read at {}: {e}", seg.path.display(), pos.offset))?;
        let payload = &buf[RECORD_HEADER..];
        if crc32fast::hash(payload) != u32_at(&buf, 4) {
            return Err(format!(
                "{}: CRC mismatch reading entry {index} at offset {}",
                seg.path.display(),
                pos.offset
            ));
        }
        match postcard::from_bytes::<Record>(payload) {
            Ok(Record::Entry(e)) if e.log_id.index == index => Ok(Some(e)),
            Ok(_) => Err(format!(
                "{}: offset {} does not hold entry {index}",
                seg.path.display(),
                pos.offset
            )),
            Err(e) => Err(format!(
                "{}: undecodable entry {index}: {e}",
                seg.path.display()
            )),
        }
    }

    /// Removes every entry from `index` on: a truncation record, fsynced at once.
    fn truncate_from(&mut self, index: u64) -> Result<(), FileError> {
        if self.index.range(index..).next().is_none() {
            return Ok(());
        }
        let payload = postcard::to_stdvec(&Record::TruncateFrom(index))
            .map_err(|e| FileError::new(&self.dir, format!("cannot encode: {e}")))?;
        let mut files = Vec::new();
        self.write_records(&[(payload, None)], &mut files)?;
        for f in &files {
            f.sync_data()
                .map_err(|e| FileError::io(&self.dir, "cannot fsync a segment", &e))?;
        }
        self.index.split_off(&index);
        let dropped = self.cache.split_off(&index);
        self.cache_drop(dropped);
        Ok(())
    }

    fn purge_upto(&mut self, log_id: LogId<NodeId>) -> Result<(), FileError> {
        if self.purged.is_some_and(|p| p.index >= log_id.index) {
            return Ok(());
        }
        let path = self.dir.join("purged");
        let bytes = files::encode_state(PURGED_MAGIC, &Some(log_id))
            .map_err(|e| FileError::new(&path, format!("cannot encode: {e}")))?;
        files::write_atomic(&path, &bytes)?;
        self.purged = Some(log_id);
        let above = log_id.index.saturating_add(1);
        self.index = self.index.split_off(&above);
        let kept = self.cache.split_off(&above);
        let dropped = std::mem::replace(&mut self.cache, kept);
        self.cache_drop(dropped);
        if self.index.is_empty() {
            // The whole log is behind the snapshot: start a fresh segment, drop the rest.
            let next = self.segments.last().map_or(0, |s| s.seq + 1);
            self.new_segment(next)?;
        }
        // Segments holding no live entry (and not the tail) go.
        let live: HashSet<u64> = self.index.values().map(|p| p.seg).collect();
        let tail_seq = self.segments.last().map(|s| s.seq);
        let mut kept = Vec::with_capacity(self.segments.len());
        for s in self.segments.drain(..) {
            let dead = Some(s.seq) != tail_seq && !live.contains(&s.seq);
            if dead {
                fs::remove_file(&s.path)
                    .map_err(|e| FileError::io(&s.path, "cannot remove", &e))?;
            } else {
                kept.push(s);
            }
        }
        self.segments = kept;
        Ok(())
    }
}

fn all_zero(b: &[u8]) -> bool {
    b.iter().all(|x| *x == 0)
}

fn flusher_loop(rx: mpsc::Receiver<FlushReq>, shared: Arc<LogShared>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let mut files: Vec<Arc<File>> = Vec::new();
        for req in &batch {
            for f in &req.files {
                if !files.iter().any(|g| Arc::ptr_eq(f, g)) {
                    files.push(f.clone());
                }
            }
        }
        let mut result = Ok(());
        for f in &files {
            if let Err(e) = f.sync_data() {
                result = Err(e);
                break;
            }
        }
        shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        for req in batch {
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            };
            req.done.log_io_completed(r);
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        let inner = self.lock();
        let mut out = Vec::new();
        let lo = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let hi = match range.end_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(0) => return Ok(out),
            Bound::Excluded(i) => i - 1,
            Bound::Unbounded => u64::MAX,
        };
        if lo > hi {
            return Ok(out);
        }
        for (&i, _) in inner.index.range(lo..=hi) {
            match inner.read_entry(i).map_err(read_err)? {
                Some(e) => out.push(e),
                None => break,
            }
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let inner = self.lock();
        Ok(LogState {
            last_purged_log_id: inner.purged,
            last_log_id: inner.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        let path = inner.dir.join("vote");
        let bytes = files::encode_state(VOTE_MAGIC, vote)
            .map_err(|e| StorageError::from(StorageIOError::write_vote(&io_err(e))))?;
        files::write_atomic(&path, &bytes)
            .map_err(|e| StorageError::from(StorageIOError::write_vote(&io_err(e))))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        let payload = postcard::to_stdvec(&Record::Committed(committed)).map_err(write_err)?;
        let mut files = Vec::new();
        inner
            .write_records(&[(payload, None)], &mut files)
            .map_err(write_err)?;
        inner.committed = committed;
        inner.publish();
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut records = Vec::new();
        for entry in entries {
            let record = Record::Entry(entry);
            let payload = postcard::to_stdvec(&record).map_err(write_err)?;
            let Record::Entry(entry) = record else {
                continue;
            };
            records.push((payload, Some((entry.log_id, entry))));
        }
        let mut files = Vec::new();
        let sender = {
            let mut inner = self.lock();
            inner
                .write_records(&records, &mut files)
                .map_err(write_err)?;
            inner.publish();
            inner.flusher.clone()
        };
        // The callback fires on the flusher thread once an fsync covered these records.
        sender
            .send(FlushReq {
                files,
                done: callback,
            })
            .map_err(|_| write_err("the fsync thread is gone"))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        inner.truncate_from(log_id.index).map_err(write_err)?;
        inner.publish();
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        inner.purge_upto(log_id).map_err(write_err)?;
        inner.publish();
        Ok(())
    }
}
