//! The node-to-node codec: [`Frame`]s between cluster members as flatbuffers
//! (`schemas/peer.fbs`).
//!
//! # Frame format
//! A connection carries a stream of frames, each a `u32` little-endian length `n` followed by
//! `n` bytes of one `Frame` flatbuffer (the *frame body*; no file identifier). The first frame
//! each way is [`Frame::Hello`]. [`FrameReader`] splits a byte stream into bodies and refuses a
//! length over its maximum before buffering it; [`peek_partition`] reads the partition of a
//! body without decoding it, so the IO core can hand the bytes to the core that owns the
//! partition, which then calls [`decode_frame`].
//!
//! # Why flatbuffers, and why this shape
//! Replication moves batches of up to 512 changes and snapshot chunks of 2,000 clients, so the
//! encoder must be cheap: [`Encoder`] reuses one builder and its scratch space for every frame
//! (no allocation per field or per frame once warm), writes scalars equal to their schema
//! default not at all, and shares what repeats inside a frame — a service table written once
//! per distinct service, one copy of each namespace, group, cluster and node string.
//!
//! The bytes come from the network, so decoding trusts nothing: the buffer is verified with
//! bounded depth, table count and apparent size, then every value is checked as a request
//! from a client would be (service keys by [`ServiceKey::new`], instances by
//! [`Instance::from_parts`], metadata parsed as JSON, unknown kinds refused). A peer can make a
//! frame fail; it cannot make this code panic or store what a client could not.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use engine::distro::{
    ClientHash, ClientState, EntryState, NodeId, PeerMsg, SyncItem, PARTITIONS, SLICES,
};
use engine::model::validate_cluster_name;
use engine::shard::InstancePatch;
use engine::{
    ClientId, ClientOp, Host, Instance, Metadata, OpError, OpOutcome, OpResult, ServiceKey, Str,
};
use flatbuffers::{
    FlatBufferBuilder, ForwardsUOffset, UnionWIPOffset, Vector, VerifierOptions, WIPOffset,
};

use crate::peer_fb as fb;

/// Largest frame body [`FrameReader::default`] accepts (16 MiB). A sync batch of 512
/// one-instance upserts is about 64 KiB and a snapshot chunk of 2,000 one-instance clients
/// about 300 KiB, so this only stops a broken or hostile peer from making a node buffer
/// without bound (and a client publishing in thousands of services still fits).
pub const MAX_FRAME: usize = 16 << 20;

/// Bytes of the length prefix before every frame body.
pub const LENGTH_PREFIX: usize = 4;

/// Verifier limits for a frame body. The apparent size (a frame's size with every shared table
/// and string counted at each use) bounds the verifier's work on a frame that points many
/// times at one big vector; 64 MiB is four times [`MAX_FRAME`], more than sharing ever saves.
const VERIFIER: VerifierOptions = VerifierOptions {
    // Frame → Partition → SnapshotChunk → SnapshotClient → Entry → Instance is 6 levels.
    max_depth: 16,
    // A table is at least 4 bytes, so a full 16 MiB frame holds at most 4 Mi of them;
    // shared tables are counted at each use.
    max_tables: 8 << 20,
    max_apparent_size: 64 << 20,
    ignore_missing_null_terminator: false,
};

/// One message between two nodes.
#[derive(Clone, Debug)]
pub enum Frame {
    /// The first frame on a connection, each way: who is talking, and which run of it (a node
    /// that restarted has a new incarnation, so the peer knows its old state is gone).
    Hello {
        /// The sender.
        node: NodeId,
        /// The sender's incarnation (e.g. its start time).
        incarnation: u64,
    },
    /// Distro traffic of one partition, handled by the core that owns the partition.
    Partition {
        /// Partition, `< PARTITIONS`.
        partition: u16,
        /// The message.
        msg: PeerMsg,
    },
    /// An HTTP write that arrived here for a client another node is responsible for.
    Forward {
        /// Sender-chosen id, echoed by the [`Frame::ForwardReply`].
        id: u64,
        /// The client the operation is for.
        client: ClientId,
        /// The operation (Register, Deregister, Update or Beat in practice).
        op: ClientOp,
    },
    /// The outcome of a [`Frame::Forward`].
    ForwardReply {
        /// The forward's id.
        id: u64,
        /// Its outcome.
        result: OpResult,
    },
    /// The members the sender has a working connection to. A member that is down for the
    /// receiver but reachable by a member it can reach is alive (see the server's cluster
    /// module: indirect reachability).
    Reachable {
        /// Members the sender reaches (at most [`MAX_REACHABLE`]).
        up: Vec<NodeId>,
    },
}

/// Most members a [`Frame::Reachable`] lists (a cluster is a handful of nodes; a bound keeps a
/// hostile frame small).
pub const MAX_REACHABLE: usize = 256;

/// Why bytes from a peer were refused. After any of these the connection's state is unknown,
/// so the caller should close it (the peer reconnects and verify repairs what was lost).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerDecodeError {
    /// The body is not a well-formed `Frame` flatbuffer: truncated, corrupt, or over the
    /// verifier's depth, table or size limits.
    Malformed(String),
    /// Well-formed, but a value is missing, of an unknown kind, or not acceptable.
    Invalid(String),
    /// A length prefix announced a frame body larger than the reader's maximum.
    TooLarge {
        /// Announced length.
        len: usize,
        /// Largest accepted.
        max: usize,
    },
}

impl fmt::Display for PeerDecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerDecodeError::Malformed(m) => write!(f, "malformed peer frame: {m}"),
            PeerDecodeError::Invalid(m) => write!(f, "invalid peer frame: {m}"),
            PeerDecodeError::TooLarge { len, max } => {
                write!(f, "peer frame of {len} bytes is over the limit of {max}")
            }
        }
    }
}

impl std::error::Error for PeerDecodeError {}

fn invalid(msg: impl Into<String>) -> PeerDecodeError {
    PeerDecodeError::Invalid(msg.into())
}

// ---------------------------------------------------------------------------------------------
// Encoding

/// Encodes frames, reusing one flatbuffer builder and its scratch space, so that a warm
/// encoder allocates nothing per frame. Hold one per connection or per core.
pub struct Encoder {
    fbb: FlatBufferBuilder<'static>,
    /// Offsets of the elements of the vectors under construction, innermost last (vectors
    /// nest: a snapshot's clients hold entries that hold instances).
    stack: Vec<u32>,
    /// Service tables already written in this frame, by the address of the key's allocation
    /// (keys are interned, so one service is one address; the frame borrows every key for the
    /// whole encode, so an address cannot be reused by another key meanwhile).
    services: HashMap<usize, u32>,
    /// Strings written once per frame (clusters, node ids), by the address and length of the
    /// caller's text: those are shared `Arc<str>`s, so a pointer comparison finds them
    /// cheaper than the builder's own pool, which compares bytes.
    shared: Vec<(usize, usize, u32)>,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder::new()
    }
}

