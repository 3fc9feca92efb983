//! Throwaway TLS material for trying mutual TLS locally: a cluster CA,
//! one certificate per node (for the peer and client ports, valid for
//! 127.0.0.1 and localhost, usable as server and as client) and one client
//! certificate, all as PEM files in one directory. Never for production:
//! the CA's key sits beside the certificates it signed.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The files of one identity in a dev-certs directory.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Its certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

/// Paths of the files `write` creates in `dir`.
#[derive(Debug, Clone)]
pub struct DevCerts {
    /// The CA certificate every side trusts.
    pub ca: PathBuf,
    /// Node `id`'s identity is `nodes[id - 1]`.
    pub nodes: Vec<Identity>,
    /// A client's identity.
    pub client: Identity,
}

/// Makes a fresh CA and signs certificates for nodes 1..=`nodes` and one
/// client, written to `dir` (created if missing; existing files replaced).
pub fn write(dir: &Path, nodes: u64) -> Result<DevCerts> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "kv dev CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca = dir.join("ca.pem");
    write_file(&ca, &ca_cert.pem())?;
    write_key(&dir.join("ca-key.pem"), &ca_key.serialize_pem())?;
    let issuer = Issuer::new(ca_params, ca_key);

    let sign = |name: &str, sans: Vec<String>, usages: Vec<ExtendedKeyUsagePurpose>| {
        let key = KeyPair::generate().context("generating a key")?;
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = usages;
        let cert = params.signed_by(&key, &issuer)?;
        let identity = Identity {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
        };
        write_file(&identity.cert, &cert.pem())?;
        write_key(&identity.key, &key.serialize_pem())?;
        anyhow::Ok(identity)
    };
    let both = || {
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ]
    };
    let local = || vec!["127.0.0.1".to_string(), "localhost".to_string()];
    let nodes = (1..=nodes)
        .map(|id| sign(&format!("node-{id}"), local(), both()))
        .collect::<Result<Vec<_>>>()?;
    let client = sign(
        "client",
        Vec::new(),
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    )?;
    Ok(DevCerts { ca, nodes, client })
}

/// Writes a private key readable by its owner only.
fn write_key(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

fn write_file(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}
