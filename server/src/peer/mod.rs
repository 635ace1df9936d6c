//! The cluster's peer layer: how nodes find each other and exchange frames.
//!
//! # Layout
//! - [`members`]: the member list (`--members`, `cluster.conf`), self detection, peer ports, and
//!   a watcher that follows `cluster.conf` edits.
//! - [`tls`]: mutual TLS against the cluster CA (or `--insecure`), as quinn-proto crypto configs.
//! - [`transport`]: QUIC (quinn-proto, sans-IO) on one glommio executor: every node dials every
//!   peer and sends its length-prefixed frames on one stream per peer; frames, per-peer health
//!   and counters come back out.
//!
//! The frames themselves (hello, Distro messages) are the codec's business: this layer carries
//! opaque `Bytes`.

pub mod members;
pub mod tls;
pub mod transport;

pub use members::{ClusterConfWatcher, Member};
pub use tls::TlsMode;
pub use transport::{Event, Health, SendError, Transport, TransportConfig, TransportStats};
