//! An in-memory, seeded cluster of Raft cores for tests: a network that can
//! drop, delay, duplicate and reorder messages and be partitioned; a disk per
//! node that loses unsynced writes on a crash; and invariant checks after
//! every step.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;

use bytes::Bytes;
use kv_engine::raft::{
    Config, Found, RaftCore, Ready, Restored, Role, SnapshotChunkIn, SnapshotChunkOut,
    SnapshotInfo, Standing,
};
use kv_engine::storage::batch::{SyncRule, WriteBatch};
use kv_proto::raft::{message::Body, Entry, HardState, Message, Snapshot, SnapshotMeta};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Fault rates of the simulated network.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetFaults {
    pub drop: f64,
    pub duplicate: f64,
    /// Maximum extra delay in steps (uniform); a delay reorders messages.
    pub max_delay: u64,
}

/// What a node has durably stored.
#[derive(Debug, Clone, Default)]
pub struct Disk {
    pub hard: HardState,
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
    /// Any record was ever written (storage holding one is not empty).
    pub written: bool,
}

impl Disk {
    /// Whether storage would find nothing at all here.
    pub fn is_empty(&self) -> bool {
        !self.written
    }

    fn first_index(&self) -> u64 {
        self.snapshot
            .as_ref()
            .and_then(|s| s.meta)
            .map_or(0, |m| m.index)
            + 1
    }

    /// Stores one Ready's write: a snapshot replaces the whole log, entries
    /// replace whatever is stored from the first one's index on.
    pub fn write(
        &mut self,
        hard: Option<HardState>,
        entries: &[Entry],
        snapshot: Option<&Snapshot>,
    ) {
        self.written |= hard.is_some() || snapshot.is_some() || !entries.is_empty();
        if let Some(snap) = snapshot {
            self.snapshot = Some(snap.clone());
            self.entries.clear();
        }
        if let Some(first) = entries.first() {
            let keep = first.index.saturating_sub(self.first_index()) as usize;
            self.entries.truncate(keep);
            self.entries.extend(entries.iter().cloned());
        }
        if let Some(hs) = hard {
            self.hard = hs;
        }
    }

    /// The bytes a chunk to send asks for, if this disk holds that snapshot.
    pub fn snapshot_chunk(&self, c: &SnapshotChunkOut) -> Option<Bytes> {
        self.snapshot
            .as_ref()
            .filter(|s| s.meta == Some(c.meta))
            .and_then(|s| s.data.get(c.offset as usize..(c.offset + c.len) as usize))
            .map(Bytes::copy_from_slice)
    }

    /// What storage hands the core at start from this disk.
    pub fn restored(&self, found: Found, nonce: u64) -> Restored {
        Restored {
            hard_state: self.hard,
            snapshot: self.snapshot.as_ref().map(|s| SnapshotInfo {
                meta: s.meta.unwrap_or_default(),
                size: s.data.len() as u64,
            }),
            entries: self.entries.clone(),
            found,
            nonce,
        }
    }

    /// Saves `snapshot` and drops the entries it covers.
    pub fn compact(&mut self, snapshot: Snapshot) {
        let index = snapshot.meta.map_or(0, |m| m.index);
        let drop = (index + 1).saturating_sub(self.first_index()) as usize;
        self.entries.drain(..drop.min(self.entries.len()));
        self.snapshot = Some(snapshot);
    }
}

#[derive(Debug, Clone)]
struct PendingWrite {
    hard: Option<HardState>,
    entries: Vec<Entry>,
    snapshot: Option<Snapshot>,
    persisted_messages: Vec<Message>,
    point: Option<(u64, u64)>,
}

/// What a write reports once done: the messages that waited for it and the
/// point to tell the core.
type Completion = (Vec<Message>, Option<(u64, u64)>);