impl fmt::Debug for Encoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encoder").finish_non_exhaustive()
    }
}

type Off<T> = WIPOffset<T>;
type FbVec<T> = WIPOffset<Vector<'static, ForwardsUOffset<T>>>;

impl Encoder {
    /// An encoder whose buffer grows to the largest frame it has written.
    pub fn new() -> Encoder {
        Encoder::with_capacity(4096)
    }

    /// An encoder with room for a frame of `bytes` before it first grows.
    pub fn with_capacity(bytes: usize) -> Encoder {
        Encoder {
            fbb: FlatBufferBuilder::with_capacity(bytes),
            stack: Vec::new(),
            services: HashMap::new(),
            shared: Vec::new(),
        }
    }

    /// Appends `frame` to `out`: its length as a `u32` little-endian, then its body.
    pub fn encode_frame(&mut self, frame: &Frame, out: &mut Vec<u8>) {
        self.fbb.reset();
        self.stack.clear();
        self.services.clear();
        self.shared.clear();
        let (body_type, body) = match frame {
            Frame::Hello { node, incarnation } => {
                let node = self.fbb.create_string(node.as_str());
                let t = fb::Hello::create(
                    &mut self.fbb,
                    &fb::HelloArgs {
                        node: Some(node),
                        incarnation: *incarnation,
                    },
                );
                (fb::FrameBody::Hello, t.as_union_value())
            }
            Frame::Partition { partition, msg } => {
                let (msg_type, msg) = self.peer_msg(msg);
                let t = fb::Partition::create(
                    &mut self.fbb,
                    &fb::PartitionArgs {
                        partition: *partition,
                        msg_type,
                        msg: Some(msg),
                    },
                );
                (fb::FrameBody::Partition, t.as_union_value())
            }
            Frame::Forward { id, client, op } => {
                let client = self.client(client);
                let (op_type, op) = self.client_op(op);
                let t = fb::Forward::create(
                    &mut self.fbb,
                    &fb::ForwardArgs {
                        id: *id,
                        client: Some(client),
                        op_type,
                        op: Some(op),
                    },
                );
                (fb::FrameBody::Forward, t.as_union_value())
            }
            Frame::ForwardReply { id, result } => {
                let (kind, interval_ms, message) = match result {
                    Ok(OpOutcome::Changed) => (fb::ResultKind::Changed, 0, None),
                    Ok(OpOutcome::Unchanged) => (fb::ResultKind::Unchanged, 0, None),
                    Ok(OpOutcome::Beat { interval_ms }) => {
                        (fb::ResultKind::Beat, *interval_ms, None)
                    }
                    Err(OpError::NotFound(m)) => (fb::ResultKind::NotFound, 0, Some(m)),
                    Err(OpError::Invalid(m)) => (fb::ResultKind::Invalid, 0, Some(m)),
                    Err(OpError::Conflict(m)) => (fb::ResultKind::Conflict, 0, Some(m)),
                    Err(OpError::Unavailable(m)) => (fb::ResultKind::Unavailable, 0, Some(m)),
                };
                let message = message.map(|m| self.fbb.create_string(m));
                let t = fb::ForwardReply::create(
                    &mut self.fbb,
                    &fb::ForwardReplyArgs {
                        id: *id,
                        result: kind,
                        interval_ms,
                        message,
                    },
                );
                (fb::FrameBody::ForwardReply, t.as_union_value())
            }
            Frame::Reachable { up } => {
                let names: Vec<_> = up
                    .iter()
                    .take(MAX_REACHABLE)
                    .map(|n| self.fbb.create_string(n.as_str()))
                    .collect();
                let up = self.fbb.create_vector(&names);
                let t = fb::Reachable::create(&mut self.fbb, &fb::ReachableArgs { up: Some(up) });
                (fb::FrameBody::Reachable, t.as_union_value())
            }
        };
        let root = fb::Frame::create(
            &mut self.fbb,
            &fb::FrameArgs {
                body_type,
                body: Some(body),
            },
        );
        self.fbb.finish_minimal(root);
        let data = self.fbb.finished_data();
        // The builder refuses to grow past 2 GiB, so the length always fits.
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        out.reserve(LENGTH_PREFIX + data.len());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(data);
    }

    fn peer_msg(&mut self, msg: &PeerMsg) -> (fb::PeerMsg, Off<UnionWIPOffset>) {
        let fbb = &mut self.fbb;
        match msg {
            PeerMsg::Sync { seq, items } => {
                let base = self.stack.len();
                for item in items {
                    let o = self.sync_item(item);
                    self.stack.push(o.value());
                }
                let items = self.vector::<fb::SyncItem>(base);
                let t = fb::Sync::create(
                    &mut self.fbb,
                    &fb::SyncArgs {
                        seq: *seq,
                        items: Some(items),
                    },
                );
                (fb::PeerMsg::Sync, t.as_union_value())
            }
            PeerMsg::SyncAck { seq } => {
                let t = fb::SyncAck::create(fbb, &fb::SyncAckArgs { seq: *seq });
                (fb::PeerMsg::SyncAck, t.as_union_value())
            }
            PeerMsg::Digest { round, root, clock } => {
                let t = fb::Digest::create(
                    fbb,
                    &fb::DigestArgs {
                        round: *round,
                        root: *root,
                        clock: *clock,
                    },
                );
                (fb::PeerMsg::Digest, t.as_union_value())
            }
            PeerMsg::SliceDigests { round, slices } => {
                let slices = fbb.create_vector(slices);
                let t = fb::SliceDigests::create(
                    fbb,
                    &fb::SliceDigestsArgs {
                        round: *round,
                        slices: Some(slices),
                    },
                );
                (fb::PeerMsg::SliceDigests, t.as_union_value())
            }
            PeerMsg::SliceClients {
                round,
                as_of,
                matched,
                lists,
            } => {
                let base = self.stack.len();
                for (slice, clients) in lists {
                    let inner = self.stack.len();
                    for ch in clients {
                        let client = self.client(&ch.client);
                        let o = fb::ClientHash::create(
                            &mut self.fbb,
                            &fb::ClientHashArgs {
                                client: Some(client),
                                state_hash: ch.state_hash,
                            },
                        );
                        self.stack.push(o.value());
                    }
                    let clients = self.vector::<fb::ClientHash>(inner);
                    let o = fb::SliceList::create(
                        &mut self.fbb,
                        &fb::SliceListArgs {
                            slice: *slice,
                            clients: Some(clients),
                        },
                    );
                    self.stack.push(o.value());
                }
                let lists = self.vector::<fb::SliceList>(base);
                let matched = self.fbb.create_vector(matched);
                let t = fb::SliceClients::create(
                    &mut self.fbb,
                    &fb::SliceClientsArgs {
                        round: *round,
                        as_of: *as_of,
                        matched: Some(matched),
                        lists: Some(lists),
                    },
                );
                (fb::PeerMsg::SliceClients, t.as_union_value())
            }
            PeerMsg::Resync { clients } => {
                let base = self.stack.len();
                for c in clients {
                    let o = self.client(c);
                    self.stack.push(o.value());
                }
                let clients = self.vector::<fb::Client>(base);
                let t = fb::Resync::create(
                    &mut self.fbb,
                    &fb::ResyncArgs {
                        clients: Some(clients),
                    },
                );
                (fb::PeerMsg::Resync, t.as_union_value())
            }
            PeerMsg::SnapshotRequest { id } => {
                let t = fb::SnapshotRequest::create(fbb, &fb::SnapshotRequestArgs { id: *id });
                (fb::PeerMsg::SnapshotRequest, t.as_union_value())
            }
            PeerMsg::SnapshotChunk {
                id,
                seq,
                clients,
                done,
            } => {
                let base = self.stack.len();
                for (node, state) in clients {
                    let entries = self.entries(&state.entries);
                    let client = self.client(&state.client);
                    // A chunk names a handful of nodes 2,000 times: one copy each.
                    let node = self.shared_string(node.as_str());
                    let o = fb::SnapshotClient::create(
                        &mut self.fbb,
                        &fb::SnapshotClientArgs {
                            node: Some(node),
                            client: Some(client),
                            rev: state.rev,
                            entries: Some(entries),
                        },
                    );
                    self.stack.push(o.value());
                }
                let clients = self.vector::<fb::SnapshotClient>(base);
                let t = fb::SnapshotChunk::create(
                    &mut self.fbb,
                    &fb::SnapshotChunkArgs {
                        id: *id,
                        seq: *seq,
                        clients: Some(clients),
                        done: *done,
                    },
                );
                (fb::PeerMsg::SnapshotChunk, t.as_union_value())
            }
            PeerMsg::SnapshotAck { id, seq } => {
                let t = fb::SnapshotAck::create(fbb, &fb::SnapshotAckArgs { id: *id, seq: *seq });
                (fb::PeerMsg::SnapshotAck, t.as_union_value())
            }
        }
    }

