//! The UDP push side of `GET /instance/list`: a call with `udpPort` from a push-eligible
//! User-Agent names a push target, which goes to the core owning the service once the call
//! has been answered.
//!
//! Where pushes go: the address the request came from, with the `udpPort` it names. With
//! `--udp-push-client-ip` the `clientIP` it names instead (Nacos's behaviour, needed when a
//! proxy stands between client and node); the per-source bound still counts the request's
//! address, so one host cannot make the node push to many others.
//!
//! The revision of the view is read *before* the answer is: if the service changes between
//! the two reads, the owner sees a newer view than the one recorded and pushes it at once,
//! so the change is never missed, at worst pushed once more.

use std::net::SocketAddr;

use engine::model::Str;
use engine::udp_push::Subscription;
use wire::http_params::Params;
use wire::udp_push;

use crate::core::with_core;

/// The target a list call names, if any (before the call is answered).
pub(super) fn before_list(
    p: &Params<'_>,
    user_agent: Option<&str>,
    peer: Option<SocketAddr>,
) -> Option<Subscription> {
    let target = udp_push::list_target(p)?;
    if !udp_push::push_eligible(user_agent?) {
        return None;
    }
    let source = peer?.ip().to_canonical();
    let query = p.instance_query().ok()?;
    let (use_client_ip, index) = with_core(|c| {
        (
            c.shared.cfg.udp_push.udp_push_client_ip,
            c.shared.index.clone(),
        )
    });
    let ip = match target.client_ip {
        Some(claimed) if use_client_ip => claimed.to_canonical(),
        _ => source,
    };
    let seen_revision = index.read(&query.key, |v| v.map_or(0, |v| v.revision));
    Some(Subscription {
        service: query.key,
        target: SocketAddr::new(ip, target.udp_port),
        source,
        clusters: Str::from(query.clusters),
        healthy_only: query.healthy_only,
        app: Str::from(target.app),
        seen_revision,
    })
}

/// The call was answered: the target goes to the service's owner.
pub(super) fn after_list(sub: Subscription) {
    with_core(|c| c.udp_subscribe(sub));
}
