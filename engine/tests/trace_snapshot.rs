//! The compact trace of a fixed 3-node scenario (election, replication, a
//! partitioned leader, healing, a crash and restart), kept as an insta
//! snapshot: any change in the core's behaviour shows up as a reviewed diff
//! (`cargo insta review`).
// A test panics on any failure: that is how it reports.
#![allow(clippy::unwrap_used)]

mod support;

use bytes::Bytes;
use support::{Cluster, NetFaults};

fn scenario() -> String {
    let mut c = Cluster::new(3, 7, NetFaults::default());
    c.trace = Some(String::new());
    let leader = c.elect(100).unwrap().expect("a leader");
    for i in 0..3 {
        c.propose(leader, Bytes::from(format!("w{i}"))).unwrap();
    }
    for _ in 0..5 {
        c.step().unwrap();
    }
    let others: Vec<u64> = c.ids().into_iter().filter(|&i| i != leader).collect();
    c.partition(&[leader], &others);
    for _ in 0..40 {
        c.step().unwrap();
    }
    let new_leader = c.leader().unwrap();
    c.propose(new_leader, Bytes::from_static(b"after-partition"))
        .unwrap();
    c.heal();
    for _ in 0..10 {
        c.step().unwrap();
    }
    let follower = c
        .ids()
        .into_iter()
        .find(|&i| Some(i) != c.leader())
        .unwrap();
    c.crash(follower);
    let l = c.leader().unwrap();
    c.propose(l, Bytes::from_static(b"while-down")).unwrap();
    for _ in 0..5 {
        c.step().unwrap();
    }
    c.restart(follower).unwrap();
    for _ in 0..10 {
        c.step().unwrap();
    }
    c.trace.take().unwrap()
}

#[test]
fn three_node_trace_of_a_fixed_seed() {
    let trace = scenario();
    assert_eq!(trace, scenario(), "the same seed gives the same trace");
    insta::assert_snapshot!(trace);
}