    fn sync_item(&mut self, item: &SyncItem) -> Off<fb::SyncItem<'static>> {
        let mut args = fb::SyncItemArgs::default();
        let client = match item {
            SyncItem::Upsert { client, entry } => {
                args.kind = fb::SyncKind::Upsert;
                args.rev = entry.rev;
                args.service = Some(self.service(&entry.service));
                args.instances = Some(self.instances(&entry.publish));
                client
            }
            SyncItem::Remove {
                client,
                service,
                rev,
            } => {
                args.kind = fb::SyncKind::Remove;
                args.rev = *rev;
                args.service = Some(self.service(service));
                client
            }
            SyncItem::Full(state) => {
                args.kind = fb::SyncKind::Full;
                args.rev = state.rev;
                args.entries = Some(self.entries(&state.entries));
                &state.client
            }
            SyncItem::Drop { client, rev } => {
                args.kind = fb::SyncKind::Drop;
                args.rev = *rev;
                client
            }
        };
        args.client = Some(self.client(client));
        fb::SyncItem::create(&mut self.fbb, &args)
    }

    fn entries(&mut self, entries: &[EntryState]) -> FbVec<fb::Entry<'static>> {
        let base = self.stack.len();
        for e in entries {
            let service = self.service(&e.service);
            let instances = self.instances(&e.publish);
            let o = fb::Entry::create(
                &mut self.fbb,
                &fb::EntryArgs {
                    service: Some(service),
                    rev: e.rev,
                    instances: Some(instances),
                },
            );
            self.stack.push(o.value());
        }
        self.vector::<fb::Entry>(base)
    }

    fn instances(&mut self, instances: &[Instance]) -> FbVec<fb::Instance<'static>> {
        let base = self.stack.len();
        for i in instances {
            let o = self.instance(i);
            self.stack.push(o.value());
        }
        self.vector::<fb::Instance>(base)
    }

    fn instance(&mut self, i: &Instance) -> Off<fb::Instance<'static>> {
        let host = self.host(&i.host);
        // Few distinct clusters ("DEFAULT" mostly): one copy per frame.
        let cluster = self.shared_string(&i.cluster);
        let metadata =
            (!i.metadata().is_empty()).then(|| self.fbb.create_string(i.metadata().json()));
        let instance_id = i.instance_id().map(|id| self.fbb.create_string(id));
        fb::Instance::create(
            &mut self.fbb,
            &fb::InstanceArgs {
                host: Some(host),
                port: i.port,
                weight: i.weight,
                healthy: i.healthy,
                enabled: i.enabled,
                cluster: Some(cluster),
                metadata,
                instance_id,
            },
        )
    }

    fn host(&mut self, host: &Host) -> Off<&'static str> {
        match host {
            Host::V4(a) => {
                let mut buf = [0u8; 15];
                let n = write_ipv4(*a, &mut buf);
                // Digits and dots: valid UTF-8, written without a `String` in between.
                let o = self.fbb.create_byte_string(&buf[..n]);
                WIPOffset::new(o.value())
            }
            Host::Name(n) => self.fbb.create_string(n),
        }
    }

    /// A string that repeats in a frame, written once.
    fn shared_string(&mut self, s: &str) -> Off<&'static str> {
        let key = (s.as_ptr() as usize, s.len());
        if let Some(&(_, _, o)) = self.shared.iter().find(|(p, l, _)| (*p, *l) == key) {
            return WIPOffset::new(o);
        }
        // Equal text at another address still gets one copy, through the builder's pool.
        let o = self.fbb.create_shared_string(s);
        if self.shared.len() < SHARED_STRINGS {
            self.shared.push((key.0, key.1, o.value()));
        }
        o
    }

    fn service(&mut self, key: &ServiceKey) -> Off<fb::Service<'static>> {
        if let Some(&o) = self.services.get(&key.addr()) {
            return WIPOffset::new(o);
        }
        let namespace = self.fbb.create_shared_string(key.namespace());
        let group = self.fbb.create_shared_string(key.group());
        let name = self.fbb.create_string(key.name());
        let o = fb::Service::create(
            &mut self.fbb,
            &fb::ServiceArgs {
                namespace: Some(namespace),
                group: Some(group),
                name: Some(name),
            },
        );
        self.services.insert(key.addr(), o.value());
        o
    }

    fn client(&mut self, c: &ClientId) -> Off<fb::Client<'static>> {
        let args = match c {
            ClientId::Conn(id) => fb::ClientArgs {
                kind: fb::ClientKind::Conn,
                conn: *id,
                ..Default::default()
            },
            ClientId::V4(ip, port) => fb::ClientArgs {
                kind: fb::ClientKind::V4,
                ip: u32::from(*ip),
                port: *port,
                ..Default::default()
            },
            ClientId::Named(name, port) => fb::ClientArgs {
                kind: fb::ClientKind::Named,
                port: *port,
                name: Some(self.fbb.create_string(name)),
                ..Default::default()
            },
        };
        fb::Client::create(&mut self.fbb, &args)
    }

    fn client_op(&mut self, op: &ClientOp) -> (fb::ClientOp, Off<UnionWIPOffset>) {
        match op {
            ClientOp::Register { service, instance } => {
                let service = self.service(service);
                let instance = self.instance(instance);
                let t = fb::Register::create(
                    &mut self.fbb,
                    &fb::RegisterArgs {
                        service: Some(service),
                        instance: Some(instance),
                    },
                );
                (fb::ClientOp::Register, t.as_union_value())
            }
            ClientOp::BatchRegister { service, instances } => {
                let service = self.service(service);
                let instances = self.instances(instances);
                let t = fb::BatchRegister::create(
                    &mut self.fbb,
                    &fb::BatchRegisterArgs {
                        service: Some(service),
                        instances: Some(instances),
                    },
                );
                (fb::ClientOp::BatchRegister, t.as_union_value())
            }
            ClientOp::Deregister {
                service,
                host,
                port,
                cluster,
            } => {
                let service = self.service(service);
                let host = self.host(host);
                let cluster = self.fbb.create_string(cluster);
                let t = fb::Deregister::create(
                    &mut self.fbb,
                    &fb::DeregisterArgs {
                        service: Some(service),
                        host: Some(host),
                        port: *port,
                        cluster: Some(cluster),
                    },
                );
                (fb::ClientOp::Deregister, t.as_union_value())
            }
            ClientOp::Update {
                service,
                host,
                port,
                cluster,
                patch,
            } => {
                let service = self.service(service);
                let host = self.host(host);
                let cluster = self.fbb.create_string(cluster);
                let metadata = patch
                    .metadata
                    .as_ref()
                    .map(|m| self.fbb.create_string(m.json()));
                let t = fb::Update::create(
                    &mut self.fbb,
                    &fb::UpdateArgs {
                        service: Some(service),
                        host: Some(host),
                        port: *port,
                        cluster: Some(cluster),
                        weight: patch.weight,
                        enabled: patch.enabled,
                        healthy: patch.healthy,
                        metadata,
                    },
                );
                (fb::ClientOp::Update, t.as_union_value())
            }
            ClientOp::Beat {
                service,
                host,
                port,
                cluster,
                reregister,
            } => {
                let service = self.service(service);
                let host = self.host(host);
                let cluster = self.fbb.create_string(cluster);
                let reregister = reregister.as_ref().map(|i| self.instance(i));
                let t = fb::Beat::create(
                    &mut self.fbb,
                    &fb::BeatArgs {
                        service: Some(service),
                        host: Some(host),
                        port: *port,
                        cluster: Some(cluster),
                        reregister,
                    },
                );
                (fb::ClientOp::Beat, t.as_union_value())
            }
            ClientOp::Subscribe { service, clusters } => {
                let service = self.service(service);
                let clusters = self.fbb.create_string(clusters);
                let t = fb::Subscribe::create(
                    &mut self.fbb,
                    &fb::SubscribeArgs {
                        service: Some(service),
                        clusters: Some(clusters),
                    },
                );
                (fb::ClientOp::Subscribe, t.as_union_value())
            }
            ClientOp::Unsubscribe { service } => {
                let service = self.service(service);
                let t = fb::Unsubscribe::create(
                    &mut self.fbb,
                    &fb::UnsubscribeArgs {
                        service: Some(service),
                    },
                );
                (fb::ClientOp::Unsubscribe, t.as_union_value())
            }
            ClientOp::Disconnect => {
                let t = fb::Disconnect::create(&mut self.fbb, &fb::DisconnectArgs {});
                (fb::ClientOp::Disconnect, t.as_union_value())
            }
        }
    }

    /// Writes the vector of the offsets pushed on the stack since `base` and pops them.
    fn vector<T>(&mut self, base: usize) -> FbVec<T> {
        let items = &self.stack[base..];
        self.fbb.start_vector::<Off<T>>(items.len());
        // Flatbuffers are built back to front: the last element goes in first.
        for &o in items.iter().rev() {
            self.fbb.push(WIPOffset::<T>::new(o));
        }
        let v = self.fbb.end_vector(items.len());
        self.stack.truncate(base);
        v
    }
}

