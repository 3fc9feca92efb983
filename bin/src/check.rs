//! `kv-server check`: what a data dir holds and whether it is healthy, read
//! without starting a node or changing a byte.

use std::fmt::Write as _;
use std::path::Path;

use kv_engine::raft::Found;
use kv_engine::storage::recovery::{segment_name, snapshot_name};
use kv_net::fs::StdFs;
use kv_net::storage::{inspect, Inspection};

/// Exit code: the data dir is healthy (intact, or empty and never used).
pub const HEALTHY: i32 = 0;
/// Exit code: damaged, or recovering (a start repairs it by itself).
pub const DAMAGED: i32 = 1;
/// Exit code: the data dir could not be read.
pub const UNREADABLE: i32 = 2;

/// Inspects `dir` and renders the report; returns it with the exit code.
pub fn check(dir: &Path) -> (String, i32) {
    if !dir.is_dir() {
        return (
            format!("{}: not a directory (or not readable)\n", dir.display()),
            UNREADABLE,
        );
    }
    match inspect(&StdFs::new(), dir) {
        Ok(i) => render(dir, &i),
        Err(e) => (
            format!("{}: cannot be read: {e}\n", dir.display()),
            UNREADABLE,
        ),
    }
}

/// The report on one inspected data dir, and its exit code.
pub fn render(dir: &Path, i: &Inspection) -> (String, i32) {
    let mut out = String::new();
    let _ = writeln!(out, "data directory   {}", dir.display());
    let identity = match &i.meta {
        Some(Ok(m)) => format!(
            "cluster {}, node {}, format {}",
            m.cluster_id, m.node_id, m.format_version
        ),
        Some(Err(e)) => format!("DAMAGED ({e})"),
        None => "none (a fresh directory)".to_string(),
    };
    let _ = writeln!(out, "identity         {identity}");
    if i.in_use {
        let _ = writeln!(
            out,
            "in use           yes: a running node holds the lock; files may change while read"
        );
    }
    match i.snapshot {
        Some(s) => {
            let file = i
                .snapshot_file
                .clone()
                .unwrap_or_else(|| snapshot_name(s.index));
            let _ = writeln!(
                out,
                "snapshot         index {} term {} ({file})",
                s.index, s.term,
            );
        }
        None => {
            let _ = writeln!(out, "snapshot         none");
        }
    }
    for (index, why) in &i.bad_snapshots {
        let _ = writeln!(out, "bad snapshot     {}: {why}", snapshot_name(*index));
    }
    for name in &i.bad_received {
        let _ = writeln!(
            out,
            "bad snapshot     {name}: received, does not check out (a start sets it aside)"
        );
    }
    let bytes: u64 = i.segment_bytes.iter().map(|(_, b)| b).sum();
    let range = match (i.segment_bytes.first(), i.segment_bytes.last()) {
        (Some((first, _)), Some((last, _))) => {
            format!(" ({} .. {})", segment_name(*first), segment_name(*last))
        }
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        "wal              {} segments, {bytes} bytes{range}",
        i.segment_bytes.len()
    );
    let hs = i.hard_state;
    let entries = match (i.last_index >= i.first_index, i.snapshot) {
        (true, _) => format!("entries {}..={}", i.first_index, i.last_index),
        (false, Some(_)) => "no entries after the snapshot".to_string(),
        (false, None) => "no entries".to_string(),
    };
    let _ = writeln!(
        out,
        "log              {entries}; term {} vote {} commit {}",
        hs.term, hs.vote, hs.commit
    );
    if let Some((seq, len)) = i.torn_tail {
        let _ = writeln!(
            out,
            "torn tail        {} after byte {len} (a write a crash interrupted, never acknowledged; cut at the next start)",
            segment_name(seq)
        );
    }
    for d in &i.damage {
        let _ = writeln!(out, "damage           {d}");
    }
    let (verdict, code) = verdict(i);
    let _ = writeln!(out, "verdict          {verdict}");
    (out, code)
}

fn verdict(i: &Inspection) -> (String, i32) {
    match (i.found, i.hard_state.recovering) {
        (Found::Damaged, _) => (
            "DAMAGED: the next start sets the damage aside (*.damaged) and the node rejoins as \
             recovering; a leader repairs it, no operator action needed"
                .into(),
            DAMAGED,
        ),
        (_, true) => (
            format!(
                "RECOVERING: this node lost state earlier and waits for a leader of term {} or \
                 later to repair it",
                match i.hard_state.repair_floor {
                    0 => "(not learned yet)".to_string(),
                    f => f.to_string(),
                }
            ),
            DAMAGED,
        ),
        (Found::Empty, _) => (
            "EMPTY: a fresh directory; in an existing cluster the node rejoins as recovering"
                .into(),
            HEALTHY,
        ),
        (Found::Intact, false) => ("HEALTHY".into(), HEALTHY),
    }
}
