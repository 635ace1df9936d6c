//! The state-machine adapter: openraft's [`RaftStateMachine`] over the engine's pure
//! [`Store`], and its snapshots.
//!
//! An entry's payload is a [`Batch`] of [`StoreCommand`]s, its response the
//! [`StoreResponse`] of each, in order. Every normal entry applied calls the effects sink with
//! its index and the [`StoreEffect`]s of its commands (possibly none), on the Raft thread, in
//! log order; a snapshot installed (or loaded at startup) calls it once with the diff.
//!
//! # Snapshots (`<data_dir>/raft/snapshot/snapshot.bin`)
//! `NCLSNAP1`, payload length (u64 LE), CRC32 (u32 LE), then postcard `(SnapshotMeta,
//! Store)`: the last applied log id and the membership travel with the data. These bytes are
//! also what is sent to a lagging follower (openraft cuts them into chunks of at most
//! `snapshot_max_chunk_size`). Building clones the store on the Raft thread and serialises
//! and writes it on a separate thread (temp + fsync + rename); installing a received one
//! decodes and writes it on a separate thread too, then replaces the store on the Raft thread.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use engine::store::{Store, StoreCommand, StoreEffect, StoreResponse};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EmptyNode, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use tokio::sync::{oneshot, watch};

use crate::files::{self, u32_at, u64_at, FileError};
use crate::{Batch, Entry, NodeId, TypeConfig};

const SNAPSHOT_MAGIC: &[u8; 8] = b"NCLSNAP1";
const SNAPSHOT_HEADER: usize = 20;

/// Receives the effects of every applied entry: `(log index, effects)`, on the Raft thread.
pub type EffectsSink = Box<dyn FnMut(u64, Vec<StoreEffect>) + Send + 'static>;

type Meta = SnapshotMeta<NodeId, EmptyNode>;

/// What the rest of the crate reads from the state machine without owning it.
#[derive(Debug, Default)]
pub struct SmShared {
    /// Records in the store.
    pub records: AtomicU64,
    /// Snapshots built here.
    pub built: AtomicU64,
    /// Snapshots installed from a leader.
    pub installed: AtomicU64,
}

/// The state machine handed to openraft.
pub struct StateMachine {
    store: Store,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, EmptyNode>,
    /// In a mutex only to be `Sync` (openraft's bound); reached through `get_mut`.
    sink: Mutex<EffectsSink>,
    applied_tx: watch::Sender<u64>,
    snap: Arc<SnapFile>,
    shared: Arc<SmShared>,
}

/// The snapshot file and the meta of what it holds; its mutex serialises writers.
struct SnapFile {
    path: PathBuf,
    meta: Mutex<Option<Meta>>,
    seq: AtomicU64,
}

/// Builds a snapshot from a clone of the store taken when openraft asked for the builder.
pub struct SnapshotBuilder {
    store: Option<Store>,
    meta: Meta,
    snap: Arc<SnapFile>,
    shared: Arc<SmShared>,
}

fn sm_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&std::io::Error::other(e.to_string())).into()
}

fn snap_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(None, &std::io::Error::other(e.to_string())).into()
}

/// Runs `f` on a thread of its own and waits for it without blocking the Raft thread.
async fn off_thread<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    rx.await.map_err(|_| "the snapshot thread died".to_string())
}

