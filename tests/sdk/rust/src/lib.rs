//! Helpers shared by the nacos-sdk (Rust, gRPC) conformance tests.
//!
//! Environment (set by tests/sdk/run.sh): NACOS_HOST, NACOS_HTTP_PORT, NACOS_GRPC_PORT,
//! SERVER_KIND (nacelle | rnacos).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nacos_sdk::api::naming::{
    NamingChangeEvent, NamingEventListener, NamingService, NamingServiceBuilder, ServiceInstance,
};
use nacos_sdk::api::props::ClientProps;

pub const GROUP: &str = "DEFAULT_GROUP";
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(10);
pub const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(15);

pub fn host() -> String {
    std::env::var("NACOS_HOST").unwrap_or_else(|_| "127.0.0.1".into())
}
pub fn http_port() -> u16 {
    std::env::var("NACOS_HTTP_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(8848)
}
pub fn grpc_port() -> u16 {
    std::env::var("NACOS_GRPC_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(http_port() + 1000)
}
pub fn server_kind() -> String {
    std::env::var("SERVER_KIND").unwrap_or_else(|_| "nacelle".into())
}

pub fn client_props(app: &str) -> ClientProps {
    ClientProps::new()
        .server_addr(format!("{}:{}", host(), http_port()))
        .remote_grpc_port(grpc_port())
        .namespace("")
        .app_name(app)
        .env_first(false)
        .load_cache_at_start(false)
        // Let listeners see a service becoming empty.
        .naming_push_empty_protection(false)
        .cache_dir(std::env::temp_dir().join(format!("nacos-rs-sdk-{}", std::process::id())))
}

pub async fn new_naming(app: &str) -> NamingService {
    tokio::time::timeout(
        Duration::from_secs(20),
        NamingServiceBuilder::new(client_props(app)).build(),
    )
    .await
    .expect("building NamingService timed out")
    .expect("building NamingService failed")
}

pub fn unique_service(tag: &str) -> String {
    format!("rs-{}-{:010x}", tag, rand::random::<u64>() & 0xff_ffff_ffff)
}

pub fn instance(ip: &str, port: i32) -> ServiceInstance {
    ServiceInstance { ip: ip.to_string(), port, ..Default::default() }
}

pub fn instance_md(ip: &str, port: i32, md: &[(&str, &str)]) -> ServiceInstance {
    let metadata: HashMap<String, String> =
        md.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    ServiceInstance { ip: ip.to_string(), port, metadata, ..Default::default() }
}

pub fn addrs(list: &[ServiceInstance]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|i| format!("{}:{}", i.ip, i.port)).collect();
    v.sort();
    v
}

/// Poll `f` until it yields `Some`, or panic after `timeout`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Direct query (ServiceQueryRequest, no subscription, no cache).
pub async fn query(ns: &NamingService, svc: &str, group: &str) -> Vec<String> {
    match ns.get_all_instances(svc.to_string(), Some(group.to_string()), vec![], false).await {
        Ok(v) => addrs(&v),
        Err(e) => panic!("get_all_instances({svc}) failed: {e}"),
    }
}

/// Listener that records every instance list it is notified with.
#[derive(Default, Clone)]
pub struct Recorder {
    pub events: Arc<Mutex<Vec<Vec<String>>>>,
}

impl NamingEventListener for Recorder {
    fn event(&self, event: Arc<NamingChangeEvent>) {
        let list = event.instances.as_deref().map(addrs).unwrap_or_default();
        self.events.lock().unwrap().push(list);
    }
}

impl Recorder {
    pub fn saw(&self, want: &[&str]) -> bool {
        self.events.lock().unwrap().iter().any(|e| e.iter().map(String::as_str).eq(want.iter().copied()))
    }
    pub fn last_is(&self, want: &[&str]) -> bool {
        self.events
            .lock()
            .unwrap()
            .last()
            .map(|e| e.iter().map(String::as_str).eq(want.iter().copied()))
            .unwrap_or(false)
    }
    pub fn snapshot(&self) -> Vec<Vec<String>> {
        self.events.lock().unwrap().clone()
    }
}

/// Run a test body whose *Nacos* expectation r-nacos is known not to meet.
///
/// Against Nacelle (or any SERVER_KIND other than `rnacos`) this is a normal test.  Against
/// r-nacos the body still runs; a failure is printed as a KNOWN DEVIATION instead of failing
/// the suite, and an unexpected pass is reported too, so the difference stays visible.
pub async fn rnacos_deviation<F>(reason: &str, body: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    known_gap(&["rnacos"], reason, body).await
}

/// Like [`rnacos_deviation`] for any list of SERVER_KINDs known not to pass the body.
pub async fn known_gap<F>(kinds: &[&str], reason: &str, body: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    if !kinds.contains(&server_kind().as_str()) {
        body.await;
        return;
    }
    match tokio::spawn(body).await {
        Ok(()) => eprintln!("XPASS (known gap no longer observed): {reason}"),
        Err(e) => eprintln!("XFAIL known gap: {reason}: {e}"),
    }
}

/// A naming client that logs in over HTTP with `username` / `password` (nacos-sdk's
/// `auth-by-http` plugin) and sends the token in every gRPC request's headers.
pub async fn new_naming_as(app: &str, username: &str, password: &str) -> NamingService {
    let props = client_props(app).auth_username(username).auth_password(password);
    tokio::time::timeout(
        Duration::from_secs(20),
        NamingServiceBuilder::new(props).enable_auth_plugin_http().build(),
    )
    .await
    .expect("building NamingService timed out")
    .expect("building NamingService failed")
}
