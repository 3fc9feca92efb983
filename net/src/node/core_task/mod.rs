//! The one task that owns the Raft core and the state machine.
//!
//! Everything reaches it through channels: ticks, peer messages, client
//! requests and storage completions. After each batch of inputs it drains
//! the core's `Ready`: messages go to the transport, writes go to the
//! storage task (whose completions release `persisted_messages` and tell the
//! core what is durable), committed entries are applied and their waiting
//! clients answered.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kv_engine::kv::{encode_command, KvStore};
use kv_engine::raft::{
    ProposeError, RaftCore, ReadState, Ready, Role, SnapshotChunkIn, SnapshotChunkOut, SoftState,
};
use kv_proto::raft::{Entry, Message};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::Instrument;

mod requests;
mod snapshots;

use self::requests::{ReadQuery, Work};
use self::snapshots::SnapshotPlan;
use super::events::{durable_promise, fnv1a, term_runs, Events, NodeEvent};
use super::snapshot_task::{SnapshotDone, SnapshotTasks};
use super::storage_task::{StorageDone, StorageJob, WriteJob};
use super::supervisor::{Ended, Inputs};
use super::{NodeConfig, NodeError};
use crate::api::{ClientOp, ClientReply, ClientRequest, FailKind};
use crate::metrics::{Metrics, ReasonLabel};
use crate::status::StatusBoard;
use crate::transport::PeerTransport;

/// How many queued inputs of one kind are taken before the Ready is drained:
/// large enough to batch many proposals into one append, small enough to
/// keep latency low.
const INPUT_BATCH_MAX: usize = 1024;

/// A write waiting for its entry to be applied.
struct PendingWrite {
    term: u64,
    reply: oneshot::Sender<ClientReply>,
}

/// A read waiting for confirmation, then for the apply index to reach it.
struct PendingRead {
    query: ReadQuery,
    reply: oneshot::Sender<ClientReply>,
}

/// The state owned by the core task.
pub(crate) struct CoreTask<'a> {
    id: u64,
    core: RaftCore,
    kv: KvStore,
    applied: u64,
    tick: Duration,
    client_addrs: BTreeMap<u64, SocketAddr>,
    transport: &'a PeerTransport,
    storage: mpsc::Sender<StorageJob>,
    /// Writes by log index.
    writes: BTreeMap<u64, PendingWrite>,
    /// Reads by read id, until confirmed.
    reads: BTreeMap<u64, PendingRead>,
    /// Confirmed reads by the index they wait for.
    reads_at: BTreeMap<u64, Vec<PendingRead>>,
    next_read_id: u64,
    /// When to take the next snapshot.
    plan: SnapshotPlan,
    /// The tasks that write, send and receive snapshots.
    snapshots: SnapshotTasks,
    events: Events,
    /// Where this node's status is published.
    board: Arc<StatusBoard>,
    /// This node's metrics.
    metrics: Arc<Metrics>,
    /// Operators waiting for a leadership transfer to finish.
    transfers: Vec<oneshot::Sender<ClientReply>>,
    /// Asked to stop while leading: leadership is being handed over first,
    /// until this instant at the latest.
    stopping_by: Option<Instant>,
    /// Up to when the core's clock has counted time (ticks taken or
    /// reported missed).
    last_tick: Instant,
}

impl<'a> CoreTask<'a> {
    pub(crate) fn new(
        cfg: &NodeConfig,
        core: RaftCore,
        kv: KvStore,
        transport: &'a PeerTransport,
        storage: mpsc::Sender<StorageJob>,
        snapshots: SnapshotTasks,
        inputs: &Inputs,
    ) -> Self {
        let applied = core.log().snapshot_index();
        CoreTask {
            id: cfg.id,
            applied,
            plan: SnapshotPlan::new(cfg, applied),
            snapshots,
            core,
            kv,
            tick: cfg.tick,
            client_addrs: cfg
                .members
                .iter()
                .map(|(&id, m)| (id, m.client_addr))
                .collect(),
            transport,
            storage,
            writes: BTreeMap::new(),
            reads: BTreeMap::new(),
            reads_at: BTreeMap::new(),
            next_read_id: 1,
            events: cfg.events.clone(),
            board: inputs.board.clone(),
            metrics: inputs.metrics.clone(),
            transfers: Vec::new(),
            stopping_by: None,
            last_tick: Instant::now(),
        }
    }