thread_local! {
    static ENCODER: RefCell<Encoder> = RefCell::new(Encoder::new());
}

/// Appends one frame to `out`: its body length as a `u32` little-endian, then the body.
///
/// Uses a per-thread [`Encoder`] (every core of the server is one thread), so it allocates
/// nothing once warm; a thread that encoded a frame over 1 MiB gets a fresh encoder afterwards
/// rather than keeping that much memory for good.
pub fn encode_frame(frame: &Frame, out: &mut Vec<u8>) {
    let before = out.len();
    let reused = ENCODER.with(|cell| match cell.try_borrow_mut() {
        Ok(mut enc) => {
            enc.encode_frame(frame, out);
            if out.len() - before > 1 << 20 {
                *enc = Encoder::new();
            }
            true
        }
        Err(_) => false,
    });
    if !reused {
        Encoder::new().encode_frame(frame, out);
    }
}

/// Writes the canonical dotted quad of `a` into `buf`; returns its length.
fn write_ipv4(a: Ipv4Addr, buf: &mut [u8; 15]) -> usize {
    let mut n = 0;
    for (i, octet) in a.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        let mut digits = itoa::Buffer::new();
        let d = digits.format(octet).as_bytes();
        buf[n..n + d.len()].copy_from_slice(d);
        n += d.len();
    }
    n
}

// ---------------------------------------------------------------------------------------------
// Routing without decoding

/// The partition of a [`Frame::Partition`] body, or `None` for another kind of frame or bytes
/// that do not lead to a partition below `PARTITIONS`.
///
/// Reads two tables by hand with bounds-checked slices, no verification, so it costs the same
/// for a 16 MiB snapshot chunk as for an ack: the IO core uses it to pick the core that decodes
/// the frame, and [`decode_frame`] still checks everything there.
pub fn peek_partition(frame_body: &[u8]) -> Option<u16> {
    let buf = frame_body;
    let root = read_u32(buf, 0)? as usize;
    let body_type = match field_pos(buf, root, fb::Frame::VT_BODY_TYPE)? {
        Some(pos) => *buf.get(pos)?,
        None => return None, // NONE: no body.
    };
    if body_type != fb::FrameBody::Partition.0 {
        return None;
    }
    let body_at = field_pos(buf, root, fb::Frame::VT_BODY)??;
    let table = body_at.checked_add(read_u32(buf, body_at)? as usize)?;
    let partition = match field_pos(buf, table, fb::Partition::VT_PARTITION)? {
        Some(pos) => read_u16(buf, pos)?,
        None => 0, // Scalars equal to their default are not written.
    };
    (partition < PARTITIONS).then_some(partition)
}

