//! Cluster membership configuration: who the members are, which one is this node, and where
//! their peer (QUIC) ports are.
//!
//! # Layout
//! - [`Member`]: one node as configured, its IP and HTTP port (the Nacos `server.port`).
//! - [`parse_members_flag`] (`--members ip:port,ip:port`) and [`parse_cluster_conf`] (a Nacos
//!   `cluster.conf`): pure parsers with errors that name the line and the text.
//! - [`find_self`]: which member this node is, from its bind address and HTTP port.
//! - [`ClusterConfWatcher`]: re-reads a `cluster.conf` once a second and yields the new list when
//!   it changed; a file that no longer parses keeps the old list (with a warning), because a
//!   half-saved file must not shrink the cluster.
//!
//! Peer ports follow one rule for every member: HTTP port + [`PEER_PORT_OFFSET`] (8848 → 9849,
//! next to Nacos' gRPC 9848). A node may listen elsewhere with `--peer-port`, but the others only
//! find it on the default, so that flag is for tests and port clashes, not for heterogeneous
//! clusters.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{info, warn};

/// The HTTP port of a `cluster.conf` entry without one (Nacos' default `server.port`).
pub const DEFAULT_HTTP_PORT: u16 = 8848;

/// A member's peer (QUIC/UDP) port is its HTTP port plus this.
pub const PEER_PORT_OFFSET: u16 = 1001;

/// One cluster member as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member {
    /// Its address (what the other members dial and what its certificate names).
    pub ip: IpAddr,
    /// Its HTTP OpenAPI port, the identity Nacos uses for a member (`ip:port`).
    pub http_port: u16,
}

impl Member {
    /// Where its peer transport listens, by the default rule (HTTP port + 1001).
    pub fn peer_addr(&self) -> Result<SocketAddr, String> {
        default_peer_port(self.http_port)
            .map(|p| SocketAddr::new(self.ip, p))
            .ok_or_else(|| {
                format!(
                    "member {self}: HTTP port + {PEER_PORT_OFFSET} is not a port (peer ports are HTTP port + {PEER_PORT_OFFSET})"
                )
            })
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // SocketAddr brackets IPv6 addresses, as a member list must.
        write!(f, "{}", SocketAddr::new(self.ip, self.http_port))
    }
}

/// The peer port of a node with this HTTP port by the default rule, if it fits in 16 bits.
pub fn default_peer_port(http_port: u16) -> Option<u16> {
    http_port.checked_add(PEER_PORT_OFFSET)
}

/// Parses one entry: `ip`, `ip:port`, `[v6]:port` or a bare IPv6 address.
fn parse_entry(s: &str) -> Result<Member, String> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        if sa.port() == 0 {
            return Err("port 0 is not a member port".into());
        }
        return Ok(Member {
            ip: sa.ip(),
            http_port: sa.port(),
        });
    }
    if let Ok(ip) = s
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(Member {
            ip,
            http_port: DEFAULT_HTTP_PORT,
        });
    }
    match s.rsplit_once(':') {
        Some((host, port)) if host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok() => {
            Err(format!("`{port}` is not a port (1-65535)"))
        }
        _ => {
            let host = s.rsplit_once(':').map_or(s, |(h, _)| h);
            if host_looks_like_ip(host) {
                Err(format!("`{host}` is not an IP address"))
            } else {
                Err(format!(
                    "`{host}` is not an IP address (host names are not supported: members are \
                     identified and authenticated by IP)"
                ))
            }
        }
    }
}

fn host_looks_like_ip(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_digit() || c == '.' || c == ':' || c == '[' || c == ']')
}

/// Adds entries keeping the first occurrence of each member (a repeated line is harmless).
fn push_unique(out: &mut Vec<Member>, m: Member) {
    if !out.contains(&m) {
        out.push(m);
    }
}

/// Parses `--members ip:port,ip:port,...` (a port-less entry means 8848).
pub fn parse_members_flag(s: &str) -> Result<Vec<Member>, String> {
    let mut out = Vec::new();
    for (i, entry) in s.split(',').enumerate() {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let m =
            parse_entry(entry).map_err(|e| format!("--members entry {} `{entry}`: {e}", i + 1))?;
        push_unique(&mut out, m);
    }
    if out.is_empty() {
        return Err("--members is empty".into());
    }
    Ok(out)
}

/// Parses a Nacos `cluster.conf`: one `ip[:port]` per line (or several separated by commas, as
/// Nacos accepts), `#` starts a comment, blank lines and surrounding whitespace are ignored.
pub fn parse_cluster_conf(text: &str) -> Result<Vec<Member>, String> {
    let mut out = Vec::new();
    for (no, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        for entry in line.split(',') {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let m =
                parse_entry(entry).map_err(|e| format!("line {} `{}`: {e}", no + 1, raw.trim()))?;
            push_unique(&mut out, m);
        }
    }
    if out.is_empty() {
        return Err("no members (every line is empty or a comment)".into());
    }
    Ok(out)
}

