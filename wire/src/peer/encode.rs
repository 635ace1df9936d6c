//! Encoding: [`Encoder`] writes [`Frame`]s as length-prefixed flatbuffers, reusing its
//! builder, and [`encode_frame`] does so with a per-thread encoder.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;

use engine::distro::{EntryState, PeerMsg, SyncItem};
use engine::{ClientId, ClientOp, Host, Instance, OpError, OpOutcome, ServiceKey};
use flatbuffers::{FlatBufferBuilder, ForwardsUOffset, UnionWIPOffset, Vector, WIPOffset};

use super::{Frame, LENGTH_PREFIX, MAX_REACHABLE, SHARED_STRINGS};
use crate::peer_fb as fb;

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

    /// A `Forward` table with wire id `id`.
    fn forward(
        &mut self,
        id: u64,
        client: &ClientId,
        op: &ClientOp,
    ) -> (fb::FrameBody, WIPOffset<UnionWIPOffset>) {
        let client = self.client(client);
        let (op_type, op) = self.client_op(op);
        let t = fb::Forward::create(
            &mut self.fbb,
            &fb::ForwardArgs {
                id,
                client: Some(client),
                op_type,
                op: Some(op),
            },
        );
        (fb::FrameBody::Forward, t.as_union_value())
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
            Frame::Forward { id, client, op } => self.forward(id.to_wire(), client, op),
            // Token 0: the relayed-beat marker (see `ForwardId`).
            Frame::RelayedBeat { client, op } => self.forward(0, client, op),
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
                        id: id.to_wire(),
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
            Frame::Raft { payload } => {
                let payload = self.fbb.create_vector(payload);
                let t = fb::Raft::create(
                    &mut self.fbb,
                    &fb::RaftArgs {
                        payload: Some(payload),
                    },
                );
                (fb::FrameBody::Raft, t.as_union_value())
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
            // Never sent: the shards keep persistent clients out of every Distro message
            // (they travel through Raft). Should one slip through, the peer sees an HTTP
            // client named `host#false` that nobody beats and that expires; no real client
            // has that name, so nothing real is shadowed.
            ClientId::Persistent(host, port) => {
                debug_assert!(false, "a persistent client in a Distro message");
                fb::ClientArgs {
                    kind: fb::ClientKind::Named,
                    port: *port,
                    name: Some(self.fbb.create_string(&format!("{host}#false"))),
                    ..Default::default()
                }
            }
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

/// Encodes one frame's body alone, without the length prefix (what the peer transport takes:
/// it adds the prefix itself).
pub fn encode_body(frame: &Frame) -> bytes::Bytes {
    let mut out = Vec::with_capacity(256);
    encode_frame(frame, &mut out);
    bytes::Bytes::from(out).slice(LENGTH_PREFIX..)
}

/// Writes the canonical dotted quad of `a` into `buf`; returns its length.
pub(super) fn write_ipv4(a: Ipv4Addr, buf: &mut [u8; 15]) -> usize {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