    /// Runs until shutdown, a disk failure, or an error.
    pub(crate) async fn run(
        mut self,
        inputs: &mut Inputs,
        mut storage_done: mpsc::Receiver<StorageDone>,
        mut snapshot_done: mpsc::Receiver<SnapshotDone>,
    ) -> Ended {
        let span = tracing::info_span!("node", node = self.id);
        async move {
            let mut ticker = tokio::time::interval(self.tick);
            // After a stall, ticks are not replayed in a burst: a burst would
            // run several quorum checks at once and depose a healthy leader.
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let ended = loop {
                // `biased` keeps the simulation deterministic (tokio's
                // random branch choice draws from a process-wide seed);
                // fairness comes from draining every queue below.
                let step = tokio::select! {
                    biased;
                    r = inputs.shutdown.changed() => match r {
                        Ok(()) if self.stopping_by.is_none() => self.begin_stop(),
                        _ => Err(Ended::Shutdown),
                    },
                    now = ticker.tick() => {
                        self.on_tick(now);
                        Ok(())
                    }
                    done = storage_done.recv() => match done {
                        Some(done) => self.on_storage_done(done),
                        None => Err(stopped("storage task")),
                    },
                    done = snapshot_done.recv() => match done {
                        Some(done) => self.on_snapshot_done(done),
                        None => Err(stopped("snapshot tasks")),
                    },
                    Some(m) = inputs.peer_rx.recv() => {
                        self.catch_up_clock(Instant::now());
                        self.core.step(m);
                        Ok(())
                    }
                    Some(req) = inputs.request_rx.recv() => {
                        self.catch_up_clock(Instant::now());
                        self.on_request(req);
                        Ok(())
                    }
                };
                let step = match step {
                    Ok(()) => self.drain_inputs(inputs, &mut storage_done, &mut snapshot_done),
                    Err(end) => Err(end),
                };
                let step = match step {
                    Ok(()) => self.drain_ready().await,
                    Err(end) => Err(end),
                };
                if let Err(end) = step {
                    break end;
                }
                self.settle_transfers();
                self.publish_status();
                if self.stop_due() {
                    break Ended::Shutdown;
                }
            };
            let kind = match &ended {
                Ended::DiskFailed { .. } => FailKind::Unknown,
                _ => FailKind::ShuttingDown,
            };
            self.fail_everything(kind);
            if let Ended::Failed(e) = &ended {
                tracing::error!(node = self.id, error = %e, "node stopping on error");
            }
            ended
        }
        .instrument(span)
        .await
    }

    /// One tick of the core's logical clock (ticks the process missed are
    /// reported first, see `catch_up_clock`).
    fn on_tick(&mut self, now: Instant) {
        self.catch_up_clock(now);
        self.last_tick = now;
        self.core.tick();
    }

    /// Ticks the process missed (it stalled) are skipped, not replayed,
    /// but the core hears how many before it handles anything else, so a
    /// lease never outlives the time that passed. Called before every
    /// input: after a stall the queued inputs may come before the ticker.
    fn catch_up_clock(&mut self, now: Instant) {
        let tick = self.tick.as_nanos().max(1);
        let behind = now.saturating_duration_since(self.last_tick).as_nanos() / tick;
        if behind >= 2 {
            let missed = behind - 1;
            self.core.missed_ticks(missed.min(u64::MAX as u128) as u64);
            self.last_tick += self.tick * missed.min(u32::MAX as u128) as u32;
        }
    }