/// One simulated node: a core, its disk, its applied state.
pub struct Node {
    pub core: RaftCore,
    pub disk: Disk,
    pending: VecDeque<PendingWrite>,
    /// When a write needs an fsync (as the runtime's storage task decides).
    sync_rule: SyncRule,
    /// A hard state written without an fsync (only its commit index
    /// changed): lost in a crash, made durable by the next fsync.
    unsynced_hard: Option<HardState>,
    pub up: bool,
    /// Highest applied index and the hash chain over applied entries.
    pub applied: u64,
    pub chain: u64,
    /// Commands applied, in order (for trace and convergence checks).
    pub applied_data: Vec<(u64, Bytes)>,
    /// Commit index last checked (resets with the process).
    seen_commit: u64,
    /// Its last reported standing was recovering.
    was_recovering: bool,
    /// A snapshot being received: its meta and the data so far.
    receiving: Option<(SnapshotMeta, Vec<u8>)>,
    /// A received snapshot made durable, waiting for its marker.
    received: Option<Snapshot>,
}

#[derive(Debug, Clone)]
struct InFlight {
    deliver_at: u64,
    seq: u64,
    msg: Message,
}

/// A violated invariant, with the step it happened at.
#[derive(Debug)]
pub struct Violation(pub String);

/// A cluster of cores on a simulated network.
pub struct Cluster {
    pub nodes: BTreeMap<u64, Node>,
    pub configs: BTreeMap<u64, Config>,
    pub rng: ChaCha8Rng,
    pub faults: NetFaults,
    pub now: u64,
    seq: u64,
    network: Vec<InFlight>,
    /// Directed links that drop everything.
    pub cut: BTreeSet<(u64, u64)>,
    pub compact_every: u64,
    // Invariant bookkeeping.
    leaders: BTreeMap<u64, u64>,
    entry_ids: BTreeMap<(u64, u64), (u64, u64)>,
    committed: BTreeMap<u64, u64>,
    chains: BTreeMap<u64, u64>,
    pub trace: Option<String>,
    pub proposals: u64,
    pub reads_served: u64,
    /// Disks wiped or damaged, and nodes that became voters again after.
    pub damaged: u64,
    pub repaired: u64,
    read_floor: BTreeMap<(u64, u64), u64>,
    next_read: u64,
}

