//! `nacelle certs`: a cluster CA and node certificates for the peer transport's mutual TLS.
//!
//! ```text
//! nacelle certs ca   --out DIR                                        -> DIR/ca.pem, DIR/ca.key
//! nacelle certs node --ca-dir DIR --name NAME --ip IP [--ip IP2] --out DIR
//!                                                                     -> DIR/NAME.pem, DIR/NAME.key
//! ```
//!
//! # Layout
//! - [`generate_ca`] / [`generate_node`]: pure, PEM in and out (tests and tools use these).
//! - [`write_ca`] / [`write_node`]: the same onto files; keys are written `0600` and existing
//!   files are never overwritten without `--force` (a silently replaced CA key would split the
//!   cluster into nodes that no longer trust each other).
//! - [`run`]: the command line, for `main` to call with the arguments after `certs`.
//!
//! A node certificate names the node's IPs (what peers dial and check) and `NAME` as a DNS name,
//! and is valid for both server and client authentication: each node accepts connections *and*
//! dials its peers with the same certificate. Keys are ECDSA P-256.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct PemPair {
    /// The certificate (`-----BEGIN CERTIFICATE-----`).
    pub cert: String,
    /// The PKCS#8 private key (`-----BEGIN PRIVATE KEY-----`).
    pub key: String,
}

/// Validity of a new CA and of a node certificate, in years from the start of this year.
const CA_YEARS: i32 = 10;
const NODE_YEARS: i32 = 5;

/// This year (UTC), from the clock: certificates start on January 1st so that a node whose
/// clock lags a little still accepts a fresh certificate.
fn this_year() -> i32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // 365.2425 days per year; off by at most a day around New Year, which the January 1st start
    // absorbs.
    1970 + (secs / 31_556_952) as i32
}

fn validity(params: &mut CertificateParams, years: i32) {
    let y = this_year();
    params.not_before = rcgen::date_time_ymd(y, 1, 1);
    params.not_after = rcgen::date_time_ymd(y + years, 1, 1);
}