    /// Takes whatever else is already queued, of every kind, so that many
    /// proposals share one append and no queue starves another.
    fn drain_inputs(
        &mut self,
        inputs: &mut Inputs,
        storage_done: &mut mpsc::Receiver<StorageDone>,
        snapshot_done: &mut mpsc::Receiver<SnapshotDone>,
    ) -> Result<(), Ended> {
        for _ in 0..INPUT_BATCH_MAX {
            match storage_done.try_recv() {
                Ok(done) => self.on_storage_done(done)?,
                Err(_) => break,
            }
        }
        for _ in 0..INPUT_BATCH_MAX {
            match snapshot_done.try_recv() {
                Ok(done) => self.on_snapshot_done(done)?,
                Err(_) => break,
            }
        }
        for _ in 0..INPUT_BATCH_MAX {
            match inputs.peer_rx.try_recv() {
                Ok(m) => self.core.step(m),
                Err(_) => break,
            }
        }
        for _ in 0..INPUT_BATCH_MAX {
            match inputs.request_rx.try_recv() {
                Ok(req) => self.on_request(req),
                Err(_) => break,
            }
        }
        Ok(())
    }

    fn leader_reply(&self) -> ClientReply {
        match self.core.leader().and_then(|l| self.client_addrs.get(&l)) {
            Some(&addr) if self.core.leader() != Some(self.id) => ClientReply::Redirect(addr),
            _ => ClientReply::NoLeader,
        }
    }

    fn on_request(&mut self, req: ClientRequest) {
        if req.op == ClientOp::Status {
            let _ = req
                .reply
                .send(ClientReply::Status(Box::new(self.board.snapshot())));
            return;
        }
        if self.core.role() != Role::Leader {
            let _ = req.reply.send(self.leader_reply());
            return;
        }
        let command = match requests::work_of(req.op, req.session) {
            Work::Read(query) => return self.read(query, req.reply),
            Work::Other(ClientOp::TransferLeader { to }) => return self.transfer(to, req.reply),
            Work::Other(_) => return,
            Work::Write(command) => command,
        };
        let data = encode_command(&command);
        match self.core.propose(data) {
            Ok(p) => {
                self.metrics.proposals.inc();
                self.writes.insert(
                    p.index,
                    PendingWrite {
                        term: p.term,
                        reply: req.reply,
                    },
                );
            }
            Err(e) => {
                let _ = req.reply.send(self.propose_error_reply(e));
            }
        }
    }

    /// A read: confirmed by ReadIndex (or the lease), then answered once
    /// the state machine has applied the read index.
    fn read(&mut self, query: ReadQuery, reply: oneshot::Sender<ClientReply>) {
        let id = self.next_read_id;
        self.next_read_id += 1;
        match self.core.read_index(id) {
            Ok(()) => {
                self.reads.insert(id, PendingRead { query, reply });
            }
            Err(e) => {
                let _ = reply.send(self.propose_error_reply(e));
            }
        }
    }

    fn propose_error_reply(&self, e: ProposeError) -> ClientReply {
        let reason = match e {
            ProposeError::NotLeader { .. } => "not_leader",
            ProposeError::Overloaded => "overloaded",
            ProposeError::Empty => "empty",
            ProposeError::NoTransferTarget => "no_transfer_target",
            ProposeError::Transferring => "transferring",
        };
        self.metrics
            .proposals_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
        match e {
            ProposeError::NotLeader { .. } => self.leader_reply(),
            ProposeError::Overloaded => ClientReply::Failed(FailKind::Overloaded),
            ProposeError::Empty | ProposeError::NoTransferTarget | ProposeError::Transferring => {
                ClientReply::Failed(FailKind::NotApplied)
            }
        }
    }

    /// Drains every Ready the core has.
    async fn drain_ready(&mut self) -> Result<(), Ended> {
        while self.core.has_ready() {
            let rd = self.core.ready();
            self.handle_ready(rd).await?;
        }
        Ok(())
    }

