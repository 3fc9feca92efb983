//! The commands of the scenario scripts, over a hand-driven cluster: nothing
//! happens unless a command says so (no ticks, no delivery, no fsync).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;

use bytes::Bytes;
use kv_engine::raft::{
    Config, EntriesDisplay, Found, HardStateDisplay, MsgDisplay, RaftCore, ReadMode, Ready, Role,
    SnapshotChunkIn, SnapshotChunkOut, SnapshotInfo, Standing,
};
use kv_proto::raft::{Entry, HardState, Message, Snapshot, SnapshotMeta};

use crate::support::Disk;

/// One Ready's write, waiting for its fsync.
#[derive(Debug, Clone)]
struct Write {
    hard: Option<HardState>,
    entries: Vec<Entry>,
    snapshot: Option<Snapshot>,
    persisted_messages: Vec<Message>,
    point: Option<(u64, u64)>,
}

/// One node: its core, its disk and its state machine (the applied
/// commands, joined by commas, so a snapshot's data is readable).
struct Node {
    core: RaftCore,
    disk: Disk,
    unsynced: VecDeque<Write>,
    up: bool,
    applied: u64,
    state: String,
    receiving: Option<(SnapshotMeta, Vec<u8>)>,
    received: Option<Snapshot>,
}

/// A hand-driven cluster and the text its commands print.
#[derive(Default)]
pub struct Driver {
    nodes: BTreeMap<u64, Node>,
    configs: BTreeMap<u64, Config>,
    /// Messages sent and not yet delivered, by recipient, in send order.
    inbox: BTreeMap<u64, Vec<Message>>,
    /// Directed links that lose every message.
    cut: BTreeSet<(u64, u64)>,
    /// Writes wait for `persist` instead of completing in `process-ready`.
    async_storage: bool,
    out: String,
}

/// A command line: its name, positional words and `key=value` options.
struct Args<'a> {
    words: Vec<&'a str>,
    options: BTreeMap<&'a str, &'a str>,
}

impl<'a> Args<'a> {
    fn parse(tokens: impl Iterator<Item = &'a str>) -> Self {
        let mut words = Vec::new();
        let mut options = BTreeMap::new();
        for t in tokens {
            match t.split_once('=') {
                Some((k, v)) => {
                    options.insert(k, v);
                }
                None => words.push(t),
            }
        }
        Args { words, options }
    }

    fn ids(&self) -> Vec<u64> {
        self.words.iter().map(|w| id(w)).collect()
    }

    fn id(&self, i: usize) -> u64 {
        id(self
            .words
            .get(i)
            .unwrap_or_else(|| panic!("argument {i} missing")))
    }

    fn opt<T: std::str::FromStr>(&self, key: &str, default: T) -> T {
        self.options.get(key).map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("bad value for {key}: {v}"))
        })
    }
}

fn id(word: &str) -> u64 {
    word.parse()
        .unwrap_or_else(|_| panic!("not a node id: {word}"))
}

