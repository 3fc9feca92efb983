//! Committed entries per second of an in-memory 3-node cluster of cores:
//! messages handed over directly, persistence acknowledged at once, 100-byte
//! commands, with 1, 64 and 1024 proposals kept outstanding.
//!
//! `cargo bench -p kv-engine --bench throughput`
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kv_engine::raft::{Config, RaftCore, Restored, Role};
use kv_proto::raft::Message;

struct Cluster {
    nodes: Vec<RaftCore>,
    inbox: VecDeque<Message>,
    committed_on_leader: u64,
}

impl Cluster {
    fn new() -> Self {
        let voters = vec![1, 2, 3];
        let nodes = voters
            .iter()
            .map(|&id| {
                let mut cfg = Config::new(id, voters.clone());
                cfg.max_uncommitted_entries = 1 << 20;
                RaftCore::new(cfg, Restored::default()).unwrap()
            })
            .collect();
        Cluster {
            nodes,
            inbox: VecDeque::new(),
            committed_on_leader: 0,
        }
    }

    /// Drains every node's Ready: messages to the inbox, writes acknowledged at once.
    fn drain(&mut self, i: usize) {
        while self.nodes[i].has_ready() {
            let rd = self.nodes[i].ready();
            let point = rd.persist_point();
            self.inbox.extend(rd.messages);
            self.inbox.extend(rd.persisted_messages);
            if let Some((index, term)) = point {
                self.nodes[i].on_persisted(index, term);
            }
            if i == 0 {
                self.committed_on_leader += rd.committed_entries.len() as u64;
            }
        }
    }

    fn deliver_all(&mut self) {
        while let Some(m) = self.inbox.pop_front() {
            let to = (m.to - 1) as usize;
            self.nodes[to].step(m);
            self.drain(to);
        }
    }

    fn elect_node_1(&mut self) {
        for _ in 0..100 {
            self.nodes[0].tick();
            self.drain(0);
            self.deliver_all();
            if self.nodes[0].role() == Role::Leader {
                // Commit the leader's no-op.
                for _ in 0..3 {
                    self.deliver_all();
                    self.drain(0);
                }
                self.committed_on_leader = 0;
                return;
            }
        }
        panic!("node 1 did not become leader");
    }
}

fn run(outstanding: u64, duration: Duration) -> f64 {
    let mut c = Cluster::new();
    c.elect_node_1();
    let payload = Bytes::from(vec![b'x'; 100]);
    let mut proposed = 0u64;
    let start = Instant::now();
    let mut rounds = 0u64;
    while start.elapsed() < duration {
        for _ in 0..1024 {
            // Keep `outstanding` proposals in flight.
            while proposed - c.committed_on_leader < outstanding {
                c.nodes[0].propose(payload.clone()).unwrap();
                proposed += 1;
            }
            c.drain(0);
            c.deliver_all();
            c.drain(0);
            rounds += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    assert!(rounds > 0);
    c.committed_on_leader as f64 / elapsed
}

fn main() {
    let secs: f64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    println!("in-memory 3-node cluster of Raft cores, 100-byte commands, one thread");
    println!("| outstanding proposals | committed entries/s |");
    println!("|---:|---:|");
    for outstanding in [1, 64, 1024] {
        let rate = run(outstanding, Duration::from_secs_f64(secs));
        println!("| {outstanding} | {rate:.0} |");
    }
}
