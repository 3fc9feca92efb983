//! Process-level tests of storage faults on real `kv-server` processes: an
//! emptied data dir, a flipped byte in the middle of a WAL (on a follower
//! and on the leader), a second process on a locked dir, a dir started with
//! another node's id. No operator action anywhere.
#![cfg(not(madsim))]
// A test panics on any failure: that is how it reports.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::Cluster;

const KEYS: usize = 100;

fn data_dir(c: &Cluster, id: usize) -> PathBuf {
    c.dir.join(format!("node{id}"))
}

/// Waits until node `id`'s log contains `needle`.
fn wait_for_log(c: &Cluster, id: usize, needle: &str, within: Duration) {
    let path = c.dir.join(format!("node{id}.log"));
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        if log.contains(needle) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "node {id} never logged {needle:?} within {within:?}; see {}",
        path.display()
    );
}

fn write_keys(c: &Cluster, from: usize, to: usize) {
    for i in from..to {
        assert_eq!(c.request(&format!("SET k{i} v{i}")), "OK");
    }
}

/// Every key written so far reads back, with only the leader and `needed`
/// up: the node that was repaired must hold the whole log.
fn every_write_survives_with_only(c: &mut Cluster, needed: usize, keys: usize) {
    let leader = c.leader(Duration::from_secs(15));
    for other in 1..=3 {
        if other != needed && other != leader {
            c.kill(other);
        }
    }
    for i in 0..keys {
        assert_eq!(
            c.request(&format!("GET k{i}")),
            format!("VALUE v{i}"),
            "acknowledged write k{i} lost"
        );
    }
}

/// Flips one byte in the middle of the node's first WAL segment.
fn flip_a_byte_mid_wal(dir: &Path) {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segments.sort();
    let path = &segments[0];
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x55;
    std::fs::write(path, bytes).unwrap();
}

fn has_damaged_copy(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".damaged")
    })
}

#[test]
fn a_follower_whose_data_dir_is_emptied_rejoins_and_no_acknowledged_write_is_lost() {
    let mut c = Cluster::start("wiped", 3, &[]);
    write_keys(&c, 0, KEYS);
    let leader = c.leader(Duration::from_secs(10));
    let victim = (1..=3).find(|&i| i != leader).unwrap();
    c.kill(victim);
    std::fs::remove_dir_all(data_dir(&c, victim)).unwrap();
    c.spawn(victim);
    let started = Instant::now();
    wait_for_log(
        &c,
        victim,
        "repaired by the leader",
        Duration::from_secs(30),
    );
    eprintln!("emptied follower a voter again in {:?}", started.elapsed());
    write_keys(&c, KEYS, KEYS + 20);
    every_write_survives_with_only(&mut c, victim, KEYS + 20);
}

#[test]
fn a_follower_with_a_flipped_byte_mid_wal_repairs_itself_and_rejoins() {
    let mut c = Cluster::start("rot-follower", 3, &[]);
    write_keys(&c, 0, KEYS);
    let leader = c.leader(Duration::from_secs(10));
    let victim = (1..=3).find(|&i| i != leader).unwrap();
    c.kill(victim);
    flip_a_byte_mid_wal(&data_dir(&c, victim));
    c.spawn(victim);
    wait_for_log(&c, victim, "storage damaged", Duration::from_secs(10));
    wait_for_log(
        &c,
        victim,
        "repaired by the leader",
        Duration::from_secs(30),
    );
    assert!(
        has_damaged_copy(&data_dir(&c, victim)),
        "the damage is kept for forensics"
    );
    every_write_survives_with_only(&mut c, victim, KEYS);
}

#[test]
fn a_leader_with_a_flipped_byte_mid_wal_repairs_itself_and_rejoins() {
    let mut c = Cluster::start("rot-leader", 3, &[]);
    write_keys(&c, 0, KEYS);
    let victim = c.leader(Duration::from_secs(10));
    c.kill(victim);
    flip_a_byte_mid_wal(&data_dir(&c, victim));
    // The others carry on meanwhile.
    write_keys(&c, KEYS, KEYS + 20);
    c.spawn(victim);
    wait_for_log(
        &c,
        victim,
        "repaired by the leader",
        Duration::from_secs(30),
    );
    every_write_survives_with_only(&mut c, victim, KEYS + 20);
}

#[test]
fn a_second_process_on_a_locked_data_dir_is_refused_with_a_clear_message() {
    let c = Cluster::start("locked", 3, &[]);
    c.leader(Duration::from_secs(10));
    let out = Command::new(env!("CARGO_BIN_EXE_kv-server"))
        .args(["--id", "1", "--members", &c.members, "--data-dir"])
        .arg(data_dir(&c, 1))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another process"), "{err}");
    assert!(
        !err.contains("stack backtrace"),
        "one line with its cause: {err}"
    );
}

#[test]
fn a_data_dir_started_with_another_nodes_id_is_refused_naming_both() {
    let mut c = Cluster::start("wrong-id", 3, &[]);
    c.leader(Duration::from_secs(10));
    c.kill(1);
    let out = Command::new(env!("CARGO_BIN_EXE_kv-server"))
        .args(["--id", "2", "--members", &c.members, "--data-dir"])
        .arg(data_dir(&c, 1))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("belongs to node 1") && err.contains("this is node 2"),
        "{err}"
    );
}

#[test]
fn check_reports_a_healthy_dir_and_a_damaged_one_with_its_exit_code() {
    let mut c = Cluster::start("check", 3, &[]);
    write_keys(&c, 0, 20);
    c.kill(1);
    let check = |dir: &Path| {
        Command::new(env!("CARGO_BIN_EXE_kv-server"))
            .arg("check")
            .arg("--data-dir")
            .arg(dir)
            .output()
            .unwrap()
    };
    let healthy = check(&data_dir(&c, 1));
    let report = String::from_utf8_lossy(&healthy.stdout);
    assert_eq!(healthy.status.code(), Some(0), "{report}");
    assert!(
        report.contains("HEALTHY") && report.contains("cluster 1, node 1"),
        "{report}"
    );
    flip_a_byte_mid_wal(&data_dir(&c, 1));
    let damaged = check(&data_dir(&c, 1));
    let report = String::from_utf8_lossy(&damaged.stdout);
    assert_eq!(damaged.status.code(), Some(1), "{report}");
    assert!(
        report.contains("DAMAGED") && report.contains("wal-"),
        "{report}"
    );
    assert!(!has_damaged_copy(&data_dir(&c, 1)), "check changes nothing");
}