impl Driver {
    /// Runs one command and returns what it printed. The commands:
    ///
    /// - `add-nodes N [pre-vote=B] [check-quorum=B] [read-mode=index|lease]
    ///   [async-storage=B] [max-append=N] [max-inflight=N] [chunk=N]
    ///   [keep-for-followers=BYTES] [fresh=B]`: nodes 1..=N of a new cluster (election 10 ticks,
    ///   heartbeat 2), known to be new, or with `fresh=true` started on
    ///   empty disks as the runtime finds them (they must find out);
    /// - `tick ID [N]`, `tick-heartbeat ID...`, `tick-election ID...` (twice
    ///   the election timeout, so a randomized timeout surely passes),
    ///   `campaign ID` (ticks until it campaigns);
    /// - `propose ID DATA`, `read-index ID REQ`, `transfer-leader ID [to=X]`;
    /// - `process-ready ID...`: prints and handles each node's Ready:
    ///   messages go to their recipient's inbox, writes complete at once
    ///   (or wait for `persist` with `async-storage=true`), committed entries
    ///   apply, snapshot chunks are read and written;
    /// - `persist ID... [count=N]`: completes waiting writes, oldest first;
    /// - `deliver-msgs ID... [type=KIND] [from=X] [drop=true]`: steps the
    ///   messages waiting for each node into it (or drops them);
    /// - `stabilize [ID...]`: process, persist and deliver until quiet;
    /// - `cut A B`, `isolate ID`, `heal`: links that lose what is sent over
    ///   them, or waits to be delivered;
    /// - `crash ID` (unsynced writes and inbox lost), `restart ID`,
    ///   `wipe ID` (crash, replace the disk with an empty one, restart),
    ///   `compact ID` (snapshot at the applied index);
    /// - `status [ID...]`, `log ID`.
    pub fn run(&mut self, line: &str) -> String {
        let mut tokens = line.split_whitespace();
        let name = tokens.next().unwrap_or_default();
        let args = Args::parse(tokens);
        match name {
            "add-nodes" => self.add_nodes(&args),
            "tick" => self.tick(args.id(0), args.words.get(1).map_or(1, |w| id(w))),
            "tick-heartbeat" => self.tick_each(&args, |c| c.heartbeat_ticks),
            "tick-election" => self.tick_each(&args, |c| 2 * c.election_ticks),
            "campaign" => self.campaign(args.id(0)),
            "propose" => self.propose(&args),
            "read-index" => self.read_index(&args),
            "transfer-leader" => self.transfer(&args),
            "process-ready" => args.ids().into_iter().for_each(|i| self.process_ready(i)),
            "persist" => self.persist_cmd(&args),
            "deliver-msgs" => self.deliver_cmd(&args),
            "stabilize" => self.stabilize(&args),
            "cut" => self.cut_link(args.id(0), args.id(1)),
            "isolate" => self.isolate(args.id(0)),
            "heal" => self.cut.clear(),
            "crash" => self.crash(args.id(0)),
            "restart" => self.restart(args.id(0)),
            "wipe" => self.wipe(args.id(0)),
            "compact" => self.compact(args.id(0)),
            "status" => self.status_cmd(&args),
            "log" => self.show_log(args.id(0)),
            other => panic!("unknown command {other}"),
        }
        let out = std::mem::take(&mut self.out);
        if out.is_empty() {
            "ok".to_string()
        } else {
            out
        }
    }

    fn say(&mut self, line: impl AsRef<str>) {
        self.out.push_str(line.as_ref());
        self.out.push('\n');
    }

