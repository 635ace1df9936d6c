//! # nacelle-engine
//!
//! The registry core of Nacelle: the Nacos naming model, the shards that own clients and
//! services, and the lock-free read views every core answers queries from. It does no IO,
//! reads no clock and owns no thread: a driver (the `nacelle` server, a test, a simulator)
//! feeds it inputs with the current time and executes the commands it emits.
//!
//! # Layout
//! - [`model`]: services, instances, clients, metadata, validation, publishes
//!   ([`model::Publish`]) — the Nacos vocabulary.
//! - [`view`]: [`view::ServiceView`] snapshots, query selection (clusters, health, protect
//!   threshold) and the [`view::ReadIndex`] directory published with crossbeam-epoch, with the
//!   read queries the gRPC and HTTP front ends share (service list, instance query).
//! - [`shard`]: [`shard::Shard`], the per-core state machine: client ops in, service ops
//!   between shards, views out, pushes to subscribers, heartbeat expiry on timers. Split by
//!   concern: `shard/mod.rs` (types, driver interface), `shard/ops.rs` (client ops),
//!   `shard/service.rs` (service ops, view rebuild, pushes), `shard/heartbeat.rs` (expiry).
//! - `shard/replication/`: the Distro half of a shard, one file per concern — `outbound`
//!   (our changes to peers), `inbound` (peers' changes to our copies), `claims`,
//!   `membership`, `verify`, `housekeeping` (retries, leases), `snapshot` (startup load and
//!   serving), `status` (introspection); `mod.rs` holds the shared state.
//! - [`store`]: the replicated state machine of the CP half (persistent instances, service
//!   and cluster definitions), applied in Raft log order on every node; its effects feed the
//!   shards.
//! - [`auth`]: the pure parts of authentication — tokens (HS256 JWTs), Nacos's permission
//!   patterns, the login rate limit; the users and permissions are the store's `auth` space.
//! - [`distro`]: the pure parts of Distro (`PeerMsg`, partitions, digests, the membership
//!   view, settings); `DISTRO.md` at the repository root is the specification.
//! - [`health`]: server-side health checks of persistent instances: the per-core
//!   [`health::HealthChecker`] scheduler (probes, thresholds, flips) and the Nacos
//!   `healthChecker` specs ([`health::spec`]).
//! - [`udp_push`]: the UDP push targets of Nacos 1.x HTTP clients on the core owning their
//!   services, with the ack/resend state machine of their pushes.
//!
//! # Why this shape
//! A core owns a hash slice of clients and a hash slice of services, so no write needs a lock:
//! writes become messages to the owner. Reads never wait: they load the published view of a
//! service under an epoch guard. The same state machine will carry the Distro protocol, which
//! is why every input takes the time as an argument and every output is a command.

#![deny(missing_docs)]

pub mod auth;
pub mod distro;
pub mod health;
pub mod model;
pub mod shard;
pub mod store;
pub mod udp_push;
pub mod view;

pub use model::{ClientId, Host, Instance, InstanceSpec, Interner, Metadata, ServiceKey, Str};
pub use shard::{
    ClientOp, Command, Now, OpError, OpOutcome, OpResult, ReplyTo, ServiceOp, Shard, ShardConfig,
    ShardMsg,
};
pub use view::{InstanceKind, ReadIndex, ServiceView};