    /// Handles one Ready in the order the core's contract asks (see
    /// `kv_engine::raft::Ready`): report state changes, send what may go at
    /// once, hand snapshot chunks on, queue the write (its messages leave
    /// once it is durable), apply, serve reads.
    async fn handle_ready(&mut self, rd: Ready) -> Result<(), Ended> {
        if let Some(ss) = rd.soft_state {
            self.on_soft_state(ss);
        }
        if let Some(hs) = rd.hard_state {
            let node = self.id;
            self.events.emit(|| NodeEvent::Commit {
                node,
                commit: hs.commit,
            });
        }
        let point = rd.persist_point();
        let must_persist = rd.must_persist();
        for m in rd.messages {
            self.send_peer(m);
        }
        self.hand_on_snapshot_chunks(rd.snapshot_chunks_out, rd.snapshot_chunks_in)
            .await?;
        if must_persist || !rd.persisted_messages.is_empty() {
            let job = WriteJob {
                hard_state: rd.hard_state,
                entries: rd.entries,
                snapshot: rd.snapshot,
                persisted_messages: rd.persisted_messages,
                point,
            };
            if self.storage.send(StorageJob::Write(job)).await.is_err() {
                return Err(stopped("storage task"));
            }
        }
        self.apply_committed(rd.committed_entries);
        self.serve_reads(rd.read_states, rd.failed_reads);
        self.maybe_snapshot();
        if let Some(meta) = self.plan.compact_due.take() {
            let being_sent = self.core.snapshots_being_sent();
            let job = StorageJob::Compact(meta, being_sent);
            if self.storage.send(job).await.is_err() {
                return Err(stopped("storage task"));
            }
        }
        Ok(())
    }

    /// The role, term or leader changed: tell metrics and events, and when
    /// leadership is lost, answer what waited on it.
    fn on_soft_state(&mut self, ss: SoftState) {
        tracing::info!(node = self.id, term = ss.term, role = ?ss.role, leader = ?ss.leader, standing = ?ss.standing, "role change");
        let node = self.id;
        self.metrics.leader_seen(ss.leader.unwrap_or(0));
        if ss.role == Role::Candidate {
            self.metrics.elections.inc();
        }
        self.events.emit(|| NodeEvent::Role {
            node,
            term: ss.term,
            role: ss.role,
            leader: ss.leader,
            standing: ss.standing,
        });
        if ss.role == Role::Leader {
            let log = self.core.log();
            self.events.emit(|| NodeEvent::BecameLeader {
                node,
                term: ss.term,
                first_index: log.first_index(),
                last_index: log.last_index(),
                term_runs: term_runs(log),
            });
            return;
        }
        let leader = ss.leader;
        // Whoever asked for the transfer may ask who leads next.
        self.publish_status();
        for waiting in std::mem::take(&mut self.transfers) {
            let _ = waiting.send(ClientReply::Ok);
        }
        tracing::debug!(node, ?leader, "no longer leading");
        // Writes appended under a lost leadership may or may not commit.
        for (_, w) in std::mem::take(&mut self.writes) {
            let _ = w.reply.send(ClientReply::Failed(FailKind::Unknown));
        }
    }

