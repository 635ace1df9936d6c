//! TLS for the peer transport: mutual TLS against a cluster CA, or an explicit insecure mode.
//!
//! # Layout
//! - [`TlsMode::from_flags`]: `--tls-cert/--tls-key/--tls-ca` or `--insecure`, with an error when
//!   a cluster has neither (a cluster must not run unauthenticated by accident).
//! - [`TlsMode::from_pem`]: the same from PEM bytes (tests, tools).
//! - [`TlsMode::server_crypto`] / [`TlsMode::client_crypto`]: the rustls configs wrapped for
//!   quinn-proto.
//!
//! Mutual TLS: the server side requires a client certificate issued by the CA
//! (`WebPkiClientVerifier`); the client side checks the server certificate against the same CA
//! with the peer's IP as server name, so a node certificate must carry its IPs as SANs (what
//! `nacelle certs node --ip` writes). TLS 1.3 only (QUIC requires it), ring as the provider,
//! ALPN [`ALPN`] so that a stray QUIC client of another protocol fails the handshake.
//!
//! Insecure: each node makes a throw-away self-signed certificate, servers request no client
//! certificate and clients accept any server certificate (the handshake signature is still
//! checked, so the traffic is encrypted, but anyone can join). Logged as a warning.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use quinn_proto::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tracing::warn;

/// The ALPN protocol of the peer transport; bump it when the frame protocol changes
/// incompatibly, so mixed versions fail at the handshake instead of mid-stream.
pub const ALPN: &[u8] = b"nacelle-peer/1";

/// How the peer transport authenticates, with the rustls configs already built.
#[derive(Clone)]
pub struct TlsMode {
    insecure: bool,
    server: Arc<QuicServerConfig>,
    client: Arc<QuicClientConfig>,
    /// Secret that outlives a restart (derived from the node key): see
    /// [`TlsMode::reset_secret`].
    reset_secret: Option<[u8; 32]>,
}

impl fmt::Debug for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMode")
            .field("insecure", &self.insecure)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}

fn certs_from_pem(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what}: not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what}: no certificate in the file"));
    }
    Ok(certs)
}

/// SHA-256 of `label` then `data`: a 32-byte secret bound to its purpose.
pub fn derive_secret(label: &[u8], data: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(label);
    ctx.update(data);
    let mut secret = [0u8; 32];
    secret.copy_from_slice(ctx.finish().as_ref());
    secret
}

impl TlsMode {
    /// Resolves the TLS flags of a clustered node: all three of `cert`, `key`, `ca` (mutual TLS),
    /// or `insecure` alone.
    pub fn from_flags(
        cert: Option<&Path>,
        key: Option<&Path>,
        ca: Option<&Path>,
        insecure: bool,
    ) -> Result<TlsMode, String> {
        match (cert, key, ca, insecure) {
            (None, None, None, true) => Self::insecure(),
            (_, _, _, true) => Err(
                "--insecure cannot be combined with --tls-cert/--tls-key/--tls-ca: choose one"
                    .into(),
            ),
            (Some(cert), Some(key), Some(ca), false) => Self::from_pem(
                &read(cert, "--tls-cert")?,
                &read(key, "--tls-key")?,
                &read(ca, "--tls-ca")?,
            )
            .map_err(|e| {
                format!(
                    "{e} (--tls-cert {}, --tls-key {}, --tls-ca {})",
                    cert.display(),
                    key.display(),
                    ca.display()
                )
            }),
            (None, None, None, false) => Err(
                "a cluster needs authenticated peers: pass --tls-cert, --tls-key and --tls-ca \
                 (make them with `nacelle certs ca` and `nacelle certs node`), or --insecure to \
                 let anyone who can reach the peer port join"
                    .into(),
            ),
            (cert, key, ca, false) => {
                let missing: Vec<&str> = [
                    (cert.is_none(), "--tls-cert"),
                    (key.is_none(), "--tls-key"),
                    (ca.is_none(), "--tls-ca"),
                ]
                .iter()
                .filter(|(m, _)| *m)
                .map(|(_, n)| *n)
                .collect();
                Err(format!(
                    "mutual TLS needs --tls-cert, --tls-key and --tls-ca: missing {}",
                    missing.join(", ")
                ))
            }
        }
    }