fn hash(a: u64, b: &[u8]) -> u64 {
    // FNV-1a over the previous hash and the data: deterministic and cheap.
    let mut h = 0xcbf29ce484222325u64 ^ a;
    for &x in b {
        h ^= x as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

impl Cluster {
    /// `n` nodes with ids 1..=n, seeded by `seed`, started as members of a
    /// cluster known to be new.
    pub fn new(n: u64, seed: u64, faults: NetFaults) -> Self {
        Self::with_found(n, seed, faults, Found::Intact)
    }

    /// As `new`, but every node starts from empty storage as the runtime
    /// reports it (`Found::Empty`), so the cluster must discover that it is new.
    pub fn new_fresh(n: u64, seed: u64, faults: NetFaults) -> Self {
        Self::with_found(n, seed, faults, Found::Empty)
    }

    fn with_found(n: u64, seed: u64, faults: NetFaults, found: Found) -> Self {
        let ids: Vec<u64> = (1..=n).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut configs = BTreeMap::new();
        let mut nodes = BTreeMap::new();
        for &id in &ids {
            let mut cfg = Config::new(id, ids.clone());
            cfg.seed = seed.wrapping_mul(31).wrapping_add(id);
            cfg.max_append_entries = 8;
            cfg.max_inflight_appends = 4;
            cfg.snapshot_chunk_bytes = 16;
            let restored = Restored {
                found,
                nonce: rng.random(),
                ..Default::default()
            };
            let core = RaftCore::new(cfg.clone(), restored).expect("valid config");
            nodes.insert(id, Node::new(core, Disk::default()));
            configs.insert(id, cfg);
        }
        Cluster {
            nodes,
            configs,
            rng,
            faults,
            now: 0,
            seq: 0,
            network: Vec::new(),
            cut: BTreeSet::new(),
            compact_every: 0,
            leaders: BTreeMap::new(),
            entry_ids: BTreeMap::new(),
            committed: BTreeMap::new(),
            chains: BTreeMap::new(),
            trace: None,
            proposals: 0,
            reads_served: 0,
            damaged: 0,
            repaired: 0,
            read_floor: BTreeMap::new(),
            next_read: 1,
        }
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = self.trace.as_mut() {
            let _ = writeln!(t, "{:>4} {}", self.now, line());
        }
    }

    /// The leader with the highest term among running nodes.
    pub fn leader(&self) -> Option<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.up && n.core.role() == Role::Leader)
            .max_by_key(|(_, n)| n.core.term())
            .map(|(&id, _)| id)
    }

    pub fn tick(&mut self, id: u64) -> Result<(), Violation> {
        if !self.nodes[&id].up {
            return Ok(());
        }
        self.node(id).core.tick();
        self.drain(id)
    }

    fn node(&mut self, id: u64) -> &mut Node {
        self.nodes.get_mut(&id).expect("known node")
    }

    /// Proposes `data` on `id`; true if accepted.
    pub fn propose(&mut self, id: u64, data: Bytes) -> Result<bool, Violation> {
        if !self.nodes[&id].up {
            return Ok(false);
        }
        let ok = self.node(id).core.propose(data).is_ok();
        if ok {
            self.proposals += 1;
        }
        self.drain(id)?;
        Ok(ok)
    }

    /// Asks `id` for a linearizable read; records the commit floor it must reach.
    pub fn read(&mut self, id: u64) -> Result<bool, Violation> {
        if !self.nodes[&id].up {
            return Ok(false);
        }
        let rid = self.next_read;
        self.next_read += 1;
        let ok = self.node(id).core.read_index(rid).is_ok();
        if ok {
            // Every entry committed anywhere before the read arrived must be visible.
            let floor = self.committed.keys().next_back().copied().unwrap_or(0);
            self.read_floor.insert((id, rid), floor);
        }
        self.drain(id)?;
        Ok(ok)
    }

    /// Hands one node's Ready outputs to the network and its disk queue.
    fn drain(&mut self, id: u64) -> Result<(), Violation> {
        while self.nodes[&id].core.has_ready() {
            let rd = self.node(id).core.ready();
            self.handle_ready(id, rd)?;
        }
        Ok(())
    }

    fn handle_ready(&mut self, id: u64, rd: Ready) -> Result<(), Violation> {
        if let Some(ss) = rd.soft_state {
            self.log(|| {
                let standing = match ss.standing {
                    Standing::Voter => String::new(),
                    other => format!(" {other:?}"),
                };
                format!(
                    "n{id} {:?} term {} leader {:?}{standing}",
                    ss.role, ss.term, ss.leader
                )
            });
            if ss.standing == Standing::Voter && self.nodes[&id].was_recovering {
                self.repaired += 1;
            }
            self.node(id).was_recovering = ss.standing == Standing::Recovering;
            if ss.role == Role::Leader && ss.standing != Standing::Voter {
                return Err(Violation(format!("n{id} leads while {:?}", ss.standing)));
            }
            if ss.role == Role::Leader {
                self.check_new_leader(id, ss.term)?;
            }
        }
        if let Some(hs) = rd.hard_state {
            let node = &self.nodes[&id];
            if hs.term < node.disk.hard.term {
                return Err(Violation(format!(
                    "n{id} term went back: {} -> {}",
                    node.disk.hard.term, hs.term
                )));
            }
        }
        self.check_log_matching(id, &rd.entries)?;
        let point = rd.persist_point();
        for m in rd.messages {
            self.send(m);
        }
        let snapshot = match rd.snapshot {
            Some(meta) => {
                let received = self.node(id).received.take();
                if received.as_ref().and_then(|s| s.meta) != Some(meta) {
                    return Err(Violation(format!(
                        "n{id} marks snapshot {meta:?} installed before receiving it"
                    )));
                }
                received
            }
            None => None,
        };
        let write = PendingWrite {
            hard: rd.hard_state,
            entries: rd.entries,
            snapshot,
            persisted_messages: rd.persisted_messages,
            point,
        };
        self.node(id).pending.push_back(write);
        for chunk in rd.snapshot_chunks_out {
            self.send_chunk(id, chunk);
        }
        for chunk in rd.snapshot_chunks_in {
            self.receive_chunk(id, chunk)?;
        }
        for e in rd.committed_entries {
            self.apply(id, &e)?;
        }
        for rs in rd.read_states {
            let floor = self.read_floor.remove(&(id, rs.id)).unwrap_or(0);
            if rs.index < floor {
                return Err(Violation(format!(
                    "n{id} read {} served at index {} below the commit index {floor} when it arrived",
                    rs.id, rs.index
                )));
            }
            self.reads_served += 1;
        }
        for failed in rd.failed_reads {
            self.read_floor.remove(&(id, failed));
        }
        self.record_commit(id)?;
        Ok(())
    }

    /// Reads the chunk from the node's snapshot on disk and sends it, or
    /// tells the core that snapshot is gone.
    fn send_chunk(&mut self, id: u64, c: SnapshotChunkOut) {
        match self.nodes[&id].disk.snapshot_chunk(&c) {
            Some(data) => self.send(c.message(data)),
            None => self.node(id).core.snapshot_send_failed(c.to),
        }
    }

    /// Appends a received chunk; at the last one the snapshot is complete:
    /// the state machine is rebuilt from it and the core told.
    fn receive_chunk(&mut self, id: u64, c: SnapshotChunkIn) -> Result<(), Violation> {
        let node = self.node(id);
        let mut data = match node.receiving.take() {
            Some((meta, data)) if meta == c.meta => data,
            _ => Vec::new(),
        };
        if data.len() as u64 != c.offset {
            return Err(Violation(format!(
                "n{id} got a chunk at {} of a snapshot holding {} bytes",
                c.offset,
                data.len()
            )));
        }
        data.extend_from_slice(&c.data);
        if !c.done {
            let written = data.len() as u64;
            node.receiving = Some((c.meta, data));
            node.core.on_snapshot_chunk_written(c.meta, written);
            return Ok(());
        }
        let snapshot = Snapshot {
            meta: Some(c.meta),
            data: Bytes::from(data),
        };
        let info = SnapshotInfo {
            meta: c.meta,
            size: snapshot.data.len() as u64,
        };
        if self.node(id).core.on_snapshot_received(info) {
            self.install(id, &snapshot)?;
            self.node(id).received = Some(snapshot);
        }
        Ok(())
    }

    /// Completes everything written so far on `id` as the runtime's storage
    /// task does: writes merged into one batch (a snapshot's write on its
    /// own), fsynced unless only the commit index changed; then the
    /// messages that waited for them go and the core hears of it.
    pub fn sync(&mut self, id: u64) -> Result<(), Violation> {
        if !self.nodes[&id].up {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        while let Some(w) = self.node(id).pending.pop_front() {
            let done = (w.persisted_messages, w.point);
            if w.snapshot.is_none() {
                batch.merge(w.hard, w.entries, done);
                continue;
            }
            self.write_batch(id, std::mem::take(&mut batch));
            let node = self.node(id);
            node.flush_unsynced();
            node.disk.write(w.hard, &w.entries, w.snapshot.as_ref());
            self.complete(id, vec![done]);
        }
        self.write_batch(id, batch);
        self.maybe_compact(id);
        self.drain(id)
    }

    fn write_batch(&mut self, id: u64, batch: WriteBatch<Completion>) {
        if batch.is_empty() {
            return;
        }
        let node = self.node(id);
        if node.sync_rule.must_sync(&batch) {
            node.flush_unsynced();
            node.disk.write(batch.hard_state, &batch.entries, None);
        } else if batch.hard_state.is_some() {
            node.unsynced_hard = batch.hard_state;
        }
        self.complete(id, batch.done);
    }

    /// Sends the messages that waited for these writes and tells the core.
    fn complete(&mut self, id: u64, done: Vec<Completion>) {
        for (messages, point) in done {
            for m in messages {
                self.send(m);
            }
            if let Some((index, term)) = point {
                self.node(id).core.on_persisted(index, term);
            }
        }
    }

    fn maybe_compact(&mut self, id: u64) {
        if self.compact_every == 0 {
            return;
        }
        let every = self.compact_every;
        let node = self.node(id);
        let snap_index = node.core.log().snapshot_index();
        if node.applied < snap_index + every || node.applied > node.core.log().persisted() {
            return;
        }
        let index = node.applied;
        let Some(term) = node.core.log().term(index) else {
            return;
        };
        let snapshot = Snapshot {
            meta: Some(SnapshotMeta { index, term }),
            data: Bytes::copy_from_slice(&node.chain.to_le_bytes()),
        };
        let info = SnapshotInfo {
            meta: snapshot.meta.unwrap_or_default(),
            size: snapshot.data.len() as u64,
        };
        node.disk.compact(snapshot);
        node.core.compact(info);
    }

    fn install(&mut self, id: u64, snap: &Snapshot) -> Result<(), Violation> {
        let meta = snap.meta.unwrap_or_default();
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&snap.data[..8]);
        let chain = u64::from_le_bytes(bytes);
        if let Some(&expected) = self.chains.get(&meta.index) {
            if expected != chain {
                return Err(Violation(format!(
                    "n{id} installed a snapshot at {} that differs",
                    meta.index
                )));
            }
        }
        self.log(|| format!("n{id} installed snapshot at {}", meta.index));
        let node = self.node(id);
        node.applied = meta.index;
        node.chain = chain;
        Ok(())
    }

    /// State Machine Safety: no two nodes apply different commands at one index.
    fn apply(&mut self, id: u64, e: &Entry) -> Result<(), Violation> {
        let node = self.node(id);
        if e.index != node.applied + 1 {
            return Err(Violation(format!(
                "n{id} applied {} after {}",
                e.index, node.applied
            )));
        }
        node.applied = e.index;
        node.chain = hash(node.chain, &e.data);
        let chain = node.chain;
        if !e.data.is_empty() {
            node.applied_data.push((e.index, e.data.clone()));
        }
        match self.chains.get(&e.index) {
            Some(&c) if c != chain => Err(Violation(format!(
                "n{id} applied a different history at index {}",
                e.index
            ))),
            _ => {
                self.chains.insert(e.index, chain);
                Ok(())
            }
        }
    }

    /// Log Matching: an (index, term) pair always names the same entry with
    /// the same predecessor term.
    fn check_log_matching(&mut self, id: u64, entries: &[Entry]) -> Result<(), Violation> {
        for e in entries {
            let prev_term = if e.index == 1 {
                0
            } else {
                match self.nodes[&id].core.log().term(e.index - 1) {
                    Some(t) => t,
                    None => continue,
                }
            };
            let value = (hash(0, &e.data), prev_term);
            match self.entry_ids.get(&(e.index, e.term)) {
                Some(&v) if v != value => {
                    return Err(Violation(format!(
                        "n{id} log matching violated at ({}, {})",
                        e.index, e.term
                    )))
                }
                Some(_) => {}
                None => {
                    self.entry_ids.insert((e.index, e.term), value);
                }
            }
        }
        Ok(())
    }

    /// Remembers every committed entry's term; checks that a node's commit
    /// index never moves back and that all nodes agree on committed entries.
    fn record_commit(&mut self, id: u64) -> Result<(), Violation> {
        let node = &self.nodes[&id];
        let log = node.core.log();
        let committed = log.committed();
        if committed < node.seen_commit {
            return Err(Violation(format!(
                "n{id} commit index moved back: {} -> {committed}",
                node.seen_commit
            )));
        }
        for index in (node.seen_commit + 1).max(log.first_index())..=committed {
            let Some(term) = log.term(index) else {
                continue;
            };
            match self.committed.get(&index) {
                Some(&t) if t != term => {
                    return Err(Violation(format!(
                        "n{id} committed ({index}, {term}) but ({index}, {t}) was committed"
                    )))
                }
                Some(_) => {}
                None => {
                    self.committed.insert(index, term);
                }
            }
        }
        let before = self.nodes[&id].seen_commit;
        self.node(id).seen_commit = committed;
        if committed > before {
            self.log(|| format!("n{id} commit {committed}"));
        }
        Ok(())
    }

    /// Election Safety and Leader Completeness.
    fn check_new_leader(&mut self, id: u64, term: u64) -> Result<(), Violation> {
        if let Some(&other) = self.leaders.get(&term) {
            if other != id {
                return Err(Violation(format!(
                    "two leaders in term {term}: n{other} and n{id}"
                )));
            }
        }
        self.leaders.insert(term, id);
        let log = self.nodes[&id].core.log();
        for (&index, &t) in &self.committed {
            if index < log.first_index() {
                continue;
            }
            if log.term(index) != Some(t) {
                return Err(Violation(format!(
                    "leader n{id} of term {term} lacks committed entry ({index}, {t})"
                )));
            }
        }
        Ok(())
    }

    fn send(&mut self, m: Message) {
        if self.cut.contains(&(m.from, m.to)) || self.rng.random_bool(self.faults.drop) {
            return;
        }
        let copies = if self.rng.random_bool(self.faults.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = 1 + if self.faults.max_delay > 0 {
                self.rng.random_range(0..=self.faults.max_delay)
            } else {
                0
            };
            self.seq += 1;
            self.network.push(InFlight {
                deliver_at: self.now + delay,
                seq: self.seq,
                msg: m.clone(),
            });
        }
    }

    /// Delivers every message due by now (in send order among equals).
    pub fn deliver_due(&mut self) -> Result<(), Violation> {
        let now = self.now;
        let mut due: Vec<InFlight> = Vec::new();
        self.network.retain(|f| {
            if f.deliver_at <= now {
                due.push(f.clone());
                false
            } else {
                true
            }
        });
        due.sort_by_key(|f| (f.deliver_at, f.seq));
        for f in due {
            let to = f.msg.to;
            if !self.nodes.get(&to).is_some_and(|n| n.up) || self.cut.contains(&(f.msg.from, to)) {
                continue;
            }
            let (from, term) = (f.msg.from, f.msg.term);
            self.node(to).core.step(f.msg);
            if let Some((kind, _)) = self.node(to).core.refusals().iter().next() {
                // Honest peers never send what the core refuses.
                return Err(Violation(format!(
                    "n{to} refused a message from n{from} of term {term}: {}",
                    kind.as_str()
                )));
            }
            self.drain(to)?;
        }
        Ok(())
    }

    /// Crashes `id`: unsynced writes are lost.
    pub fn crash(&mut self, id: u64) {
        self.log(|| format!("n{id} crashed"));
        let node = self.node(id);
        node.up = false;
        node.pending.clear();
        node.unsynced_hard = None;
    }

    /// Restarts `id` from its disk, which storage finds intact (or empty).
    pub fn restart(&mut self, id: u64) -> Result<(), Violation> {
        let found = if self.nodes[&id].disk.is_empty() {
            Found::Empty
        } else {
            Found::Intact
        };
        self.restart_found(id, found)
    }

    /// A crashed node's disk is replaced by an empty one; it restarts.
    pub fn wipe(&mut self, id: u64) -> Result<(), Violation> {
        self.log(|| format!("n{id} disk replaced"));
        self.damaged += 1;
        self.crash(id);
        self.node(id).disk = Disk::default();
        self.restart_found(id, Found::Empty)
    }

    /// A crashed node's storage turns out damaged: what storage keeps is the
    /// log before the damaged record (`keep` entries; none if the snapshot
    /// is damaged) and a hard state that lost its vote. It restarts.
    pub fn damage(&mut self, id: u64, keep: usize, snapshot_too: bool) -> Result<(), Violation> {
        if self.nodes[&id].disk.is_empty() {
            // Storage cannot damage what is not there: an empty dir.
            return self.wipe(id);
        }
        self.log(|| {
            format!("n{id} storage damaged (keeping {keep} entries, snapshot lost: {snapshot_too})")
        });
        self.damaged += 1;
        self.crash(id);
        let disk = &mut self.node(id).disk;
        if snapshot_too {
            disk.snapshot = None;
            disk.entries.clear();
        }
        disk.entries.truncate(keep);
        let last_index = disk.first_index() - 1 + disk.entries.len() as u64;
        let snapshot_term = disk
            .snapshot
            .as_ref()
            .and_then(|s| s.meta)
            .map_or(0, |m| m.term);
        let last_term = disk.entries.last().map_or(snapshot_term, |e| e.term);
        // Storage marks the node recovering itself, before the core runs.
        disk.hard = HardState {
            term: last_term,
            commit: disk.hard.commit.min(last_index),
            recovering: true,
            ..Default::default()
        };
        disk.written = true;
        self.restart_found(id, Found::Damaged)
    }

    fn restart_found(&mut self, id: u64, found: Found) -> Result<(), Violation> {
        self.log(|| format!("n{id} restarted ({found:?})"));
        let cfg = self.configs[&id].clone();
        let disk = self.nodes[&id].disk.clone();
        let restored = disk.restored(found, self.rng.random());
        let core =
            RaftCore::new(cfg, restored).map_err(|e| Violation(format!("restart failed: {e}")))?;
        let mut node = Node::new(core, disk);
        if let Some(snap) = node.disk.snapshot.clone() {
            let meta = snap.meta.unwrap_or_default();
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&snap.data[..8]);
            node.applied = meta.index;
            node.chain = u64::from_le_bytes(bytes);
        }
        self.nodes.insert(id, node);
        self.drain(id)
    }

    /// One unit of time: every running node ticks, due messages are
    /// delivered, and writes are synced.
    pub fn step(&mut self) -> Result<(), Violation> {
        self.now += 1;
        for id in self.ids() {
            self.tick(id)?;
        }
        self.deliver_due()?;
        for id in self.ids() {
            self.sync(id)?;
        }
        Ok(())
    }

    /// A step where each node's sync happens only with probability `p_sync`,
    /// so inputs arrive while writes are outstanding.
    pub fn step_lazy_sync(&mut self, p_sync: f64) -> Result<(), Violation> {
        self.now += 1;
        for id in self.ids() {
            self.tick(id)?;
        }
        self.deliver_due()?;
        for id in self.ids() {
            if self.rng.random_bool(p_sync) {
                self.sync(id)?;
            }
        }
        Ok(())
    }

    /// Partitions the nodes into two groups that cannot talk.
    pub fn partition(&mut self, a: &[u64], b: &[u64]) {
        self.log(|| format!("partition {a:?} | {b:?}"));
        for &x in a {
            for &y in b {
                self.cut.insert((x, y));
                self.cut.insert((y, x));
            }
        }
    }

    /// Removes every partition.
    pub fn heal(&mut self) {
        self.log(|| "heal".to_string());
        self.cut.clear();
    }

    /// Runs until a leader exists or `max_steps` pass.
    pub fn elect(&mut self, max_steps: u64) -> Result<Option<u64>, Violation> {
        for _ in 0..max_steps {
            self.step()?;
            if let Some(l) = self.leader() {
                return Ok(Some(l));
            }
        }
        Ok(None)
    }

    /// The number of messages in flight.
    pub fn in_flight(&self) -> usize {
        self.network.len()
    }

    /// Counts in-flight messages of one kind (for exact-behaviour tests).
    pub fn in_flight_where(&self, f: impl Fn(&Message) -> bool) -> usize {
        self.network.iter().filter(|m| f(&m.msg)).count()
    }

    /// One line per node: what an engineer chasing a stuck seed needs first.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (id, n) in &self.nodes {
            let log = n.core.log();
            let _ = write!(
                out,
                "\n  n{id}: {} {:?} {:?} term {} floor {} leader {:?} last {} committed {} persisted {} applied {}",
                if n.up { "up" } else { "down" },
                n.core.role(),
                n.core.standing(),
                n.core.term(),
                n.core.repair_floor(),
                n.core.leader(),
                log.last_index(),
                log.committed(),
                log.persisted(),
                n.applied,
            );
        }
        out
    }

    /// Nodes that are not voters (recovering or discovering), and down
    /// nodes that will not come back as voters (an empty disk comes back as
    /// a wiped member would; a repair may not have reached the disk).
    pub fn not_voters(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| {
                n.core.standing() != Standing::Voter
                    || (!n.up && (n.disk.is_empty() || n.disk.hard.recovering))
            })
            .map(|(&id, _)| id)
            .collect()
    }

    /// Whether a message body is an append with entries.
    pub fn is_append_with_entries(m: &Message) -> bool {
        matches!(&m.body, Some(Body::AppendEntries(ae)) if !ae.entries.is_empty())
    }
}

impl Node {
    /// An fsync makes an earlier unsynced hard state durable too.
    fn flush_unsynced(&mut self) {
        if let Some(hs) = self.unsynced_hard.take() {
            self.disk.write(Some(hs), &[], None);
        }
    }

    fn new(core: RaftCore, disk: Disk) -> Self {
        Node {
            core,
            disk,
            pending: VecDeque::new(),
            sync_rule: SyncRule::default(),
            unsynced_hard: None,
            up: true,
            applied: 0,
            chain: 0,
            applied_data: Vec::new(),
            seen_commit: 0,
            was_recovering: false,
            receiving: None,
            received: None,
        }
    }
}