    /// Chunks to send go to the snapshot reader, never waiting on it (a
    /// full queue means a slow disk, and the core asks again later);
    /// chunks received go to the snapshot writer, in order.
    async fn hand_on_snapshot_chunks(
        &mut self,
        out: Vec<SnapshotChunkOut>,
        received: Vec<SnapshotChunkIn>,
    ) -> Result<(), Ended> {
        for chunk in out {
            match self.snapshots.send.try_send(chunk) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(c)) => {
                    tracing::debug!(
                        node = self.id,
                        to = c.to,
                        "snapshot reader busy; chunk request dropped"
                    );
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    return Err(stopped("snapshot sender"))
                }
            }
        }
        for chunk in received {
            if self.snapshots.receive.send(chunk).await.is_err() {
                return Err(stopped("snapshot receiver"));
            }
        }
        Ok(())
    }

    /// Applies committed entries in order, timing the batch.
    fn apply_committed(&mut self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        let started = Instant::now();
        let count = entries.len() as u64;
        for entry in entries {
            self.apply(entry);
        }
        self.metrics.entries_applied.inc_by(count);
        self.metrics
            .apply_seconds
            .observe(started.elapsed().as_secs_f64());
    }

    /// Serves the reads a quorum confirmed once the state machine has
    /// applied up to their index (later, as entries apply, if not yet), and
    /// fails the reads leadership was lost for (a retry is safe).
    fn serve_reads(&mut self, confirmed: Vec<ReadState>, failed: Vec<u64>) {
        for rs in confirmed {
            if let Some(read) = self.reads.remove(&rs.id) {
                if rs.index <= self.applied {
                    self.answer_read(read);
                } else {
                    self.reads_at.entry(rs.index).or_default().push(read);
                }
            }
        }
        for id in failed {
            if let Some(read) = self.reads.remove(&id) {
                let _ = read.reply.send(ClientReply::Failed(FailKind::NotApplied));
            }
        }
    }

    /// An operator asks this leader to hand leadership over.
    fn transfer(&mut self, to: Option<u64>, reply: oneshot::Sender<ClientReply>) {
        match self.core.transfer_leadership(to) {
            Ok(_) => self.transfers.push(reply),
            Err(ProposeError::NoTransferTarget) => {
                let why = match to {
                    Some(id) => format!("member {id} cannot lead (not a member, or recovering)"),
                    None => "no member can lead".to_string(),
                };
                let _ = reply.send(ClientReply::Refused(why));
            }
            Err(e) => {
                let _ = reply.send(self.propose_error_reply(e));
            }
        }
    }

    /// A transfer the core gave up on (an election timeout passed) is
    /// reported to whoever asked for it.
    fn settle_transfers(&mut self) {
        if self.transfers.is_empty()
            || self.core.role() != Role::Leader
            || self.core.transferring_to().is_some()
        {
            return;
        }
        for waiting in std::mem::take(&mut self.transfers) {
            let _ = waiting.send(ClientReply::Refused(
                "leadership transfer did not finish within an election timeout; this node still leads"
                    .into(),
            ));
        }
    }

    /// Asked to stop: a leader first hands leadership over (so clients see
    /// a new leader at once, not an election timeout later), waiting up to
    /// a few election timeouts; anyone else stops at once.
    fn begin_stop(&mut self) -> Result<(), Ended> {
        if self.core.role() != Role::Leader || self.core.transfer_leadership(None).is_err() {
            return Err(Ended::Shutdown);
        }
        let ticks = self.core.config().election_ticks * 3;
        let by = Instant::now() + self.tick * ticks as u32;
        tracing::info!(node = self.id, "stopping: handing leadership over first");
        self.stopping_by = Some(by);
        Ok(())
    }

    /// Whether a stop asked for earlier may happen now.
    fn stop_due(&self) -> bool {
        self.stopping_by
            .is_some_and(|by| self.core.role() != Role::Leader || Instant::now() >= by)
    }

    /// Publishes what this node knows of itself.
    fn publish_status(&self) {
        let core = &self.core;
        let log = core.log();
        let quorum_contact = core
            .quorum_contact_age()
            .map(|ticks| self.tick * ticks.min(u32::MAX as u64) as u32);
        self.board.update(|s| {
            s.role = core.role();
            s.standing = core.standing();
            s.term = core.term();
            s.leader = core.leader();
            s.last_index = log.last_index();
            s.commit = log.committed();
            s.applied = self.applied;
            s.snapshot_index = log.snapshot_index();
            s.keys = self.kv.len() as u64;
            s.quorum_contact = quorum_contact;
        });
    }

    fn answer_read(&self, read: PendingRead) {
        let _ = read.reply.send(requests::answer(&read.query, &self.kv));
    }

    /// Applies one committed entry and answers its client, if waiting here.
    fn apply(&mut self, entry: Entry) {
        debug_assert_eq!(entry.index, self.applied + 1, "entries apply in order");
        self.applied = entry.index;
        self.plan.applied(entry.data.len() as u64);
        let result = if entry.data.is_empty() {
            None // the leader's no-op
        } else {
            match self.kv.apply_entry_data(&entry.data, entry.index) {
                Ok(r) => Some(r),
                Err(e) => {
                    // A committed entry we cannot decode is the same on every
                    // node: skip it deterministically, and say so loudly.
                    tracing::error!(node = self.id, index = entry.index, error = %e, "undecodable committed entry");
                    None
                }
            }
        };
        if self.events.enabled() {
            let (node, index, term) = (self.id, entry.index, entry.term);
            let data_hash = fnv1a(&entry.data);
            let digest = Some(self.kv.digest());
            self.events.emit(|| NodeEvent::Applied {
                node,
                index,
                term,
                data_hash,
                digest,
            });
        }
        if let Some(w) = self.writes.remove(&entry.index) {
            let reply = if w.term != entry.term {
                // Our entry was overwritten by another leader's: it never applied.
                ClientReply::Failed(FailKind::NotApplied)
            } else {
                match result {
                    Some(r) => requests::reply_of(r),
                    None => ClientReply::Failed(FailKind::NotApplied),
                }
            };
            let _ = w.reply.send(reply);
        }
        // Reads confirmed at or below this index can now be served.
        while let Some(entry) = self.reads_at.first_entry() {
            if *entry.key() > self.applied {
                break;
            }
            for read in entry.remove() {
                self.answer_read(read);
            }
        }
    }

    fn on_storage_done(&mut self, done: StorageDone) -> Result<(), Ended> {
        match done {
            StorageDone::Written {
                persisted_messages,
                point,
            } => {
                for m in persisted_messages {
                    self.send_peer(m);
                }
                if let Some((index, term)) = point {
                    self.core.on_persisted(index, term);
                }
            }
            StorageDone::Compacted => {}
            StorageDone::Failed(error, cut_back) => {
                self.hand_over();
                return Err(Ended::DiskFailed { error, cut_back });
            }
        }
        Ok(())
    }

    /// Hands `m` to the transport, reporting a durability promise.
    fn send_peer(&mut self, m: Message) {
        if let Some(what) = durable_promise(&m) {
            let node = self.id;
            self.events.emit(|| NodeEvent::Promised { node, what });
        }
        self.transport.send(m);
    }

    /// This node's disk failed: a leader asks its most up-to-date follower
    /// to take over at once rather than leave the cluster waiting for an
    /// election timeout.
    fn hand_over(&mut self) {
        if self.core.hand_over_now().is_err() {
            return;
        }
        // Only messages that promise nothing about our storage may go.
        let rd = self.core.ready();
        for m in rd.messages {
            self.transport.send(m);
        }
    }

    fn fail_everything(&mut self, kind: FailKind) {
        for waiting in std::mem::take(&mut self.transfers) {
            let _ = waiting.send(ClientReply::Failed(FailKind::ShuttingDown));
        }
        for (_, w) in std::mem::take(&mut self.writes) {
            let _ = w.reply.send(ClientReply::Failed(kind));
        }
        for (_, r) in std::mem::take(&mut self.reads) {
            let _ = r.reply.send(ClientReply::Failed(FailKind::NotApplied));
        }
        for (_, rs) in std::mem::take(&mut self.reads_at) {
            for r in rs {
                let _ = r.reply.send(ClientReply::Failed(FailKind::NotApplied));
            }
        }
    }
}

fn stopped(what: &str) -> Ended {
    Ended::Failed(NodeError::Config(format!("{what} stopped")))
}