/// Encodes a snapshot file.
pub fn encode_snapshot(meta: &Meta, store: &Store) -> Result<Vec<u8>, postcard::Error> {
    let payload = postcard::to_stdvec(&(meta, store))?;
    let mut out = Vec::with_capacity(SNAPSHOT_HEADER + payload.len());
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Checks a snapshot's frame (magic, length, CRC) and returns its payload.
fn snapshot_payload<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a [u8], FileError> {
    if bytes.len() < SNAPSHOT_HEADER {
        return Err(FileError::new(
            path,
            "truncated snapshot (shorter than its header)",
        ));
    }
    if &bytes[..8] != SNAPSHOT_MAGIC {
        return Err(FileError::new(path, "bad snapshot header"));
    }
    let len = u64_at(bytes, 8);
    let crc = u32_at(bytes, 16);
    let payload = &bytes[SNAPSHOT_HEADER..];
    if payload.len() as u64 != len {
        return Err(FileError::new(
            path,
            format!(
                "snapshot length mismatch: header says {len}, holds {}",
                payload.len()
            ),
        ));
    }
    if crc32fast::hash(payload) != crc {
        return Err(FileError::new(path, "snapshot CRC mismatch"));
    }
    Ok(payload)
}

/// Decodes a snapshot file (frame, then contents); errors name `path`.
pub fn decode_snapshot(path: &Path, bytes: &[u8]) -> Result<(Meta, Store), FileError> {
    let payload = snapshot_payload(path, bytes)?;
    match postcard::from_bytes(payload) {
        Ok(v) => Ok(v),
        // Snapshots written before the namespaces and auth key spaces existed hold the naming
        // space only.
        Err(e) => match postcard::from_bytes::<(Meta, engine::store::NamingSpace)>(payload) {
            Ok((meta, naming)) => Ok((
                meta,
                Store {
                    naming,
                    ..Store::default()
                },
            )),
            Err(_) => Err(FileError::new(path, format!("undecodable snapshot: {e}"))),
        },
    }
}

impl StateMachine {
    /// Opens the state machine under `dir` (`<data_dir>/raft/snapshot`): loads the snapshot
    /// when there is one (calling `sink` with its contents as effects), fails naming the file
    /// when it is unreadable.
    pub fn open(
        dir: &Path,
        mut sink: EffectsSink,
    ) -> Result<(StateMachine, watch::Receiver<u64>, Arc<SmShared>), FileError> {
        files::ensure_dir(dir)?;
        let path = dir.join("snapshot.bin");
        let _ = std::fs::remove_file(files::tmp_path(&path));
        let loaded = match std::fs::read(&path) {
            Ok(bytes) => Some(decode_snapshot(&path, &bytes)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(FileError::io(&path, "cannot read", &e)),
        };
        let mut store = Store::default();
        let (meta, last_applied, membership) = match loaded {
            Some((meta, new)) => {
                let mut effects = Vec::new();
                store.replace_with(new, &mut effects);
                if let Some(l) = meta.last_log_id {
                    sink(l.index, effects);
                }
                let (la, m) = (meta.last_log_id, meta.last_membership.clone());
                (Some(meta), la, m)
            }
            None => (None, None, StoredMembership::default()),
        };
        let (applied_tx, applied_rx) = watch::channel(last_applied.map_or(0, |l| l.index + 1));
        let shared = Arc::new(SmShared::default());
        shared.records.store(store.len() as u64, Ordering::Relaxed);
        let sm = StateMachine {
            store,
            last_applied,
            membership,
            sink: Mutex::new(sink),
            applied_tx,
            snap: Arc::new(SnapFile {
                path,
                meta: Mutex::new(meta),
                seq: AtomicU64::new(0),
            }),
            shared: shared.clone(),
        };
        Ok((sm, applied_rx, shared))
    }

    /// The store as applied so far (tests, diagnostics).
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn emit(&mut self, index: u64, effects: Vec<StoreEffect>) {
        let sink = self.sink.get_mut().unwrap_or_else(|p| p.into_inner());
        sink(index, effects);
    }

    fn applied(&mut self) {
        let next = self.last_applied.map_or(0, |l| l.index + 1);
        self.applied_tx.send_replace(next);
        self.shared
            .records
            .store(self.store.len() as u64, Ordering::Relaxed);
    }
}

fn lock_meta(snap: &SnapFile) -> std::sync::MutexGuard<'_, Option<Meta>> {
    snap.meta.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes `bytes` as the snapshot file unless a newer one is already there.
fn persist_snapshot(snap: &SnapFile, meta: &Meta, bytes: &[u8]) -> Result<bool, FileError> {
    let mut current = lock_meta(snap);
    if current
        .as_ref()
        .is_some_and(|c| c.last_log_id > meta.last_log_id)
    {
        return Ok(false);
    }
    files::write_atomic(&snap.path, bytes)?;
    *current = Some(meta.clone());
    Ok(true)
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let store = self.store.take().unwrap_or_default();
        let meta = self.meta.clone();
        let snap = self.snap.clone();
        let bytes = off_thread("nacelle-raft-snap", move || {
            let bytes = encode_snapshot(&meta, &store).map_err(|e| e.to_string())?;
            drop(store);
            persist_snapshot(&snap, &meta, &bytes).map_err(|e| e.to_string())?;
            Ok::<_, String>(bytes)
        })
        .await
        .map_err(snap_err)?
        .map_err(snap_err)?;
        self.shared.built.fetch_add(1, Ordering::Relaxed);
        tracing::info!(snapshot = %self.meta.snapshot_id, bytes = bytes.len(), "raft: snapshot built");
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, EmptyNode>), StorageError<NodeId>>
    {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(
        &mut self,
        entries: I,
    ) -> Result<Vec<Vec<StoreResponse>>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => out.push(Vec::new()),
                EntryPayload::Normal(Batch(cmds)) => {
                    let mut effects = Vec::new();
                    let responses = cmds
                        .iter()
                        .map(|c: &StoreCommand| self.store.apply(c, &mut effects))
                        .collect();
                    self.emit(entry.log_id.index, effects);
                    out.push(responses);
                }
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    out.push(Vec::new());
                }
            }
        }
        self.applied();
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let seq = self.snap.seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match self.last_applied {
            Some(l) => format!("{}-{}-{seq}", l.leader_id.term, l.index),
            None => format!("none-{seq}"),
        };
        SnapshotBuilder {
            store: Some(self.store.clone()),
            meta: SnapshotMeta {
                last_log_id: self.last_applied,
                last_membership: self.membership.clone(),
                snapshot_id,
            },
            snap: self.snap.clone(),
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = snapshot.into_inner();
        let snap = self.snap.clone();
        let want = meta.clone();
        let store = off_thread("nacelle-raft-install", move || {
            let (got, store) = decode_snapshot(&snap.path, &bytes).map_err(|e| e.to_string())?;
            if got.last_log_id != want.last_log_id {
                return Err(format!(
                    "received snapshot holds {:?}, announced {:?}",
                    got.last_log_id, want.last_log_id
                ));
            }
            persist_snapshot(&snap, &want, &bytes).map_err(|e| e.to_string())?;
            Ok(store)
        })
        .await
        .map_err(sm_err)?
        .map_err(sm_err)?;
        let mut effects = Vec::new();
        self.store.replace_with(store, &mut effects);
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        if let Some(l) = meta.last_log_id {
            self.emit(l.index, effects);
        }
        self.applied();
        self.shared.installed.fetch_add(1, Ordering::Relaxed);
        tracing::info!(snapshot = %meta.snapshot_id, "raft: snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let snap = self.snap.clone();
        off_thread("nacelle-raft-snapread", move || {
            let current = lock_meta(&snap);
            let Some(meta) = current.clone() else {
                return Ok::<_, String>(None);
            };
            let bytes = std::fs::read(&snap.path)
                .map_err(|e| FileError::io(&snap.path, "cannot read", &e).to_string())?;
            snapshot_payload(&snap.path, &bytes).map_err(|e| e.to_string())?;
            Ok(Some(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(bytes)),
            }))
        })
        .await
        .map_err(snap_err)?
        .map_err(snap_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::store::naming::{PersistentInstance, ServiceRef};
    use engine::store::{AuthCommand, NamingCommand};

    fn store_with_naming() -> Store {
        let mut store = Store::default();
        let cmd = StoreCommand::Naming(NamingCommand::Register {
            service: ServiceRef {
                namespace: String::new(),
                group: "G".into(),
                name: "s".into(),
            },
            instance: PersistentInstance {
                ip: "127.0.0.1".into(),
                port: 80,
                cluster: "DEFAULT".into(),
                weight: 1.0,
                healthy: true,
                enabled: true,
                metadata: Default::default(),
            },
        });
        store.apply(&cmd, &mut Vec::new());
        store
    }

    #[test]
    fn a_snapshot_without_the_auth_space_still_loads() {
        let store = store_with_naming();
        let meta = Meta::default();
        // The format before the auth key space: (meta, naming space), framed the same way.
        let payload = postcard::to_stdvec(&(&meta, &store.naming)).unwrap_or_default();
        let mut old = Vec::new();
        old.extend_from_slice(SNAPSHOT_MAGIC);
        old.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        old.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        old.extend_from_slice(&payload);
        let (_, loaded) = decode_snapshot(Path::new("old"), &old).expect("old snapshot loads");
        assert_eq!(loaded.naming, store.naming);
        assert!(loaded.auth.is_empty());
    }

    #[test]
    fn a_snapshot_carries_the_auth_space() {
        let mut store = store_with_naming();
        let cmd = StoreCommand::Auth(AuthCommand::InitSecret {
            secret: vec![9; 32],
        });
        store.apply(&cmd, &mut Vec::new());
        let bytes = encode_snapshot(&Meta::default(), &store).expect("encodes");
        let (_, loaded) = decode_snapshot(Path::new("new"), &bytes).expect("loads");
        assert_eq!(loaded, store);
        assert_eq!(loaded.auth.secret(), Some(&[9u8; 32][..]));
    }
}