/// Where field `voffset` of the table at `table` is: `Some(None)` if the table omits it,
/// `None` if the bytes do not hold such a table.
fn field_pos(buf: &[u8], table: usize, voffset: u16) -> Option<Option<usize>> {
    let soffset = i64::from(read_u32(buf, table)? as i32);
    let vtable = usize::try_from(i64::try_from(table).ok()?.checked_sub(soffset)?).ok()?;
    let vtable_len = read_u16(buf, vtable)?;
    if voffset.checked_add(2)? > vtable_len {
        return Some(None);
    }
    let field = read_u16(buf, vtable.checked_add(usize::from(voffset))?)?;
    if field == 0 {
        return Some(None);
    }
    Some(Some(table.checked_add(usize::from(field))?))
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn read_u16(buf: &[u8], at: usize) -> Option<u16> {
    let b = buf.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// Decodes one frame body (without its length prefix), checking the buffer and every value.
/// Never panics, whatever the bytes.
pub fn decode_frame(frame_body: &[u8]) -> Result<Frame, PeerDecodeError> {
    let root = flatbuffers::root_with_opts::<fb::Frame>(&VERIFIER, frame_body)
        .map_err(|e| PeerDecodeError::Malformed(e.to_string()))?;
    let mut d = Decoder::default();
    match root.body_type() {
        fb::FrameBody::Hello => {
            let t = root
                .body_as_hello()
                .ok_or_else(|| invalid("hello without a body"))?;
            Ok(Frame::Hello {
                node: d.node(t.node())?,
                incarnation: t.incarnation(),
            })
        }
        fb::FrameBody::Partition => {
            let t = root
                .body_as_partition()
                .ok_or_else(|| invalid("partition frame without a body"))?;
            let partition = t.partition();
            if partition >= PARTITIONS {
                return Err(invalid(format!(
                    "partition {partition} is not below {PARTITIONS}"
                )));
            }
            Ok(Frame::Partition {
                partition,
                msg: d.peer_msg(&t)?,
            })
        }
        fb::FrameBody::Forward => {
            let t = root
                .body_as_forward()
                .ok_or_else(|| invalid("forward without a body"))?;
            Ok(Frame::Forward {
                id: t.id(),
                client: d.client(t.client())?,
                op: d.client_op(&t)?,
            })
        }
        fb::FrameBody::ForwardReply => {
            let t = root
                .body_as_forward_reply()
                .ok_or_else(|| invalid("forward reply without a body"))?;
            let message = || t.message().unwrap_or_default().to_owned();
            let result = match t.result() {
                fb::ResultKind::Changed => Ok(OpOutcome::Changed),
                fb::ResultKind::Unchanged => Ok(OpOutcome::Unchanged),
                fb::ResultKind::Beat => Ok(OpOutcome::Beat {
                    interval_ms: t.interval_ms(),
                }),
                fb::ResultKind::NotFound => Err(OpError::NotFound(message())),
                fb::ResultKind::Invalid => Err(OpError::Invalid(message())),
                fb::ResultKind::Conflict => Err(OpError::Conflict(message())),
                fb::ResultKind::Unavailable => Err(OpError::Unavailable(message())),
                other => return Err(invalid(format!("unknown result kind {}", other.0))),
            };
            Ok(Frame::ForwardReply { id: t.id(), result })
        }
        fb::FrameBody::Reachable => {
            let t = root
                .body_as_reachable()
                .ok_or_else(|| invalid("reachable without a body"))?;
            let names = t.up().unwrap_or_default();
            if names.len() > MAX_REACHABLE {
                return Err(invalid(format!(
                    "{} reachable members, more than {MAX_REACHABLE}",
                    names.len()
                )));
            }
            let mut up = Vec::with_capacity(names.len());
            for name in names {
                up.push(d.node(Some(name))?);
            }
            Ok(Frame::Reachable { up })
        }
        other => Err(invalid(format!("unknown frame kind {}", other.0))),
    }
}

/// How many distinct cluster names or node ids one frame's decoder keeps to share: a frame has
/// a handful, and a bound keeps a hostile frame from making the lookups quadratic.
const SHARED_STRINGS: usize = 8;

/// Per-frame decoding state: what repeats in a frame is built once and shared.
#[derive(Default)]
struct Decoder {
    /// Service keys by the location of their table (the encoder writes one table per
    /// distinct service and frame, so a batch of one service builds its key once).
    services: HashMap<usize, ServiceKey>,
    clusters: Vec<Str>,
    nodes: Vec<NodeId>,
    /// Metadata seen in this frame: instances of one service often carry the same, and a
    /// copy is much cheaper than parsing and re-serialising the JSON.
    metadata: Vec<Metadata>,
}

fn required<T>(value: Option<T>, what: &str) -> Result<T, PeerDecodeError> {
    value.ok_or_else(|| invalid(format!("{what} is missing")))
}

fn shared_str(cache: &mut Vec<Str>, s: &str) -> Str {
    if let Some(found) = cache.iter().find(|c| &***c == s) {
        return found.clone();
    }
    let new = Str::from(s);
    if cache.len() < SHARED_STRINGS {
        cache.push(new.clone());
    }
    new
}

impl Decoder {
    fn node(&mut self, node: Option<&str>) -> Result<NodeId, PeerDecodeError> {
        let node = required(node, "node")?;
        if let Some(found) = self.nodes.iter().find(|n| n.as_str() == node) {
            return Ok(found.clone());
        }
        if node.is_empty() || node.len() > 255 || node.chars().any(|c| c.is_control()) {
            return Err(invalid(format!("node id {node:?} is not a member address")));
        }
        let id = NodeId::new(node);
        if self.nodes.len() < SHARED_STRINGS {
            self.nodes.push(id.clone());
        }
        Ok(id)
    }

    fn peer_msg(&mut self, t: &fb::Partition) -> Result<PeerMsg, PeerDecodeError> {
        Ok(match t.msg_type() {
            fb::PeerMsg::Sync => {
                let m = required(t.msg_as_sync(), "sync")?;
                let items = required(m.items(), "sync items")?;
                PeerMsg::Sync {
                    seq: m.seq(),
                    items: items
                        .iter()
                        .map(|i| self.sync_item(&i))
                        .collect::<Result<_, _>>()?,
                }
            }
            fb::PeerMsg::SyncAck => {
                let m = required(t.msg_as_sync_ack(), "sync ack")?;
                PeerMsg::SyncAck { seq: m.seq() }
            }
            fb::PeerMsg::Digest => {
                let m = required(t.msg_as_digest(), "digest")?;
                PeerMsg::Digest {
                    round: m.round(),
                    root: m.root(),
                    clock: m.clock(),
                }
            }
            fb::PeerMsg::SliceDigests => {
                let m = required(t.msg_as_slice_digests(), "slice digests")?;
                let slices = required(m.slices(), "slices")?;
                if slices.len() > usize::from(SLICES) {
                    return Err(invalid(format!(
                        "{} slice digests, more than the {SLICES} slices",
                        slices.len()
                    )));
                }
                PeerMsg::SliceDigests {
                    round: m.round(),
                    slices: slices.iter().collect(),
                }
            }
            fb::PeerMsg::SliceClients => {
                let m = required(t.msg_as_slice_clients(), "slice clients")?;
                let matched: Vec<u16> = m.matched().map(|v| v.iter().collect()).unwrap_or_default();
                if let Some(bad) = matched.iter().find(|s| **s >= SLICES) {
                    return Err(invalid(format!("slice {bad} is not below {SLICES}")));
                }
                let mut lists = Vec::new();
                for list in m.lists().iter().flatten() {
                    let slice = list.slice();
                    if slice >= SLICES {
                        return Err(invalid(format!("slice {slice} is not below {SLICES}")));
                    }
                    let clients = list
                        .clients()
                        .iter()
                        .flatten()
                        .map(|ch| {
                            Ok(ClientHash {
                                client: self.client(ch.client())?,
                                state_hash: ch.state_hash(),
                            })
                        })
                        .collect::<Result<_, PeerDecodeError>>()?;
                    lists.push((slice, clients));
                }
                PeerMsg::SliceClients {
                    round: m.round(),
                    as_of: m.as_of(),
                    matched,
                    lists,
                }
            }
            fb::PeerMsg::Resync => {
                let m = required(t.msg_as_resync(), "resync")?;
                PeerMsg::Resync {
                    clients: m
                        .clients()
                        .iter()
                        .flatten()
                        .map(|c| self.client(Some(c)))
                        .collect::<Result<_, _>>()?,
                }
            }
            fb::PeerMsg::SnapshotRequest => {
                let m = required(t.msg_as_snapshot_request(), "snapshot request")?;
                PeerMsg::SnapshotRequest { id: m.id() }
            }
            fb::PeerMsg::SnapshotChunk => {
                let m = required(t.msg_as_snapshot_chunk(), "snapshot chunk")?;
                let mut clients = Vec::with_capacity(m.clients().map_or(0, |c| c.len()));
                for c in m.clients().iter().flatten() {
                    let node = self.node(c.node())?;
                    let state = ClientState {
                        client: self.client(c.client())?,
                        rev: c.rev(),
                        entries: self.entries(c.entries())?,
                    };
                    clients.push((node, state));
                }
                PeerMsg::SnapshotChunk {
                    id: m.id(),
                    seq: m.seq(),
                    clients,
                    done: m.done(),
                }
            }
            fb::PeerMsg::SnapshotAck => {
                let m = required(t.msg_as_snapshot_ack(), "snapshot ack")?;
                PeerMsg::SnapshotAck {
                    id: m.id(),
                    seq: m.seq(),
                }
            }
            other => return Err(invalid(format!("unknown peer message kind {}", other.0))),
        })
    }

    fn sync_item(&mut self, t: &fb::SyncItem) -> Result<SyncItem, PeerDecodeError> {
        let client = self.client(t.client())?;
        Ok(match t.kind() {
            fb::SyncKind::Upsert => SyncItem::Upsert {
                client,
                entry: EntryState {
                    service: self.service(t.service())?,
                    rev: t.rev(),
                    publish: self.publish(t.instances())?,
                },
            },
            fb::SyncKind::Remove => SyncItem::Remove {
                client,
                service: self.service(t.service())?,
                rev: t.rev(),
            },
            fb::SyncKind::Full => SyncItem::Full(ClientState {
                client,
                rev: t.rev(),
                entries: self.entries(t.entries())?,
            }),
            fb::SyncKind::Drop => SyncItem::Drop {
                client,
                rev: t.rev(),
            },
            other => return Err(invalid(format!("unknown sync item kind {}", other.0))),
        })
    }

    fn entries(
        &mut self,
        entries: Option<Vector<'_, ForwardsUOffset<fb::Entry<'_>>>>,
    ) -> Result<Vec<EntryState>, PeerDecodeError> {
        entries
            .iter()
            .flatten()
            .map(|e| {
                Ok(EntryState {
                    service: self.service(e.service())?,
                    rev: e.rev(),
                    publish: self.publish(e.instances())?,
                })
            })
            .collect()
    }

    /// A publish: the instances of one client in one service, never empty.
    fn publish(
        &mut self,
        instances: Option<Vector<'_, ForwardsUOffset<fb::Instance<'_>>>>,
    ) -> Result<Arc<[Instance]>, PeerDecodeError> {
        let instances = required(instances, "instances")?;
        if instances.len() == 1 {
            // The common publish: one allocation, not a `Vec` copied into an `Arc`.
            let one = self.instance(&instances.get(0))?;
            return Ok(Arc::new([one]));
        }
        let list = self.instance_list(Some(instances))?;
        if list.is_empty() {
            return Err(invalid("a publish without instances"));
        }
        Ok(list.into())
    }

    fn instance_list(
        &mut self,
        instances: Option<Vector<'_, ForwardsUOffset<fb::Instance<'_>>>>,
    ) -> Result<Vec<Instance>, PeerDecodeError> {
        instances
            .iter()
            .flatten()
            .map(|i| self.instance(&i))
            .collect()
    }

    fn instance(&mut self, t: &fb::Instance) -> Result<Instance, PeerDecodeError> {
        let host = host(t.host())?;
        let cluster = self.cluster(t.cluster())?;
        let metadata = self.metadata(t.metadata())?;
        Instance::from_parts(
            host,
            t.port(),
            t.weight(),
            t.healthy(),
            t.enabled(),
            cluster,
            metadata,
            t.instance_id(),
        )
        .map_err(|e| invalid(format!("instance: {e}")))
    }

    fn metadata(&mut self, text: Option<&str>) -> Result<Metadata, PeerDecodeError> {
        let Some(text) = text else {
            return Ok(Metadata::default());
        };
        // `json()` of a valid metadata parses back to itself, so equal text is equal metadata.
        if let Some(m) = self.metadata.iter().find(|m| m.json() == text) {
            return Ok(m.clone());
        }
        let m = metadata(Some(text))?;
        if self.metadata.len() < SHARED_STRINGS {
            self.metadata.push(m.clone());
        }
        Ok(m)
    }

    fn cluster(&mut self, cluster: Option<&str>) -> Result<Str, PeerDecodeError> {
        let cluster = required(cluster, "cluster")?;
        validate_cluster_name(cluster).map_err(|e| invalid(e.0))?;
        Ok(shared_str(&mut self.clusters, cluster))
    }

    fn service(&mut self, t: Option<fb::Service>) -> Result<ServiceKey, PeerDecodeError> {
        let t = required(t, "service")?;
        let loc = t._tab.loc();
        if let Some(key) = self.services.get(&loc) {
            return Ok(key.clone());
        }
        let key = ServiceKey::new(
            t.namespace().unwrap_or_default(),
            t.group().unwrap_or_default(),
            t.name().unwrap_or_default(),
        )
        .map_err(|e| invalid(format!("service: {e}")))?;
        self.services.insert(loc, key.clone());
        Ok(key)
    }

    fn client(&mut self, t: Option<fb::Client>) -> Result<ClientId, PeerDecodeError> {
        let t = required(t, "client")?;
        match t.kind() {
            fb::ClientKind::Conn => Ok(ClientId::Conn(t.conn())),
            fb::ClientKind::V4 => Ok(ClientId::V4(Ipv4Addr::from(t.ip()), t.port())),
            fb::ClientKind::Named => {
                let name = required(t.name(), "client name")?;
                // The same rule as the address of an instance, and never an IPv4 address,
                // which would make a second identity for a `V4` client.
                match host(Some(name))? {
                    Host::Name(n) if &*n == name => Ok(ClientId::Named(Str::from(name), t.port())),
                    _ => Err(invalid(format!(
                        "client name {name:?} is not a canonical host name"
                    ))),
                }
            }
            other => Err(invalid(format!("unknown client kind {}", other.0))),
        }
    }

    fn client_op(&mut self, t: &fb::Forward) -> Result<ClientOp, PeerDecodeError> {
        Ok(match t.op_type() {
            fb::ClientOp::Register => {
                let m = required(t.op_as_register(), "register")?;
                ClientOp::Register {
                    service: self.service(m.service())?,
                    instance: self.instance(&required(m.instance(), "instance")?)?,
                }
            }
            fb::ClientOp::BatchRegister => {
                let m = required(t.op_as_batch_register(), "batch register")?;
                let instances = self.instance_list(m.instances())?;
                if instances.is_empty() {
                    return Err(invalid("a batch registration without instances"));
                }
                ClientOp::BatchRegister {
                    service: self.service(m.service())?,
                    instances,
                }
            }
            fb::ClientOp::Deregister => {
                let m = required(t.op_as_deregister(), "deregister")?;
                ClientOp::Deregister {
                    service: self.service(m.service())?,
                    host: host(m.host())?,
                    port: m.port(),
                    cluster: self.cluster(m.cluster())?,
                }
            }
            fb::ClientOp::Update => {
                let m = required(t.op_as_update(), "update")?;
                if let Some(w) = m.weight() {
                    if !w.is_finite() || w < 0.0 {
                        return Err(invalid(format!("weight {w} must be a number >= 0")));
                    }
                }
                let metadata = match m.metadata() {
                    Some(text) => Some(self.metadata(Some(text))?),
                    None => None,
                };
                ClientOp::Update {
                    service: self.service(m.service())?,
                    host: host(m.host())?,
                    port: m.port(),
                    cluster: self.cluster(m.cluster())?,
                    patch: InstancePatch {
                        weight: m.weight(),
                        enabled: m.enabled(),
                        healthy: m.healthy(),
                        metadata,
                    },
                }
            }
            fb::ClientOp::Beat => {
                let m = required(t.op_as_beat(), "beat")?;
                let reregister = match m.reregister() {
                    Some(i) => Some(self.instance(&i)?),
                    None => None,
                };
                ClientOp::Beat {
                    service: self.service(m.service())?,
                    host: host(m.host())?,
                    port: m.port(),
                    cluster: self.cluster(m.cluster())?,
                    reregister,
                }
            }
            fb::ClientOp::Subscribe => {
                let m = required(t.op_as_subscribe(), "subscribe")?;
                ClientOp::Subscribe {
                    service: self.service(m.service())?,
                    clusters: Str::from(m.clusters().unwrap_or_default()),
                }
            }
            fb::ClientOp::Unsubscribe => {
                let m = required(t.op_as_unsubscribe(), "unsubscribe")?;
                ClientOp::Unsubscribe {
                    service: self.service(m.service())?,
                }
            }
            fb::ClientOp::Disconnect => {
                required(t.op_as_disconnect(), "disconnect")?;
                ClientOp::Disconnect
            }
            other => return Err(invalid(format!("unknown client operation {}", other.0))),
        })
    }
}

/// An instance address: the canonical dotted quad goes inline without the `String`
/// [`Host::parse`] builds to check it; anything else takes the rules of [`Host::parse`].
fn host(text: Option<&str>) -> Result<Host, PeerDecodeError> {
    let text = required(text, "host")?;
    if let Ok(a) = text.parse::<Ipv4Addr>() {
        let mut buf = [0u8; 15];
        let n = write_ipv4(a, &mut buf);
        if &buf[..n] == text.as_bytes() {
            return Ok(Host::V4(a));
        }
    }
    Host::parse(text).map_err(|e| invalid(format!("host: {e}")))
}

/// Metadata from its JSON object text (absent = empty).
fn metadata(text: Option<&str>) -> Result<Metadata, PeerDecodeError> {
    let Some(text) = text else {
        return Ok(Metadata::default());
    };
    // What our encoder writes is `Metadata::json()`, never longer than the limit; refusing
    // longer text first keeps a hostile peer from making us parse megabytes of JSON.
    if text.len() > Metadata::MAX_BYTES || !text.trim_start().starts_with('{') {
        return Err(invalid(
            "metadata is not a JSON object within the size limit",
        ));
    }
    // Our own text is an object of strings: parse it straight into a map; anything else
    // gets the coercions of the HTTP parameter (and its errors).
    match serde_json::from_str::<std::collections::BTreeMap<String, String>>(text) {
        Ok(map) => Metadata::from_map(&map),
        Err(_) => Metadata::parse_param(text),
    }
    .map_err(|e| invalid(format!("metadata: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Stream splitting

/// Splits the bytes of a connection into frame bodies.
///
/// [`push`](FrameReader::push) what the socket gave, then take complete bodies with
/// [`Iterator::next`] until it returns `None` (it returns `Some` again after more bytes are
/// pushed, so it is not a fused iterator). A length over the maximum is reported as soon as
/// its 4 bytes arrive, before anything is buffered for it; the stream cannot be resynchronised
/// after that, so the reader then yields nothing more and ignores further pushes.
#[derive(Debug)]
pub struct FrameReader {
    buf: BytesMut,
    max_frame: usize,
    failed: bool,
}

impl Default for FrameReader {
    /// A reader accepting bodies up to [`MAX_FRAME`].
    fn default() -> Self {
        FrameReader::new(MAX_FRAME)
    }
}

impl FrameReader {
    /// A reader accepting bodies up to `max_frame` bytes.
    pub fn new(max_frame: usize) -> FrameReader {
        FrameReader {
            buf: BytesMut::new(),
            max_frame,
            failed: false,
        }
    }

    /// Appends bytes read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        if !self.failed {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Bytes buffered and not yet returned as a body.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Whether an oversized frame stopped the reader.
    pub fn is_failed(&self) -> bool {
        self.failed
    }
}

impl Iterator for FrameReader {
    type Item = Result<Bytes, PeerDecodeError>;

    /// The next complete frame body, `None` until more bytes arrive, or the error that stops
    /// the reader (once).
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let len = read_u32(&self.buf, 0)? as usize;
        if len > self.max_frame {
            self.failed = true;
            self.buf = BytesMut::new();
            return Some(Err(PeerDecodeError::TooLarge {
                len,
                max: self.max_frame,
            }));
        }
        let total = LENGTH_PREFIX + len;
        if self.buf.len() < total {
            // Grow once to the whole frame rather than doubling through a large one.
            self.buf.reserve(total - self.buf.len());
            return None;
        }
        self.buf.advance(LENGTH_PREFIX);
        Some(Ok(self.buf.split_to(len).freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_bytes(frame: &Frame) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(frame, &mut out);
        out
    }

    #[test]
    fn ipv4_text_is_canonical() {
        for a in [
            Ipv4Addr::new(0, 0, 0, 0),
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(255, 255, 255, 255),
            Ipv4Addr::new(192, 168, 100, 9),
        ] {
            let mut buf = [0u8; 15];
            let n = write_ipv4(a, &mut buf);
            assert_eq!(&buf[..n], a.to_string().as_bytes());
        }
    }

    #[test]
    fn host_decoding_matches_host_parse() {
        for text in [
            "10.0.0.1",
            "010.0.0.1",
            "::1",
            "example.com",
            "1.2.3",
            " 10.0.0.1",
        ] {
            assert_eq!(host(Some(text)).ok(), Host::parse(text).ok(), "{text}");
        }
    }

    #[test]
    fn peek_reads_the_partition_of_partition_frames_only() {
        for p in [0, 1, 17, PARTITIONS - 1] {
            let body = frame_bytes(&Frame::Partition {
                partition: p,
                msg: PeerMsg::SyncAck { seq: 9 },
            });
            assert_eq!(peek_partition(&body[LENGTH_PREFIX..]), Some(p));
        }
        let body = frame_bytes(&Frame::Hello {
            node: NodeId::new("10.0.0.1:8848"),
            incarnation: 3,
        });
        assert_eq!(peek_partition(&body[LENGTH_PREFIX..]), None);
        // Out of range: no route, and decoding refuses it too.
        let body = frame_bytes(&Frame::Partition {
            partition: PARTITIONS,
            msg: PeerMsg::SyncAck { seq: 9 },
        });
        assert_eq!(peek_partition(&body[LENGTH_PREFIX..]), None);
        assert!(decode_frame(&body[LENGTH_PREFIX..]).is_err());
    }

    #[test]
    fn peek_survives_any_prefix_and_garbage() {
        let body = frame_bytes(&Frame::Partition {
            partition: 5,
            msg: PeerMsg::Digest {
                round: 1,
                root: 2,
                clock: 3,
            },
        });
        for n in 0..body.len() {
            let _ = peek_partition(&body[..n]);
        }
        let _ = peek_partition(&[0xff; 64]);
        let _ = peek_partition(&[0x80, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f]);
    }

    /// A Resync naming one client table `n` times: small on the wire, large when expanded.
    fn shared_resync(n: usize) -> Vec<u8> {
        let mut fbb = FlatBufferBuilder::new();
        let name = fbb.create_string(&"a".repeat(250));
        let client = fb::Client::create(
            &mut fbb,
            &fb::ClientArgs {
                kind: fb::ClientKind::Named,
                port: 80,
                name: Some(name),
                ..Default::default()
            },
        );
        let clients = fbb.create_vector(&vec![client; n]);
        let msg = fb::Resync::create(
            &mut fbb,
            &fb::ResyncArgs {
                clients: Some(clients),
            },
        );
        let part = fb::Partition::create(
            &mut fbb,
            &fb::PartitionArgs {
                partition: 1,
                msg_type: fb::PeerMsg::Resync,
                msg: Some(msg.as_union_value()),
            },
        );
        let root = fb::Frame::create(
            &mut fbb,
            &fb::FrameArgs {
                body_type: fb::FrameBody::Partition,
                body: Some(part.as_union_value()),
            },
        );
        fbb.finish_minimal(root);
        fbb.finished_data().to_vec()
    }

    #[test]
    fn sharing_cannot_amplify_the_work_past_the_apparent_size_limit() {
        match decode_frame(&shared_resync(1_000)) {
            Ok(Frame::Partition {
                msg: PeerMsg::Resync { clients },
                ..
            }) => assert_eq!(clients.len(), 1_000),
            other => panic!("{other:?}"),
        }
        // 1.2 MB on the wire, about 80 MiB expanded: refused by the verifier.
        let big = shared_resync(300_000);
        assert!(big.len() < MAX_FRAME);
        assert!(matches!(
            decode_frame(&big),
            Err(PeerDecodeError::Malformed(_))
        ));
        assert_eq!(peek_partition(&big), Some(1));
    }

    #[test]
    fn reader_stops_at_an_oversized_length_before_buffering_it() {
        let mut r = FrameReader::new(100);
        r.push(&101u32.to_le_bytes());
        assert_eq!(
            r.next(),
            Some(Err(PeerDecodeError::TooLarge { len: 101, max: 100 }))
        );
        assert!(r.is_failed());
        r.push(&[0; 200]);
        assert_eq!(r.next(), None);
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn reader_yields_empty_bodies_and_waits_for_the_rest() {
        let mut r = FrameReader::new(100);
        r.push(&0u32.to_le_bytes());
        r.push(&3u32.to_le_bytes()[..2]);
        assert_eq!(r.next(), Some(Ok(Bytes::new())));
        assert_eq!(r.next(), None);
        r.push(&3u32.to_le_bytes()[2..]);
        r.push(b"ab");
        assert_eq!(r.next(), None);
        r.push(b"c");
        assert_eq!(r.next(), Some(Ok(Bytes::from_static(b"abc"))));
        assert_eq!(r.next(), None);
        assert_eq!(r.buffered(), 0);
    }
}
