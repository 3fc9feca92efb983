//! Mutual TLS (rustls, ring provider) for the peer and client ports.
//!
//! Every certificate is checked against one cluster CA (`--tls-ca`). On the
//! peer port both sides present a certificate: a node accepts a peer only
//! if the CA signed the peer's, and dials a peer only if the CA signed the
//! one the peer presents for the address dialled (IP or DNS name in its
//! subject alternative names). On the client port a client must present a
//! certificate the CA signed, unless the node allows server-only TLS for
//! clients. Resumption tickets are off: connections are long-lived.
//!
//! The simulation models the network below TLS, so this module exists only
//! on real sockets.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Where a node's or a client's TLS material lives (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// This side's certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The cluster CA that signs every node's and client's certificate.
    pub ca: PathBuf,
}

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no valid PEM of the kind needed.
    #[error("reading the {what} from {}: {detail}", path.display())]
    File {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The material was read but rustls refused it (a key that does not
    /// match its certificate, an unusable CA).
    #[error("TLS configuration refused: {0}")]
    Config(String),
}

/// A node's TLS: acceptors for its two ports and a connector for dialling
/// peers.
#[derive(Clone)]
pub struct NodeTls {
    /// The peer port: the peer must present a certificate the CA signed.
    pub peer_acceptor: TlsAcceptor,
    /// Dialling peers: presents this node's certificate.
    pub peer_connector: TlsConnector,
    /// The client port.
    pub client_acceptor: TlsAcceptor,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeTls { .. }")
    }
}

impl NodeTls {
    /// Loads a node's material. `clients_need_cert` false allows clients
    /// without a certificate (server-only TLS on the client port).
    pub fn load(files: &TlsFiles, clients_need_cert: bool) -> Result<Self, TlsError> {
        let provider = provider();
        let roots = Arc::new(load_roots(&files.ca)?);
        let chain = load_chain(&files.cert)?;
        let key = load_key(&files.key)?;
        let server = |require_cert: bool| -> Result<TlsAcceptor, TlsError> {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
            let verifier = if require_cert {
                verifier.build()
            } else {
                verifier.allow_unauthenticated().build()
            }
            .map_err(|e| TlsError::Config(e.to_string()))?;
            let mut cfg = ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(config_error)?
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain.clone(), key.clone_key())
                .map_err(config_error)?;
            cfg.send_tls13_tickets = 0;
            Ok(TlsAcceptor::from(Arc::new(cfg)))
        };
        let peer_connector = TlsConnector::from(client_config(
            roots.clone(),
            Some((chain.clone(), key.clone_key())),
        )?);
        Ok(NodeTls {
            peer_acceptor: server(true)?,
            peer_connector,
            client_acceptor: server(clients_need_cert)?,
        })
    }
}

/// A client's TLS (kv-cli, kv-bench): trusts the cluster CA at `ca` and
/// presents the certificate and key given, if any.
pub fn client_tls(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = Arc::new(load_roots(ca)?);
    let identity = match identity {
        Some((cert, key)) => Some((load_chain(cert)?, load_key(key)?)),
        None => None,
    };
    client_config(roots, identity)
}

/// The name a server's certificate must carry when dialled at `addr`.
pub fn server_name(addr: SocketAddr) -> ServerName<'static> {
    ServerName::IpAddress(addr.ip().into())
}

fn client_config(
    roots: Arc<RootCertStore>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_webpki_verifier(verifier);
    let cfg = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(config_error)?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn config_error(e: rustls::Error) -> TlsError {
    TlsError::Config(e.to_string())
}

fn file_error(what: &'static str, path: &Path, detail: impl ToString) -> TlsError {
    TlsError::File {
        what,
        path: path.to_path_buf(),
        detail: detail.to_string(),
    }
}

fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    const WHAT: &str = "certificate chain";
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(WHAT, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(WHAT, path, e))?;
    if chain.is_empty() {
        return Err(file_error(WHAT, path, "no CERTIFICATE block"));
    }
    Ok(chain)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error("private key", path, e))
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_chain(path)? {
        roots
            .add(cert)
            .map_err(|e| file_error("CA certificate", path, e))?;
    }
    Ok(roots)
}
