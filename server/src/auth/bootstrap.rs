//! What a node with `--auth` writes to the store once it serves: a token secret when the
//! store has none (and no `--auth-token-secret` is given), and the administrator of
//! `--admin-password` when no administrator exists. Every node may try; the store keeps the
//! first secret and refuses a second administrator, so the outcome is the same whoever wins.
//! Retried while there is no Raft leader (a cluster still electing one).

use std::time::Duration;

use engine::store::auth::{AuthCommand, ADMIN_USER, MIN_SECRET};
use tracing::{info, warn};

use crate::cp::CpError;

fn random_secret() -> Option<Vec<u8>> {
    use ring::rand::SecureRandom;
    let mut bytes = vec![0u8; MIN_SECRET];
    ring::rand::SystemRandom::new().fill(&mut bytes).ok()?;
    Some(bytes)
}

/// Runs on core 0 after the store replayed (a task: it may wait for a leader).
pub async fn run(admin_password: Option<String>) {
    if !super::enabled() {
        return;
    }
    let cp = crate::core::with_core(|c| c.shared.cp.clone());
    let mut delay = Duration::from_millis(100);
    while super::settings().secret.is_none() && super::current().secret().is_none() {
        let Some(secret) = random_secret() else {
            warn!("no randomness for the token secret: give --auth-token-secret");
            return;
        };
        match cp.write_auth(AuthCommand::InitSecret { secret }).await {
            Ok(_) => info!("auth: token secret in the Raft store"),
            Err(e) => {
                warn!(error = ?e, "auth: cannot store a token secret yet; retrying");
                glommio::timer::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    let Some(password) = admin_password else {
        if !super::current().has_admin() {
            info!("auth: no administrator yet: create one with POST /nacos/v1/auth/users/admin (password=...) or --admin-password");
        }
        return;
    };
    while !super::current().has_admin() {
        let Ok(hash) = super::hash::hash(&password).await else {
            glommio::timer::sleep(delay).await;
            continue;
        };
        let cmd = AuthCommand::CreateAdmin {
            username: ADMIN_USER.to_owned(),
            password_hash: hash,
        };
        match cp.write_auth(cmd).await {
            Ok(_) => info!(
                user = ADMIN_USER,
                "auth: administrator created from --admin-password"
            ),
            Err(CpError::Refused { .. }) => return, // another node created one
            Err(e) => {
                warn!(error = ?e, "auth: cannot create the administrator yet; retrying");
                glommio::timer::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
