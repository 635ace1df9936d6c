//! An in-process cluster: nodes over an in-memory transport that round-trips every message
//! through postcard bytes and can cut a node off.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine::store::naming::{NamingCommand, NamingEffect, PersistentInstance, ServiceRef};
use engine::store::{StoreCommand, StoreEffect};
use nacelle_raft::{NodeId, RaftConfig, RaftHandle, RaftMessage, RaftNode, Role, Transport};

/// A transport for a node alone.
pub struct NoNet;

impl Transport for NoNet {
    fn send(&self, _: NodeId, _: RaftMessage) {}
}

#[derive(Default)]
pub struct Net {
    nodes: Mutex<HashMap<NodeId, RaftHandle>>,
    cut: Mutex<HashSet<NodeId>>,
}

impl Net {
    pub fn cut(&self, id: NodeId) {
        self.cut.lock().expect("cut").insert(id);
    }
    pub fn heal(&self, id: NodeId) {
        self.cut.lock().expect("cut").remove(&id);
    }
}

pub struct MemTransport {
    from: NodeId,
    net: Arc<Net>,
}

impl Transport for MemTransport {
    fn send(&self, to: NodeId, msg: RaftMessage) {
        {
            let cut = self.net.cut.lock().expect("cut");
            if cut.contains(&self.from) || cut.contains(&to) {
                return;
            }
        }
        let bytes = postcard::to_stdvec(&msg).expect("encode");
        let msg: RaftMessage = postcard::from_bytes(&bytes).expect("decode");
        let node = self.net.nodes.lock().expect("nodes").get(&to).cloned();
        if let Some(node) = node {
            node.deliver(self.from, msg);
        }
    }
}

/// What the effects sink saw: instances by (service name, port), and the applied indexes.
#[derive(Default, Debug)]
pub struct Model {
    pub instances: BTreeSet<(String, u16)>,
    pub last_index: u64,
    pub calls: u64,
}

pub type Shared = Arc<Mutex<Model>>;

pub fn sink(model: Shared) -> impl FnMut(u64, Vec<StoreEffect>) + Send + 'static {
    move |index, effects| {
        let mut m = model.lock().expect("model");
        assert!(
            index >= m.last_index,
            "effects out of order: {index} after {}",
            m.last_index
        );
        m.last_index = index;
        m.calls += 1;
        for e in effects {
            match e {
                StoreEffect::Naming(NamingEffect::InstanceUpserted { service, instance }) => {
                    m.instances.insert((service.name, instance.port));
                }
                StoreEffect::Naming(NamingEffect::InstanceRemoved { service, instance }) => {
                    m.instances.remove(&(service.name, instance.port));
                }
                _ => {}
            }
        }
    }
}

pub fn register(service: &str, port: u16) -> StoreCommand {
    StoreCommand::Naming(NamingCommand::Register {
        service: ServiceRef {
            namespace: "public".into(),
            group: "DEFAULT_GROUP".into(),
            name: service.into(),
        },
        instance: PersistentInstance {
            ip: "10.0.0.1".into(),
            port,
            cluster: "DEFAULT".into(),
            weight: 1.0,
            healthy: true,
            enabled: true,
            metadata: BTreeMap::new(),
        },
    })
}

pub struct Cluster {
    pub net: Arc<Net>,
    pub root: PathBuf,
    pub members: BTreeSet<NodeId>,
    pub handles: BTreeMap<NodeId, RaftHandle>,
    pub models: BTreeMap<NodeId, Shared>,
    pub tweak: fn(&mut RaftConfig),
}

pub fn no_tweak(_: &mut RaftConfig) {}

impl Cluster {
    pub fn new(root: &Path, members: &[NodeId], tweak: fn(&mut RaftConfig)) -> Cluster {
        let mut c = Cluster {
            net: Arc::new(Net::default()),
            root: root.to_path_buf(),
            members: members.iter().copied().collect(),
            handles: BTreeMap::new(),
            models: BTreeMap::new(),
            tweak,
        };
        for &id in members {
            c.start(id);
        }
        c
    }

    pub fn dir(&self, id: NodeId) -> PathBuf {
        self.root.join(format!("node{id}"))
    }

    pub fn start(&mut self, id: NodeId) {
        let mut config = RaftConfig::new(id, self.members.clone(), self.dir(id));
        (self.tweak)(&mut config);
        let model: Shared = Default::default();
        let transport = MemTransport {
            from: id,
            net: self.net.clone(),
        };
        let handle = RaftNode::start(config, transport, sink(model.clone())).expect("start");
        self.net
            .nodes
            .lock()
            .expect("nodes")
            .insert(id, handle.clone());
        self.handles.insert(id, handle);
        self.models.insert(id, model);
    }

    pub fn stop(&mut self, id: NodeId) {
        self.net.nodes.lock().expect("nodes").remove(&id);
        if let Some(h) = self.handles.remove(&id) {
            h.shutdown();
        }
    }

    pub fn stop_all(&mut self) {
        let ids: Vec<_> = self.handles.keys().copied().collect();
        for id in ids {
            self.stop(id);
        }
    }

    pub fn h(&self, id: NodeId) -> &RaftHandle {
        self.handles.get(&id).expect("node")
    }

    /// Waits until every running node agrees on one leader; returns it.
    pub fn wait_leader(&self, within: Duration) -> NodeId {
        let start = Instant::now();
        loop {
            let leaders: Vec<_> = self
                .handles
                .values()
                .map(|h| h.metrics())
                .filter(|m| !self.net.cut.lock().expect("cut").contains(&m.id))
                .map(|m| (m.leader, m.role))
                .collect();
            if let Some((Some(l), _)) = leaders.first() {
                let agreed = leaders.iter().all(|(x, _)| *x == Some(*l));
                let leading = self
                    .handles
                    .get(l)
                    .is_some_and(|h| h.metrics().role == Role::Leader);
                if agreed && leading {
                    return *l;
                }
            }
            assert!(
                start.elapsed() < within,
                "no leader within {within:?}: {leaders:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn instances(&self, id: NodeId) -> BTreeSet<(String, u16)> {
        self.models[&id].lock().expect("model").instances.clone()
    }

    /// Waits until the running nodes' models hold exactly `want`.
    pub fn wait_converged(&self, want: &BTreeSet<(String, u16)>, within: Duration) {
        let start = Instant::now();
        loop {
            let all = self.handles.keys().all(|id| self.instances(*id) == *want);
            if all {
                return;
            }
            if start.elapsed() > within {
                for id in self.handles.keys() {
                    let have = self.instances(*id);
                    eprintln!(
                        "node {id}: {} of {} instances; metrics {:?}",
                        have.len(),
                        want.len(),
                        self.h(*id).metrics()
                    );
                }
                panic!("not converged within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}
