//! Decoding: [`decode_frame`] verifies a frame body and checks every value in it as a request
//! from a client would be checked; nothing in the bytes is trusted.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use engine::distro::{
    ClientHash, ClientState, EntryState, NodeId, PeerMsg, SyncItem, PARTITIONS, SLICES,
};
use engine::model::validate_cluster_name;
use engine::shard::InstancePatch;
use engine::{ClientId, ClientOp, Host, Instance, Metadata, OpError, OpOutcome, ServiceKey, Str};
use flatbuffers::{ForwardsUOffset, Vector, VerifierOptions};

use super::encode::write_ipv4;
use super::{invalid, ForwardId, Frame, PeerDecodeError, MAX_REACHABLE, SHARED_STRINGS};
use crate::peer_fb as fb;

/// Verifier limits for a frame body. The apparent size (a frame's size with every shared table
/// and string counted at each use) bounds the verifier's work on a frame that points many
/// times at one big vector; 64 MiB is four times [`MAX_FRAME`](super::MAX_FRAME), more than
/// sharing ever saves.
const VERIFIER: VerifierOptions = VerifierOptions {
    // Frame → Partition → SnapshotChunk → SnapshotClient → Entry → Instance is 6 levels.
    max_depth: 16,
    // A table is at least 4 bytes, so a full 16 MiB frame holds at most 4 Mi of them;
    // shared tables are counted at each use.
    max_tables: 8 << 20,
    max_apparent_size: 64 << 20,
    ignore_missing_null_terminator: false,
};

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
            let (client, op) = (d.client(t.client())?, d.client_op(&t)?);
            let id = ForwardId::from_wire(t.id());
            if id.token == 0 {
                Ok(Frame::RelayedBeat { client, op })
            } else {
                Ok(Frame::Forward { id, client, op })
            }
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
            Ok(Frame::ForwardReply {
                id: ForwardId::from_wire(t.id()),
                result,
            })
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
        fb::FrameBody::Raft => {
            let t = root
                .body_as_raft()
                .ok_or_else(|| invalid("raft frame without a body"))?;
            let payload = t.payload().map(|p| p.bytes().to_vec()).unwrap_or_default();
            Ok(Frame::Raft { payload })
        }
        other => Err(invalid(format!("unknown frame kind {}", other.0))),
    }
}

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

#[cfg(test)]
mod tests {
    use flatbuffers::FlatBufferBuilder;

    use super::*;
    use crate::peer::{peek_partition, MAX_FRAME};

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
}
