//! The log store and the state machine: openraft's storage suite on the real on-disk store,
//! restart, torn tails and corruption.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use nacelle_raft::log_store::{LogOptions, LogStore};
use nacelle_raft::state_machine::StateMachine;
use nacelle_raft::{Batch, Entry, NodeId, TypeConfig};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload, LogId, RaftLogReader, StorageError, Vote};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = LogStore::open(&dir.path().join("log"), LogOptions::default()).expect("log");
        let (sm, _, _) =
            StateMachine::open(&dir.path().join("snapshot"), Box::new(|_, _| {})).expect("sm");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).expect("openraft storage suite");
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn entry(term: u64, index: u64) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 0), index),
        payload: EntryPayload::Normal(Batch(Vec::new())),
    }
}

fn open(dir: &Path) -> Result<LogStore, nacelle_raft::files::FileError> {
    LogStore::open(dir, LogOptions::default())
}

/// Writes entries 1..=n (term 1) in one segment, closes the store.
fn write_log(dir: &Path, n: u64) {
    let rt = rt();
    let mut log = open(dir).expect("open");
    rt.block_on(async {
        for i in 1..=n {
            log.blocking_append([entry(1, i)]).await.expect("append");
        }
        log.save_vote(&Vote::new(3, 2)).await.expect("vote");
    });
}

fn indexes(dir: &Path) -> Vec<u64> {
    let rt = rt();
    let mut log = open(dir).expect("reopen");
    rt.block_on(async {
        log.try_get_log_entries(..)
            .await
            .expect("read")
            .iter()
            .map(|e| e.log_id.index)
            .collect()
    })
}

fn segment(dir: &Path) -> PathBuf {
    let mut segs: Vec<_> = fs::read_dir(dir)
        .expect("ls")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segs.sort();
    segs.pop().expect("a segment")
}

/// Offsets of the records in a segment (parsing the frame the way the store does).
fn record_offsets(path: &Path) -> Vec<(usize, usize)> {
    let b = fs::read(path).expect("read");
    let mut at = 8;
    let mut out = Vec::new();
    while at + 12 <= b.len() {
        let len = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize;
        out.push((at, 12 + len));
        at += 12 + len;
    }
    out
}

fn edit(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut b = fs::read(path).expect("read");
    f(&mut b);
    fs::write(path, b).expect("write");
}

#[test]
fn restart_keeps_entries_and_vote() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), 20);
    assert_eq!(indexes(dir.path()), (1..=20).collect::<Vec<_>>());
    let rt = rt();
    let mut log = open(dir.path()).expect("open");
    let vote = rt.block_on(log.read_vote()).expect("vote");
    assert_eq!(vote, Some(Vote::new(3, 2)));
}

#[test]
fn torn_tail_truncated_length_is_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), 5);
    let seg = segment(dir.path());
    let (last, _) = *record_offsets(&seg).last().expect("records");
    edit(&seg, |b| b.truncate(last + 5)); // only 5 bytes of the last header
    assert_eq!(indexes(dir.path()), vec![1, 2, 3, 4]);
    // And the store appends after the cut.
    let rt = rt();
    let mut log = open(dir.path()).expect("open");
    rt.block_on(log.blocking_append([entry(1, 5)]))
        .expect("append");
    drop(log);
    assert_eq!(indexes(dir.path()), vec![1, 2, 3, 4, 5]);
}

#[test]
fn torn_tail_short_payload_is_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), 5);
    let seg = segment(dir.path());
    let (last, len) = *record_offsets(&seg).last().expect("records");
    edit(&seg, |b| b.truncate(last + len - 1));
    assert_eq!(indexes(dir.path()), vec![1, 2, 3, 4]);
}

#[test]
fn torn_tail_crc_mismatch_in_last_record_is_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), 5);
    let seg = segment(dir.path());
    let (last, len) = *record_offsets(&seg).last().expect("records");
    edit(&seg, |b| b[last + len - 1] ^= 0xff);
    assert_eq!(indexes(dir.path()), vec![1, 2, 3, 4]);
}

#[test]
fn torn_tail_of_zeros_is_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), 5);
    let seg = segment(dir.path());
    edit(&seg, |b| b.extend_from_slice(&[0u8; 100]));
    assert_eq!(indexes(dir.path()), (1..=5).collect::<Vec<_>>());
}

