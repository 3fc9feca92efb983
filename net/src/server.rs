//! A running server: a node's core tasks, started with its peer transport,
//! its client listener and its HTTP endpoint. The one place that knows all
//! of them.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::api::NodeHandle;
use crate::client::server::ClientServer;
use crate::fs::FileSystem;
use crate::http::{HttpServer, HttpState};
use crate::metrics::Metrics;
use crate::node::{supervisor, NodeConfig, NodeError};
use crate::status::StatusBoard;
use crate::transport::PeerTransport;

/// Stops a node when asked; cheap to clone.
#[derive(Debug, Clone)]
pub struct Stopper(Arc<watch::Sender<bool>>);

impl Stopper {
    /// Asks every task of the node to stop.
    pub fn stop(&self) {
        let _ = self.0.send(true);
    }
}

/// A running node. Dropping it does not stop it; call `shutdown` or await `wait`.
pub struct Node {
    handle: NodeHandle,
    shutdown: Stopper,
    core: tokio::task::JoinHandle<Result<(), NodeError>>,
    client_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
}

impl Node {
    /// Opens storage in `cfg.data_dir`, recovers, binds the peer and client
    /// ports and starts the node's tasks.
    pub async fn start<F: FileSystem + Send + 'static>(
        cfg: NodeConfig,
        fs: F,
    ) -> Result<Node, NodeError> {
        cfg.validate().map_err(NodeError::Config)?;
        // A data dir in use, or someone else's, stops the start here; a
        // failing disk does not (the node waits for it to work).
        let first = match supervisor::open_storage(&cfg, &fs, None, false) {
            Err(e) if !e.is_disk_fault() => return Err(NodeError::Storage(e)),
            opened => opened,
        };

        let (peer_tx, peer_rx) =
            crate::peer_inbox::channel(cfg.peer_inbound_capacity, cfg.peer_inbound_bytes);
        let transport = PeerTransport::start(cfg.transport_config(), peer_tx).await?;
        let (request_tx, request_rx) = mpsc::channel(cfg.client_queue_capacity);
        let members = cfg
            .members
            .iter()
            .map(|(&id, m)| (id, m.client_addr))
            .collect();
        let board = StatusBoard::new(cfg.id, cfg.client_addr(), members, cfg.read_mode_name());
        let metrics = Metrics::new();
        let handle = NodeHandle::new(request_tx, board.clone(), metrics.clone());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let shutdown = Stopper(Arc::new(shutdown));

        let client_addr = start_client_listener(&cfg, handle.clone(), shutdown_rx.clone()).await?;
        let http_addr = match cfg.http_addr {
            Some(addr) => {
                let state = HttpState {
                    node: handle.clone(),
                    metrics: metrics.clone(),
                    transport: transport.probe(),
                    quorum_window: cfg.tick * (cfg.election_ticks as u32) * 2,
                };
                start_http(addr, state, shutdown_rx.clone()).await?
            }
            None => None,
        };
        let inputs = supervisor::Inputs {
            peer_rx,
            request_rx,
            shutdown: shutdown_rx,
            board,
            metrics,
        };
        let core = tokio::spawn(supervisor::supervise(cfg, fs, first, transport, inputs));
        Ok(Node {
            handle,
            shutdown,
            core,
            client_addr,
            http_addr,
        })
    }

    /// A handle for submitting client operations directly.
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// The bound client address.
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    /// The bound HTTP address (`/metrics`, `/health`, `/status`), if any.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Asks every task to stop.
    pub fn shutdown(&self) {
        self.shutdown.stop();
    }

    /// A handle that can stop the node from elsewhere (a signal handler).
    pub fn stopper(&self) -> Stopper {
        self.shutdown.clone()
    }

    /// Waits until the node stops; returns why it stopped if it failed.
    /// Once the core has stopped, client connections get up to two seconds
    /// to finish their answers and say goodbye.
    pub async fn wait(self) -> Result<(), NodeError> {
        let ended = match self.core.await {
            Ok(result) => result,
            Err(e) => Err(NodeError::Config(format!(
                "core task ended abnormally: {e}"
            ))),
        };
        let give_up = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        while self.handle.status().connections > 0 && tokio::time::Instant::now() < give_up {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        ended
    }

    /// Stops the node and waits for it.
    pub async fn stop(self) -> Result<(), NodeError> {
        self.shutdown();
        self.wait().await
    }
}

/// Binds the client port (with TLS if configured) and starts serving it;
/// returns the address bound.
async fn start_client_listener(
    cfg: &NodeConfig,
    handle: NodeHandle,
    shutdown: watch::Receiver<bool>,
) -> Result<SocketAddr, NodeError> {
    let client_server =
        ClientServer::bind(cfg.client_addr(), cfg.client_limits(), handle, shutdown)
            .await
            .map_err(|source| NodeError::Listen {
                addr: cfg.client_addr(),
                source,
            })?;
    #[cfg(not(madsim))]
    let client_server = client_server.with_tls(cfg.tls.as_ref());
    let client_addr = client_server.local_addr();
    tokio::spawn(client_server.run());
    Ok(client_addr)
}

/// Binds the HTTP endpoint (`/metrics`, `/health`, `/status`) and starts
/// serving it; returns the address bound.
async fn start_http(
    addr: SocketAddr,
    state: HttpState,
    shutdown: watch::Receiver<bool>,
) -> Result<Option<SocketAddr>, NodeError> {
    let server = HttpServer::bind(addr, state, shutdown)
        .await
        .map_err(|source| NodeError::Listen { addr, source })?;
    let bound = server.local_addr();
    tokio::spawn(server.run());
    Ok(bound)
}