/// A new self-signed cluster CA.
pub fn generate_ca(common_name: &str) -> Result<PemPair, String> {
    let key = KeyPair::generate().map_err(|e| format!("cannot generate the CA key: {e}"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "Nacelle");
    params.distinguished_name = dn;
    // Path length 0: the CA signs node certificates only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, CA_YEARS);
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("cannot sign the CA certificate: {e}"))?;
    Ok(PemPair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A node certificate signed by the CA, for server and client authentication, naming `ips` (IP
/// SANs) and `name` (a DNS SAN and the common name).
pub fn generate_node(ca: &PemPair, name: &str, ips: &[IpAddr]) -> Result<PemPair, String> {
    if ips.is_empty() {
        return Err("a node certificate needs at least one --ip (what peers dial)".into());
    }
    let ca_key = KeyPair::from_pem(&ca.key).map_err(|e| format!("cannot read the CA key: {e}"))?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key)
        .map_err(|e| format!("cannot read the CA certificate: {e}"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationName, "Nacelle");
    params.distinguished_name = dn;
    let mut sans: Vec<SanType> = ips.iter().map(|ip| SanType::IpAddress(*ip)).collect();
    sans.push(SanType::DnsName(name.try_into().map_err(|e| {
        format!("--name `{name}` is not usable as a DNS name: {e}")
    })?));
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, NODE_YEARS);
    let key = KeyPair::generate().map_err(|e| format!("cannot generate the node key: {e}"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| format!("cannot sign the node certificate: {e}"))?;
    Ok(PemPair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// Writes `contents` to a new file (mode `mode`), refusing to replace one unless `force`.
fn write_new(path: &Path, contents: &str, mode: u32, force: bool) -> Result<(), String> {
    let mut opts = OpenOptions::new();
    opts.write(true).mode(mode);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            format!("{} exists (pass --force to replace it)", path.display())
        } else {
            format!("cannot create {}: {e}", path.display())
        }
    })?;
    f.write_all(contents.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn create_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

/// Writes both files of a pair: the key first, so an existing key stops everything.
fn write_pair(dir: &Path, stem: &str, pair: &PemPair, force: bool) -> Result<PathBuf, String> {
    create_dir(dir)?;
    let cert_path = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}.key"));
    if !force && cert_path.exists() {
        return Err(format!(
            "{} exists (pass --force to replace it)",
            cert_path.display()
        ));
    }
    write_new(&key_path, &pair.key, 0o600, force)?;
    write_new(&cert_path, &pair.cert, 0o644, force)?;
    Ok(cert_path)
}

/// Creates `DIR/ca.pem` and `DIR/ca.key`.
pub fn write_ca(out: &Path, force: bool) -> Result<PemPair, String> {
    let ca = generate_ca("Nacelle cluster CA")?;
    write_pair(out, "ca", &ca, force)?;
    Ok(ca)
}

/// Reads `DIR/ca.pem` and `DIR/ca.key`.
pub fn read_ca(ca_dir: &Path) -> Result<PemPair, String> {
    let read = |f: &str| {
        let p = ca_dir.join(f);
        std::fs::read_to_string(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    Ok(PemPair {
        cert: read("ca.pem")?,
        key: read("ca.key")?,
    })
}

/// Creates `OUT/NAME.pem` and `OUT/NAME.key` signed by the CA in `ca_dir`.
pub fn write_node(
    ca_dir: &Path,
    name: &str,
    ips: &[IpAddr],
    out: &Path,
    force: bool,
) -> Result<PemPair, String> {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(format!(
            "--name `{name}` must be a plain file and host name"
        ));
    }
    let ca = read_ca(ca_dir)?;
    let node = generate_node(&ca, name, ips)?;
    write_pair(out, name, &node, force)?;
    Ok(node)
}

/// `nacelle certs`: certificates for the cluster's mutual TLS.
#[derive(Parser, Debug)]
#[command(
    name = "nacelle certs",
    about = "Certificates for the mutual TLS between cluster nodes",
    long_about = None
)]
struct CertsCli {
    #[command(subcommand)]
    cmd: CertsCmd,
}

#[derive(Subcommand, Debug)]
enum CertsCmd {
    /// Create a cluster CA: OUT/ca.pem and OUT/ca.key (keep the key off the nodes).
    Ca {
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Create a node certificate signed by the CA: OUT/NAME.pem and OUT/NAME.key, valid as
    /// server and client certificate for the given IPs.
    Node {
        /// Directory holding ca.pem and ca.key.
        #[arg(long)]
        ca_dir: PathBuf,
        /// Node name: file name, common name and DNS name of the certificate.
        #[arg(long)]
        name: String,
        /// An IP address peers dial this node at (repeat for several).
        #[arg(long = "ip", required = true)]
        ips: Vec<IpAddr>,
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

/// Runs `nacelle certs ARGS...` (`args` are the words after `certs`). Help is printed and is not
/// an error.
pub fn run(args: &[String]) -> Result<(), String> {
    let argv = std::iter::once("nacelle certs".to_string()).chain(args.iter().cloned());
    let cli = match CertsCli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            return match e.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    print!("{e}");
                    Ok(())
                }
                _ => Err(e.to_string().trim_end().to_string()),
            };
        }
    };
    match cli.cmd {
        CertsCmd::Ca { out, force } => {
            write_ca(&out, force)?;
            println!(
                "wrote {} and {} (keep ca.key safe: it admits nodes to the cluster)",
                out.join("ca.pem").display(),
                out.join("ca.key").display()
            );
        }
        CertsCmd::Node {
            ca_dir,
            name,
            ips,
            out,
            force,
        } => {
            write_node(&ca_dir, &name, &ips, &out, force)?;
            println!(
                "wrote {} and {}",
                out.join(format!("{name}.pem")).display(),
                out.join(format!("{name}.key")).display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn cli_writes_ca_and_node_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_dir = dir.path().join("ca");
        let node_dir = dir.path().join("nodes");
        let ca = ca_dir.to_string_lossy().to_string();
        let nodes = node_dir.to_string_lossy().to_string();
        run(&s(&["ca", "--out", &ca])).expect("ca");
        let err = run(&s(&["ca", "--out", &ca])).expect_err("no overwrite");
        assert!(err.contains("--force"), "{err}");
        run(&s(&["ca", "--out", &ca, "--force"])).expect("forced");
        run(&s(&[
            "node",
            "--ca-dir",
            &ca,
            "--name",
            "n1",
            "--ip",
            "127.0.0.1",
            "--ip",
            "::1",
            "--out",
            &nodes,
        ]))
        .expect("node");
        for f in ["ca/ca.pem", "ca/ca.key", "nodes/n1.pem", "nodes/n1.key"] {
            let text = std::fs::read_to_string(dir.path().join(f)).expect("written");
            assert!(text.starts_with("-----BEGIN"), "{f}");
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(node_dir.join("n1.key"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "key readable by others: {mode:o}");
        let err = run(&s(&[
            "node", "--ca-dir", &ca, "--name", "n2", "--out", &nodes,
        ]))
        .expect_err("needs --ip");
        assert!(err.contains("--ip"), "{err}");
        let err = run(&s(&[
            "node",
            "--ca-dir",
            &nodes,
            "--name",
            "n2",
            "--ip",
            "127.0.0.1",
            "--out",
            &nodes,
        ]))
        .expect_err("no CA there");
        assert!(err.contains("ca.pem"), "{err}");
        run(&s(&["--help"])).expect("help is not an error");
    }
}