#[test]
fn crc_mismatch_in_the_middle_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), 5);
    let seg = segment(dir.path());
    let (at, len) = record_offsets(&seg)[2];
    edit(&seg, |b| b[at + len - 1] ^= 0xff);
    let err = open(dir.path()).err().expect("must fail");
    assert_eq!(err.path, seg);
    assert!(err.what.contains("CRC mismatch"), "{err}");
    assert!(err.what.contains(&format!("offset {at}")), "{err}");
}

#[test]
fn bad_record_header_in_the_middle_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), 5);
    let seg = segment(dir.path());
    let (at, _) = record_offsets(&seg)[1];
    edit(&seg, |b| b[at] ^= 0x40); // the length
    let err = open(dir.path()).err().expect("must fail");
    assert_eq!(err.path, seg);
    assert!(err.what.contains("bad record header"), "{err}");
}

#[test]
fn bad_segment_header_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), 3);
    let seg = segment(dir.path());
    edit(&seg, |b| b[0] = b'X');
    let err = open(dir.path()).err().expect("must fail");
    assert_eq!(err.path, seg);
    assert!(err.what.contains("bad segment header"), "{err}");
}

#[test]
fn unreadable_vote_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), 3);
    let vote = dir.path().join("vote");
    edit(&vote, |b| {
        let n = b.len() - 1;
        b[n] ^= 0xff;
    });
    let err = open(dir.path()).err().expect("must fail");
    assert_eq!(err.path, vote);
    assert!(err.what.contains("CRC"), "{err}");
    // Truncated too.
    edit(&vote, |b| b.truncate(4));
    let err = open(dir.path()).err().expect("must fail");
    assert!(err.what.contains("truncated"), "{err}");
}

#[test]
fn unreadable_snapshot_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::create_dir_all(dir.path()).expect("mkdir");
    let path = dir.path().join("snapshot.bin");
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .expect("create");
    f.write_all(b"NCLSNAP1\x05\0\0\0\0\0\0\0\0\0\0\0abcde")
        .expect("write");
    drop(f);
    let err = StateMachine::open(dir.path(), Box::new(|_, _| {}))
        .err()
        .expect("must fail");
    assert_eq!(err.path, path);
    assert!(err.what.contains("CRC"), "{err}");
}

#[test]
fn segments_rotate_truncate_and_purge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let options = LogOptions {
        segment_bytes: 4096,
    };
    let mut log = LogStore::open(dir.path(), options.clone()).expect("open");
    rt.block_on(async {
        for i in 1..=1000 {
            log.blocking_append([entry(1, i)]).await.expect("append");
        }
    });
    let segs = || {
        fs::read_dir(dir.path())
            .expect("ls")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "wal"))
            })
            .count()
    };
    let before = segs();
    assert!(before > 2, "{before} segments");
    rt.block_on(async {
        log.truncate(LogId::new(CommittedLeaderId::new(1, 0), 300))
            .await
            .expect("truncate");
        assert_eq!(
            log.get_log_state()
                .await
                .expect("state")
                .last_log_id
                .map(|l| l.index),
            Some(299)
        );
        assert_eq!(
            log.get_log_state()
                .await
                .expect("state")
                .last_log_id
                .map(|l| l.index),
            Some(299)
        );
        log.blocking_append([entry(2, 300)]).await.expect("append");
        log.purge(LogId::new(CommittedLeaderId::new(1, 0), 250))
            .await
            .expect("purge");
    });
    drop(log);
    assert!(segs() < before);
    let mut log = LogStore::open(dir.path(), options).expect("reopen");
    let (state, entries) = rt.block_on(async {
        (
            log.get_log_state().await.expect("state"),
            log.try_get_log_entries(..).await.expect("read"),
        )
    });
    assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(250));
    assert_eq!(
        state.last_log_id,
        Some(LogId::new(CommittedLeaderId::new(2, 0), 300))
    );
    assert_eq!(entries.first().map(|e| e.log_id.index), Some(251));
    assert_eq!(entries.len(), 50);
}

#[test]
fn a_locked_directory_is_refused_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _held = nacelle_raft::files::DirLock::acquire(dir.path()).expect("first lock");
    let err = nacelle_raft::files::DirLock::acquire(dir.path()).expect_err("second lock must fail");
    assert_eq!(err.path, dir.path());
    assert!(err.what.contains("locked"), "{err}");
}