/// Reads and parses a `cluster.conf` file.
pub fn read_cluster_conf(path: &Path) -> Result<Vec<Member>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_cluster_conf(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Whether `ip` is an address of this machine: loopback always, otherwise when a UDP socket can
/// bind it (the kernel only lets a socket bind a local address).
pub fn is_local_ip(ip: IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// The index in `members` of this node: the member with our bind address and HTTP port, or —
/// when binding every address — the one whose IP is local and port is ours.
pub fn find_self(members: &[Member], bind: IpAddr, http_port: u16) -> Result<usize, String> {
    find_self_with(members, bind, http_port, is_local_ip)
}

/// [`find_self`] with the locality test supplied (tests).
pub fn find_self_with(
    members: &[Member],
    bind: IpAddr,
    http_port: u16,
    is_local: impl Fn(IpAddr) -> bool,
) -> Result<usize, String> {
    let matches: Vec<usize> = members
        .iter()
        .enumerate()
        .filter(|(_, m)| {
            m.http_port == http_port
                && if bind.is_unspecified() {
                    is_local(m.ip)
                } else {
                    m.ip == bind
                }
        })
        .map(|(i, _)| i)
        .collect();
    let list = || {
        members
            .iter()
            .map(|m| m.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match matches.as_slice() {
        [i] => Ok(*i),
        [] => Err(format!(
            "this node (bind {bind}, http port {http_port}) is not in the member list [{}]",
            list()
        )),
        several => Err(format!(
            "this node (bind {bind}, http port {http_port}) matches several members ({}) of [{}]: set --bind to its address",
            several
                .iter()
                .map(|i| members[*i].to_string())
                .collect::<Vec<_>>()
                .join(", "),
            list()
        )),
    }
}

/// Peer addresses of every member but `self_index`. Used by this module's tests; `cluster`
/// maps [`Member::peer_addr`] over its members itself.
pub fn peer_addrs(members: &[Member], self_index: usize) -> Result<Vec<SocketAddr>, String> {
    members
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != self_index)
        .map(|(_, m)| m.peer_addr())
        .collect()
}

/// Follows a `cluster.conf` file: [`poll`](Self::poll) re-reads it and reports a changed member
/// list; [`next`](Self::next) does that every interval on the current glommio executor.
///
/// The whole file is compared, not its mtime: it is small, and a one-second mtime granularity
/// would miss two saves in the same second.
pub struct ClusterConfWatcher {
    path: PathBuf,
    interval: Duration,
    last_text: Option<String>,
    members: Vec<Member>,
}

impl ClusterConfWatcher {
    /// Reads the file once; it must parse now (a node does not start on a broken member list).
    pub fn new(path: impl Into<PathBuf>) -> Result<Self, String> {
        let path = path.into();
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let members = parse_cluster_conf(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self {
            path,
            interval: Duration::from_secs(1),
            last_text: Some(text),
            members,
        })
    }

    /// Changes the polling period (default 1 s).
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// The current member list (what [`new`](Self::new) read or the last [`poll`](Self::poll)
    /// reported). Used by this module's tests; the node takes the lists `next` yields.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Re-reads the file: `Some(new list)` when it parses to a different list; `None` when it is
    /// unchanged, unreadable or broken (then a warning, once per distinct content).
    pub fn poll(&mut self) -> Option<Vec<Member>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => {
                if self.last_text.is_some() {
                    warn!(path = %self.path.display(), "cannot read cluster.conf ({e}); keeping the current members");
                    self.last_text = None;
                }
                return None;
            }
        };
        if self.last_text.as_deref() == Some(text.as_str()) {
            return None;
        }
        let parsed = parse_cluster_conf(&text);
        self.last_text = Some(text);
        match parsed {
            Ok(members) if members != self.members => {
                info!(path = %self.path.display(), members = members.len(), "cluster.conf changed");
                self.members = members.clone();
                Some(members)
            }
            Ok(_) => None,
            Err(e) => {
                warn!(path = %self.path.display(), "{e}; keeping the current members");
                None
            }
        }
    }

    /// Waits until the file holds a different, valid member list and returns it.
    pub async fn next(&mut self) -> Vec<Member> {
        loop {
            glommio::timer::sleep(self.interval).await;
            if let Some(m) = self.poll() {
                return m;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Member {
        let sa: SocketAddr = s.parse().expect("test address");
        Member {
            ip: sa.ip(),
            http_port: sa.port(),
        }
    }

    #[test]
    fn members_flag() {
        assert_eq!(
            parse_members_flag("127.0.0.1:8848, 127.0.0.2:8849,10.0.0.3").expect("parses"),
            vec![m("127.0.0.1:8848"), m("127.0.0.2:8849"), m("10.0.0.3:8848")]
        );
        assert_eq!(
            parse_members_flag("[::1]:9000,::2").expect("parses"),
            vec![m("[::1]:9000"), m("[::2]:8848")]
        );
        let e = parse_members_flag("127.0.0.1:8848,nacos-1:8848").expect_err("host name");
        assert!(e.contains("entry 2") && e.contains("nacos-1"), "{e}");
        let e = parse_members_flag("127.0.0.1:99999").expect_err("bad port");
        assert!(e.contains("99999"), "{e}");
        assert!(parse_members_flag(" , ").is_err());
        assert!(parse_members_flag("127.0.0.1:0").is_err());
    }

    #[test]
    fn cluster_conf() {
        let text = "# nacos cluster\n\n  127.0.0.1:8848  \n127.0.0.2 # default port\n\
                    127.0.0.3:8848,127.0.0.4:8850\n127.0.0.1:8848\n\t\n";
        assert_eq!(
            parse_cluster_conf(text).expect("parses"),
            vec![
                m("127.0.0.1:8848"),
                m("127.0.0.2:8848"),
                m("127.0.0.3:8848"),
                m("127.0.0.4:8850")
            ]
        );
        let e = parse_cluster_conf("127.0.0.1\n\n127.0.0.300:8848\n").expect_err("bad ip");
        assert!(e.starts_with("line 3 `127.0.0.300:8848`"), "{e}");
        let e = parse_cluster_conf("127.0.0.1:x\n").expect_err("bad port");
        assert!(
            e.contains("line 1") && e.contains("`x` is not a port"),
            "{e}"
        );
        assert!(parse_cluster_conf("# only\n\n").is_err());
    }

    #[test]
    fn peer_ports() {
        assert_eq!(
            m("10.0.0.1:8848").peer_addr().expect("fits"),
            "10.0.0.1:9849".parse::<SocketAddr>().expect("addr")
        );
        assert!(m("10.0.0.1:65000").peer_addr().is_err());
        let all = vec![
            m("127.0.0.1:8848"),
            m("127.0.0.2:8848"),
            m("127.0.0.3:8848"),
        ];
        assert_eq!(
            peer_addrs(&all, 1).expect("fits"),
            vec![
                "127.0.0.1:9849".parse::<SocketAddr>().expect("addr"),
                "127.0.0.3:9849".parse().expect("addr")
            ]
        );
    }

    #[test]
    fn self_detection() {
        let all = vec![m("10.1.0.1:8848"), m("10.1.0.2:8848"), m("10.1.0.2:8850")];
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(find_self_with(&all, ip("10.1.0.2"), 8850, |_| false), Ok(2));
        assert_eq!(find_self_with(&all, ip("10.1.0.2"), 8848, |_| false), Ok(1));
        let e = find_self_with(&all, ip("10.1.0.9"), 8848, |_| true).expect_err("absent");
        assert_eq!(
            e,
            "this node (bind 10.1.0.9, http port 8848) is not in the member list \
             [10.1.0.1:8848, 10.1.0.2:8848, 10.1.0.2:8850]"
        );
        // Binding every address: the local member with our port.
        let local = |a: IpAddr| a == ip("10.1.0.1");
        assert_eq!(find_self_with(&all, ip("0.0.0.0"), 8848, local), Ok(0));
        let e = find_self_with(&all, ip("0.0.0.0"), 8848, |_| true).expect_err("ambiguous");
        assert!(e.contains("several members"), "{e}");
        // The real locality test: loopback is local, a documentation address is not.
        let real = vec![m("127.0.0.5:8848"), m("192.0.2.1:8848")];
        assert_eq!(find_self(&real, ip("0.0.0.0"), 8848), Ok(0));
        assert!(!is_local_ip(ip("192.0.2.1")));
    }

    #[test]
    fn watcher_keeps_old_list_on_broken_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cluster.conf");
        std::fs::write(&path, "127.0.0.1:8848\n127.0.0.2:8848\n").expect("write");
        let mut w = ClusterConfWatcher::new(&path).expect("reads");
        assert_eq!(w.members().len(), 2);
        assert_eq!(w.poll(), None, "unchanged");
        std::fs::write(&path, "127.0.0.1:8848\n127.0.0.2:8848\n# comment\n").expect("write");
        assert_eq!(w.poll(), None, "same members");
        std::fs::write(&path, "127.0.0.1:8848\nbroken line\n").expect("write");
        assert_eq!(w.poll(), None, "broken keeps the old list");
        assert_eq!(w.members().len(), 2);
        std::fs::remove_file(&path).expect("rm");
        assert_eq!(w.poll(), None, "missing keeps the old list");
        std::fs::write(&path, "127.0.0.1:8848\n127.0.0.3:8848\n").expect("write");
        assert_eq!(
            w.poll(),
            Some(vec![m("127.0.0.1:8848"), m("127.0.0.3:8848")])
        );
        assert!(ClusterConfWatcher::new(dir.path().join("absent")).is_err());
    }
}