    /// Mutual TLS from PEM: this node's certificate chain and key, and the cluster CA.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8], ca_pem: &[u8]) -> Result<TlsMode, String> {
        let chain = certs_from_pem(cert_pem, "node certificate")?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| format!("node key: not a PEM private key: {e}"))?;
        let reset_secret = derive_secret(b"nacelle quic stateless reset v1\0", key.secret_der());
        let mut roots = RootCertStore::empty();
        for ca in certs_from_pem(ca_pem, "CA certificate")? {
            roots
                .add(ca)
                .map_err(|e| format!("CA certificate: unusable as a trust anchor: {e}"))?;
        }
        let roots = Arc::new(roots);
        let provider = provider();
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| format!("client verifier: {e}"))?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| format!("TLS 1.3: {e}"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| format!("node certificate and key do not fit together: {e}"))?;
        server.alpn_protocols = vec![ALPN.to_vec()];
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| format!("TLS 1.3: {e}"))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("node certificate and key do not fit together: {e}"))?;
        client.alpn_protocols = vec![ALPN.to_vec()];
        let mut mode = Self::wrap(false, server, client)?;
        mode.reset_secret = Some(reset_secret);
        Ok(mode)
    }

    /// Encrypted but unauthenticated: a fresh self-signed certificate, no client certificates,
    /// any server certificate accepted.
    pub fn insecure() -> Result<TlsMode, String> {
        warn!(
            "peer transport in --insecure mode: peers are NOT authenticated; anyone who can \
             reach the peer port can join the cluster"
        );
        let key = rcgen::KeyPair::generate().map_err(|e| format!("cannot generate a key: {e}"))?;
        let params = rcgen::CertificateParams::new(vec!["nacelle-insecure".to_string()])
            .map_err(|e| format!("certificate parameters: {e}"))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| format!("cannot self-sign: {e}"))?;
        let key = PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| format!("generated key: {e}"))?;
        let provider = provider();
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| format!("TLS 1.3: {e}"))?
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .map_err(|e| format!("self-signed certificate: {e}"))?;
        server.alpn_protocols = vec![ALPN.to_vec()];
        let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| format!("TLS 1.3: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)))
            .with_no_client_auth();
        client.alpn_protocols = vec![ALPN.to_vec()];
        Self::wrap(true, server, client)
    }

    fn wrap(
        insecure: bool,
        server: rustls::ServerConfig,
        client: rustls::ClientConfig,
    ) -> Result<TlsMode, String> {
        Ok(TlsMode {
            insecure,
            server: Arc::new(
                QuicServerConfig::try_from(server).map_err(|e| format!("QUIC server TLS: {e}"))?,
            ),
            client: Arc::new(
                QuicClientConfig::try_from(client).map_err(|e| format!("QUIC client TLS: {e}"))?,
            ),
            reset_secret: None,
        })
    }

    /// A secret for QUIC stateless-reset tokens that is the same after a restart: the new
    /// process can then reset the connections its peers still hold to the old one, and they
    /// redial at once instead of writing into a dead connection until its idle timeout (their
    /// frames to it lost meanwhile). Derived from the node key; `None` in insecure mode,
    /// where there is no secret to derive it from.
    pub fn reset_secret(&self) -> Option<[u8; 32]> {
        self.reset_secret
    }

    /// Whether peers go unauthenticated.
    pub fn is_insecure(&self) -> bool {
        self.insecure
    }

    /// The server-side crypto for `quinn_proto::ServerConfig::with_crypto`.
    pub fn server_crypto(&self) -> Arc<QuicServerConfig> {
        self.server.clone()
    }

    /// The client-side crypto for `quinn_proto::ClientConfig::new`.
    pub fn client_crypto(&self) -> Arc<QuicClientConfig> {
        self.client.clone()
    }
}

/// `--insecure` clients: any server certificate, but a valid TLS 1.3 handshake signature.
#[derive(Debug)]
struct AcceptAnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// main resolves the TLS flags before the executors start and hands the result to core 0.
    #[test]
    fn configs_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<TlsMode>();
        send_sync::<crate::peer::transport::TransportConfig>();
    }

    #[test]
    fn flag_combinations() {
        let p = Path::new("/nonexistent");
        let e = TlsMode::from_flags(None, None, None, false).expect_err("needs TLS");
        assert!(
            e.contains("--insecure") && e.contains("nacelle certs"),
            "{e}"
        );
        let e = TlsMode::from_flags(Some(p), None, Some(p), false).expect_err("partial");
        assert!(e.ends_with("missing --tls-key"), "{e}");
        let e = TlsMode::from_flags(Some(p), Some(p), Some(p), true).expect_err("both");
        assert!(e.contains("cannot be combined"), "{e}");
        let e = TlsMode::from_flags(Some(p), Some(p), Some(p), false).expect_err("no files");
        assert!(e.contains("cannot read --tls-cert /nonexistent"), "{e}");
        assert!(TlsMode::from_flags(None, None, None, true)
            .expect("insecure")
            .is_insecure());
    }

    #[test]
    fn certs_round_trip_into_rustls() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = crate::certs::write_ca(&dir.path().join("ca"), false).expect("ca");
        crate::certs::write_node(
            &dir.path().join("ca"),
            "n1",
            &["127.0.0.1".parse().expect("ip")],
            &dir.path().join("n"),
            false,
        )
        .expect("node");
        let tls = TlsMode::from_flags(
            Some(&dir.path().join("n/n1.pem")),
            Some(&dir.path().join("n/n1.key")),
            Some(&dir.path().join("ca/ca.pem")),
            false,
        )
        .expect("loads");
        assert!(!tls.is_insecure());
        // A key that is not the certificate's is refused up front.
        let other = crate::certs::generate_node(&ca, "n2", &["127.0.0.2".parse().expect("ip")])
            .expect("node");
        let cert = std::fs::read(dir.path().join("n/n1.pem")).expect("cert");
        let e = TlsMode::from_pem(&cert, other.key.as_bytes(), ca.cert.as_bytes())
            .expect_err("mismatched key");
        assert!(e.contains("do not fit"), "{e}");
        let e =
            TlsMode::from_pem(b"junk", other.key.as_bytes(), ca.cert.as_bytes()).expect_err("junk");
        assert!(e.contains("node certificate"), "{e}");
    }
}