    fn node(&mut self, id: u64) -> &mut Node {
        self.nodes
            .get_mut(&id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    fn add_nodes(&mut self, args: &Args) {
        let n = args.id(0);
        let voters: Vec<u64> = (1..=n).collect();
        self.async_storage = args.opt("async-storage", false);
        for &id in &voters {
            let mut cfg = Config::new(id, voters.clone());
            cfg.pre_vote = args.opt("pre-vote", true);
            cfg.check_quorum = args.opt("check-quorum", true);
            cfg.max_append_entries = args.opt("max-append", 8);
            cfg.max_inflight_appends = args.opt("max-inflight", 4);
            cfg.snapshot_chunk_bytes = args.opt("chunk", 64);
            cfg.max_log_kept_for_transfer_bytes =
                args.opt("keep-for-followers", cfg.max_log_kept_for_transfer_bytes);
            cfg.read_mode = match args.opt("read-mode", "index".to_string()).as_str() {
                "lease" => ReadMode::Lease,
                _ => ReadMode::Index,
            };
            self.configs.insert(id, cfg);
            let found = if args.opt("fresh", false) {
                Found::Empty
            } else {
                Found::Intact
            };
            self.start(id, found);
        }
        self.say(format!("{n} nodes"));
    }

    /// Starts (or restarts) `id` from its disk.
    fn start(&mut self, id: u64, found: Found) {
        let cfg = self.configs[&id].clone();
        let disk = self
            .nodes
            .get(&id)
            .map(|n| n.disk.clone())
            .unwrap_or_default();
        let restored = disk.restored(found, id);
        let core = RaftCore::new(cfg, restored).unwrap_or_else(|e| panic!("n{id}: {e}"));
        let (applied, state) = disk.snapshot.as_ref().map_or((0, String::new()), |s| {
            let index = s.meta.unwrap_or_default().index;
            (index, String::from_utf8_lossy(&s.data).into_owned())
        });
        let node = Node {
            core,
            disk,
            unsynced: VecDeque::new(),
            up: true,
            applied,
            state,
            receiving: None,
            received: None,
        };
        self.nodes.insert(id, node);
    }

    fn tick(&mut self, id: u64, n: u64) {
        for _ in 0..n {
            self.node(id).core.tick();
        }
    }

    fn tick_each(&mut self, args: &Args, ticks: impl Fn(&Config) -> u64) {
        for id in args.ids() {
            let n = ticks(&self.configs[&id]);
            self.tick(id, n);
        }
    }

    /// Ticks `id` until it starts an election (its Ready then holds the
    /// vote requests): its role or term changes, or, if it was campaigning
    /// already, it has something to send again. Process its Ready first.
    fn campaign(&mut self, id: u64) {
        let limit = 3 * self.configs[&id].election_ticks;
        let core = &self.node(id).core;
        let before = (core.role(), core.term());
        let campaigning = matches!(before.0, Role::PreCandidate | Role::Candidate);
        for _ in 0..limit {
            self.node(id).core.tick();
            let core = &self.node(id).core;
            if (core.role(), core.term()) != before || (campaigning && core.has_ready()) {
                return;
            }
        }
        self.say(format!("n{id} did not campaign within {limit} ticks"));
    }

    fn propose(&mut self, args: &Args) {
        let id = args.id(0);
        let data = args.words.get(1).copied().unwrap_or_default();
        let line = match self.node(id).core.propose(Bytes::from(data.to_string())) {
            Ok(p) => format!("ok: {}@{}", p.index, p.term),
            Err(e) => format!("refused: {e}"),
        };
        self.say(line);
    }

    fn read_index(&mut self, args: &Args) {
        let (id, req) = (args.id(0), args.id(1));
        if let Err(e) = self.node(id).core.read_index(req) {
            self.say(format!("refused: {e}"));
        }
    }

    fn transfer(&mut self, args: &Args) {
        let id = args.id(0);
        let to = args.options.get("to").map(|w| self::id(w));
        let line = match self.node(id).core.transfer_leadership(to) {
            Ok(target) => format!("handing over to n{target}"),
            Err(e) => format!("refused: {e}"),
        };
        self.say(line);
    }

    /// Prints and handles `id`'s Ready, if it has one.
    fn process_ready(&mut self, id: u64) {
        let node = self.node(id);
        if !node.up || !node.core.has_ready() {
            return;
        }
        let rd = node.core.ready();
        self.say(format!("> n{id} handling Ready"));
        for line in rd.to_string().lines() {
            self.say(format!("  {line}"));
        }
        self.handle_ready(id, rd);
    }

    fn handle_ready(&mut self, id: u64, rd: Ready) {
        let point = rd.persist_point();
        for m in rd.messages {
            self.send(m);
        }
        let snapshot = rd.snapshot.map(|meta| {
            let received = self.node(id).received.take();
            assert_eq!(
                received.as_ref().and_then(|s| s.meta),
                Some(meta),
                "n{id} marks a snapshot it did not receive"
            );
            received.unwrap_or_default()
        });
        let write = Write {
            hard: rd.hard_state,
            entries: rd.entries,
            snapshot,
            persisted_messages: rd.persisted_messages,
            point,
        };
        if write.hard.is_some()
            || !write.entries.is_empty()
            || write.snapshot.is_some()
            || !write.persisted_messages.is_empty()
        {
            self.node(id).unsynced.push_back(write);
        }
        if !self.async_storage {
            self.persist(id, usize::MAX, false);
        }
        for chunk in rd.snapshot_chunks_out {
            self.send_chunk(id, chunk);
        }
        for chunk in rd.snapshot_chunks_in {
            self.receive_chunk(id, chunk);
        }
        for e in rd.committed_entries {
            self.apply(id, &e);
        }
    }

    fn apply(&mut self, id: u64, e: &Entry) {
        let node = self.node(id);
        assert_eq!(e.index, node.applied + 1, "n{id} applies in order");
        node.applied = e.index;
        if !e.data.is_empty() {
            if !node.state.is_empty() {
                node.state.push(',');
            }
            node.state.push_str(&String::from_utf8_lossy(&e.data));
        }
    }

    /// Puts `m` in its recipient's inbox; a message to a node that is down,
    /// or over a cut link, is lost.
    fn send(&mut self, m: Message) {
        let up = self.nodes.get(&m.to).is_some_and(|n| n.up);
        if up && !self.cut.contains(&(m.from, m.to)) {
            self.inbox.entry(m.to).or_default().push(m);
        }
    }

    /// Reads the chunk from the node's snapshot on disk and sends it, or
    /// tells the core that snapshot is gone.
    fn send_chunk(&mut self, id: u64, c: SnapshotChunkOut) {
        match self.nodes[&id].disk.snapshot_chunk(&c) {
            Some(data) => self.send(c.message(data)),
            None => self.node(id).core.snapshot_send_failed(c.to),
        }
    }

    /// Appends a received chunk; the last one completes the snapshot, which
    /// becomes this node's state machine if the core takes it.
    fn receive_chunk(&mut self, id: u64, c: SnapshotChunkIn) {
        let node = self.node(id);
        let mut data = match node.receiving.take() {
            Some((meta, data)) if meta == c.meta => data,
            _ => Vec::new(),
        };
        assert_eq!(data.len() as u64, c.offset, "n{id} gets chunks in order");
        data.extend_from_slice(&c.data);
        if !c.done {
            let written = data.len() as u64;
            node.receiving = Some((c.meta, data));
            node.core.on_snapshot_chunk_written(c.meta, written);
            return;
        }
        let info = SnapshotInfo {
            meta: c.meta,
            size: data.len() as u64,
        };
        if node.core.on_snapshot_received(info) {
            node.applied = c.meta.index;
            node.state = String::from_utf8_lossy(&data).into_owned();
            node.received = Some(Snapshot {
                meta: Some(c.meta),
                data: Bytes::from(data),
            });
        }
    }

    /// Completes up to `count` waiting writes of `id`, oldest first: each
    /// becomes durable, its messages go out and the core hears of it.
    fn persist(&mut self, id: u64, count: usize, print: bool) {
        for _ in 0..count {
            let Some(w) = self.node(id).unsynced.pop_front() else {
                return;
            };
            self.node(id)
                .disk
                .write(w.hard, &w.entries, w.snapshot.as_ref());
            if print {
                let point = w
                    .point
                    .map_or("no entries".into(), |(i, t)| format!("{i}@{t}"));
                self.say(format!("> n{id} synced ({point})"));
                for m in &w.persisted_messages {
                    self.say(format!("  sent {}", MsgDisplay(m)));
                }
            }
            for m in w.persisted_messages {
                self.send(m);
            }
            if let Some((index, term)) = w.point {
                self.node(id).core.on_persisted(index, term);
            }
        }
    }

    fn persist_cmd(&mut self, args: &Args) {
        let count = args.opt("count", usize::MAX);
        for id in args.ids() {
            self.persist(id, count, true);
        }
    }

    fn deliver_cmd(&mut self, args: &Args) {
        let kind: Option<String> = args.options.get("type").map(|s| s.to_string());
        let from: Option<u64> = args.options.get("from").map(|w| id(w));
        let drop = args.opt("drop", false);
        for to in args.ids() {
            self.deliver(
                to,
                |m| {
                    from.is_none_or(|f| m.from == f)
                        && kind.as_ref().is_none_or(|k| kind_of(m) == k.as_str())
                },
                drop,
            );
        }
    }

    /// Steps the waiting messages for `to` that `pick` selects into it (or
    /// drops them), in send order; returns how many it took.
    fn deliver(&mut self, to: u64, pick: impl Fn(&Message) -> bool, drop: bool) -> usize {
        let waiting = self.inbox.remove(&to).unwrap_or_default();
        let (taken, kept): (Vec<_>, Vec<_>) = waiting.into_iter().partition(|m| pick(m));
        if !kept.is_empty() {
            self.inbox.insert(to, kept);
        }
        let count = taken.len();
        for m in taken {
            let lost = drop || self.cut.contains(&(m.from, to)) || !self.nodes[&to].up;
            if lost {
                self.say(format!("dropped {}", MsgDisplay(&m)));
            } else {
                self.say(MsgDisplay(&m).to_string());
                self.node(to).core.step(m);
            }
        }
        count
    }

    /// Processes, persists and delivers until nothing moves.
    fn stabilize(&mut self, args: &Args) {
        let ids = if args.words.is_empty() {
            self.nodes.keys().copied().collect()
        } else {
            args.ids()
        };
        for _ in 0..1000 {
            let mut moved = false;
            for &id in &ids {
                moved |= self.nodes[&id].up && self.nodes[&id].core.has_ready();
                self.process_ready(id);
            }
            for &id in &ids {
                moved |= !self.nodes[&id].unsynced.is_empty();
                self.persist(id, usize::MAX, true);
            }
            for &id in &ids {
                if self.inbox.contains_key(&id) {
                    self.say(format!("> n{id} receiving messages"));
                    moved |= self.deliver(id, |_| true, false) > 0;
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the cluster did not stabilize in 1000 rounds");
    }

    fn cut_link(&mut self, a: u64, b: u64) {
        self.cut.insert((a, b));
        self.cut.insert((b, a));
    }

    fn isolate(&mut self, id: u64) {
        let others: Vec<u64> = self.nodes.keys().copied().filter(|&o| o != id).collect();
        for o in others {
            self.cut_link(id, o);
        }
    }

    fn crash(&mut self, id: u64) {
        let node = self.node(id);
        node.up = false;
        let lost = node.unsynced.len();
        node.unsynced.clear();
        self.inbox.remove(&id);
        self.say(format!("n{id} crashed ({lost} unsynced writes lost)"));
    }

    fn restart(&mut self, id: u64) {
        let found = if self.nodes[&id].disk.is_empty() {
            Found::Empty
        } else {
            Found::Intact
        };
        self.start(id, found);
        let line = self.status_line(id);
        self.say(format!("restarted {line}"));
    }

    fn wipe(&mut self, id: u64) {
        self.crash(id);
        self.node(id).disk = Disk::default();
        self.restart(id);
    }

    /// Takes a snapshot at `id`'s applied index (its state machine's
    /// contents), makes it durable and lets the core compact its log.
    fn compact(&mut self, id: u64) {
        let node = self.node(id);
        let index = node.applied;
        let term = node.core.log().term(index).unwrap_or_default();
        let meta = SnapshotMeta { index, term };
        let data = Bytes::from(node.state.clone());
        let info = SnapshotInfo {
            meta,
            size: data.len() as u64,
        };
        node.disk.compact(Snapshot {
            meta: Some(meta),
            data,
        });
        node.core.compact(info);
        let first = node.core.log().first_index();
        self.say(format!(
            "n{id} snapshot at {index}@{term}, log starts at {first}"
        ));
    }

    fn status_line(&self, id: u64) -> String {
        let n = &self.nodes[&id];
        if !n.up {
            return format!("n{id}: down");
        }
        let c = &n.core;
        let log = c.log();
        let leader = c.leader().map_or("none".into(), |l| l.to_string());
        let standing = match c.standing() {
            Standing::Voter => String::new(),
            other => format!(" {other:?}"),
        };
        format!(
            "n{id}: {:?}{standing} term={} leader={leader} vote={} last={}@{} commit={} applied={} persisted={} snapshot={}",
            c.role(),
            c.term(),
            c.vote(),
            log.last_index(),
            log.last_term(),
            log.committed(),
            n.applied,
            log.persisted(),
            log.snapshot_index()
        )
    }

    fn status_cmd(&mut self, args: &Args) {
        let ids = if args.words.is_empty() {
            self.nodes.keys().copied().collect()
        } else {
            args.ids()
        };
        for id in ids {
            let line = self.status_line(id);
            self.say(line);
        }
    }

    /// The core's log, what the disk holds and the state machine.
    fn show_log(&mut self, id: u64) {
        let n = &self.nodes[&id];
        let log = n.core.log();
        let entries: Vec<Entry> = (log.first_index()..=log.last_index())
            .filter_map(|i| log.entry(i).cloned())
            .collect();
        let mut text = format!("n{id} log: {}\n", EntriesDisplay(&entries));
        let snapshot = n.disk.snapshot.as_ref().and_then(|s| s.meta);
        let _ = writeln!(
            text,
            "n{id} disk: {} snapshot={} entries={}",
            HardStateDisplay(&n.disk.hard),
            snapshot.map_or("none".into(), |m| format!("{}@{}", m.index, m.term)),
            EntriesDisplay(&n.disk.entries)
        );
        let _ = write!(text, "n{id} state machine: [{}]", n.state);
        self.say(text);
    }
}

/// The message's kind as its display names it (`MsgApp`, `MsgVote`...).
fn kind_of(m: &Message) -> String {
    let shown = MsgDisplay(m).to_string();
    shown
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string()
}
