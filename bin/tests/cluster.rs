//! Process-level tests: real `kv-server` processes on loopback with
//! ephemeral ports and temporary data directories.
#![cfg(not(madsim))]
// A test panics on any failure: that is how it reports.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{binary, connect, roundtrip, try_request, Cluster};

#[test]
fn writes_and_reads_go_through_any_node_and_followers_redirect() {
    let c = Cluster::start("rw", 3, &[]);
    c.leader(Duration::from_secs(10));
    assert_eq!(c.request("SET color blue"), "OK");
    assert_eq!(c.request("GET color"), "VALUE blue");
    assert_eq!(c.request("CAS color red green"), "FAIL blue");
    assert_eq!(c.request("CAS color blue green"), "OK");
    assert_eq!(c.request("DEL color"), "OK");
    assert_eq!(c.request("DEL color"), "NOT_FOUND");
    assert_eq!(c.request("CAS color x y"), "FAIL NOT_FOUND");
    // Whichever node leads now (a loaded machine may have moved it).
    let leader = c.leader(Duration::from_secs(10));
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let redirect = try_request(c.client(follower), "SET a 1").unwrap();
    assert_eq!(redirect, format!("REDIRECT {}", c.client(leader)));
    assert_eq!(try_request(c.client(follower), "PING").unwrap(), "PONG");

    // kv-cli finds the leader by itself, from a follower's address.
    let out = Command::new(env!("CARGO_BIN_EXE_kv-cli"))
        .args([
            "--addr",
            &c.client(follower).to_string(),
            "SET",
            "via",
            "cli",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    assert_eq!(c.request("GET via"), "VALUE cli");
}

#[test]
fn killing_the_leader_keeps_every_acknowledged_write_and_the_node_catches_up() {
    let mut c = Cluster::start("failover", 3, &[]);
    for i in 0..50 {
        assert_eq!(c.request(&format!("SET k{i} v{i}")), "OK");
    }
    let old = c.leader(Duration::from_secs(10));
    c.kill(old);
    let start = Instant::now();
    let new = c.leader(Duration::from_secs(10));
    assert_ne!(new, old);
    for i in 0..50 {
        assert_eq!(
            c.request(&format!("GET k{i}")),
            format!("VALUE v{i}"),
            "acknowledged write k{i} lost"
        );
    }
    eprintln!("new leader and all reads back in {:?}", start.elapsed());
    for i in 50..80 {
        assert_eq!(c.request(&format!("SET k{i} v{i}")), "OK");
    }
    // The old leader comes back and catches up: with the other follower
    // gone, the cluster can only serve if it holds the whole log.
    c.spawn(old);
    std::thread::sleep(Duration::from_secs(2));
    let other = (1..=3).find(|&i| i != old && i != new).unwrap();
    c.kill(other);
    for i in 0..80 {
        assert_eq!(c.request(&format!("GET k{i}")), format!("VALUE v{i}"));
    }
}

/// `--worker-threads 0`: each node runs every task on its main thread
/// (tokio's current-thread runtime) and still elects, replicates, fails
/// over and answers every protocol.
#[test]
fn nodes_running_on_one_thread_each_serve_and_fail_over() {
    let mut c = Cluster::start("one-thread", 3, &["--worker-threads", "0"]);
    for i in 0..20 {
        assert_eq!(c.request(&format!("SET t{i} {i}")), "OK");
    }
    let old = c.leader(Duration::from_secs(10));
    c.kill(old);
    assert_ne!(c.leader(Duration::from_secs(10)), old);
    for i in 0..20 {
        assert_eq!(c.request(&format!("GET t{i}")), format!("VALUE {i}"));
    }
    c.spawn(old);
    assert_eq!(c.request("SET after back"), "OK");
}

#[test]
fn all_nodes_killed_and_restarted_keep_their_data() {
    let mut c = Cluster::start("restart", 3, &[]);
    for i in 0..30 {
        assert_eq!(c.request(&format!("SET r{i} {i}")), "OK");
    }
    for id in 1..=3 {
        c.kill(id);
    }
    for id in 1..=3 {
        c.spawn(id);
    }
    for i in 0..30 {
        assert_eq!(c.request(&format!("GET r{i}")), format!("VALUE {i}"));
    }
}

#[test]
fn a_follower_down_across_compactions_catches_up_by_snapshot() {
    // Down for longer than the leader keeps the log for a silent follower
    // (20 election timeouts: 2 s with the tests' timing), so compactions
    // leave nothing for it.
    let timing = ["--election-ticks", "10", "--heartbeat-ticks", "2"];
    let log = follower_down_across_compactions("snapshot", &timing, Duration::from_millis(3_500));
    assert!(
        log.contains("installed snapshot from leader"),
        "the lagging node caught up by InstallSnapshot"
    );
}

#[test]
fn a_follower_down_briefly_across_compactions_catches_up_by_appends() {
    // Back within 20 election timeouts (12 s here, well past the writes on
    // a slow machine): the leader kept the log after its match for it.
    let timing = ["--election-ticks", "60", "--heartbeat-ticks", "6"];
    let log = follower_down_across_compactions("briefly", &timing, Duration::ZERO);
    assert!(
        !log.contains("installed snapshot from leader"),
        "the lagging node caught up by appends"
    );
}

/// With Raft `timing` (10 ms ticks), kills a follower, waits `silent`,
/// writes 200 keys (4 or 5 snapshots, at one every 40-50 entries),
/// restarts it, and reads every seventh key through the leader with the
/// third node down, so that each read needs the restarted node. Returns
/// the restarted node's log.
fn follower_down_across_compactions(name: &str, timing: &[&str], silent: Duration) -> String {
    let mut args = vec!["--snapshot-entries", "40", "--tick-ms", "10"];
    args.extend_from_slice(timing);
    let mut c = Cluster::start(name, 3, &args);
    let leader = c.leader(Duration::from_secs(10));
    // Test only: a cluster of 3 has followers.
    let lagging = (1..=3).find(|&i| i != leader).unwrap();
    c.kill(lagging);
    std::thread::sleep(silent);
    for i in 0..200 {
        assert_eq!(c.request(&format!("SET s{i} {i}")), "OK");
    }
    // Test only: the test's own data directory, just written by the leader.
    let snapshots = std::fs::read_dir(c.dir.join(format!("node{leader}")))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("snap-")
        })
        .count();
    assert!(snapshots >= 1, "the leader compacted its log");
    c.spawn(lagging);
    std::thread::sleep(Duration::from_secs(3));
    // Test only: a cluster of 3 has a third node.
    let other = (1..=3).find(|&i| i != leader && i != lagging).unwrap();
    c.kill(other);
    // Only the leader and the caught-up node remain: every read needs it.
    for i in (0..200).step_by(7) {
        assert_eq!(c.request(&format!("GET s{i}")), format!("VALUE {i}"));
    }
    // Test only: the node's log file, which the test harness writes.
    std::fs::read_to_string(c.dir.join(format!("node{lagging}.log"))).unwrap()
}

#[test]
fn bad_input_gets_a_clear_error_and_never_hurts_other_clients() {
    let c = Cluster::start(
        "badinput",
        3,
        &[
            "--max-line-bytes",
            "256",
            "--max-key-bytes",
            "16",
            "--max-connections",
            "8",
        ],
    );
    let leader = c.client(c.leader(Duration::from_secs(10)));
    let mut conn = connect(leader);
    assert_eq!(
        roundtrip(&mut conn, b"FLY me\n"),
        "ERR unknown command 'FLY'"
    );
    assert_eq!(
        roundtrip(&mut conn, b"SET onlykey\n"),
        "ERR wrong number of arguments for SET (expected SET <key> <value>)"
    );
    assert_eq!(
        roundtrip(&mut conn, b"GET\n"),
        "ERR wrong number of arguments for GET (expected GET <key>)"
    );
    assert_eq!(roundtrip(&mut conn, b"\n"), "ERR empty request");
    assert_eq!(
        roundtrip(&mut conn, b"GET a\0b\n"),
        "ERR invalid byte 0x00 in request (use the binary protocol)"
    );
    assert_eq!(
        roundtrip(&mut conn, b"GET 01234567890123456789\n"),
        "ERR key too long (20 > 16 bytes)"
    );
    // The connection is still usable after each of those.
    assert_eq!(roundtrip(&mut conn, b"SET ok 1\r\n"), "OK");

    // A client that connects and stalls does not block anyone.
    let _stalled = TcpStream::connect(leader).unwrap();
    let mut half = TcpStream::connect(leader).unwrap();
    half.write_all(b"SET half").unwrap(); // no newline, ever
    assert_eq!(try_request(leader, "GET ok").unwrap(), "VALUE 1");

    // An over-long line gets ERR and the connection is closed.
    let mut long = connect(leader);
    let line = format!("SET k {}\n", "x".repeat(1000));
    assert_eq!(
        roundtrip(&mut long, line.as_bytes()),
        "ERR line too long (max 256 bytes)"
    );
    let mut rest = Vec::new();
    let n = long.0.read_to_end(&mut rest).unwrap_or(0);
    assert_eq!(n, 0, "closed after an over-long line");

    // Connections over the limit are refused with a message. The node
    // takes the held ones in as fast as it can accept them (on a loaded
    // machine, not within any fixed time): until it has, a new connection
    // may still get a place, so ask again until the limit is reached.
    let held: Vec<TcpStream> = (0..10)
        .map(|_| TcpStream::connect(leader).unwrap())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        let refused = TcpStream::connect(leader).unwrap();
        refused
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut resp = String::new();
        let _ = BufReader::new(refused).read_line(&mut resp);
        if !resp.is_empty() || Instant::now() > deadline {
            break resp;
        }
    };
    assert_eq!(answer.trim_end(), "ERR too many connections");
    drop(held);
}

#[test]
fn the_binary_protocol_pipelines_requests_and_carries_any_bytes() {
    use kv_proto::client::{self as pb, request::Op, response::Result as R};
    let c = Cluster::start("binary", 3, &[]);
    let leader = c.client(c.leader(Duration::from_secs(10)));
    let mut s = binary::connect(leader);
    // 200 writes sent back to back before reading any answer.
    let value = bytes::Bytes::from_static(b"line one\nline two \x00 \xff");
    for id in 1..=200u64 {
        let key = bytes::Bytes::from(format!("bin key {id}"));
        binary::send(
            &mut s,
            &pb::Request {
                id,
                op: Some(Op::Set(pb::Set {
                    key,
                    value: value.clone(),
                })),
                ..Default::default()
            },
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let resp = binary::recv(&mut s).expect("an answer for every request");
        assert!(matches!(resp.result, Some(R::Ok(_))), "{resp:?}");
        assert!(seen.insert(resp.id), "one answer per id");
    }
    assert_eq!(seen.len(), 200);
    let get = pb::Request {
        id: 7,
        op: Some(Op::Get(pb::Get {
            key: bytes::Bytes::from_static(b"bin key 42"),
        })),
        ..Default::default()
    };
    binary::send(&mut s, &get);
    let resp = binary::recv(&mut s).unwrap();
    assert_eq!(
        (resp.id, resp.result),
        (7, Some(R::Value(pb::Value { value })))
    );

    // A follower answers with a typed redirect.
    let follower = (1..=3).map(|i| c.client(i)).find(|a| *a != leader).unwrap();
    let mut f = binary::connect(follower);
    binary::send(
        &mut f,
        &pb::Request {
            id: 9,
            op: Some(Op::Ping(pb::Ping {})),
            ..Default::default()
        },
    );
    assert!(matches!(
        binary::recv(&mut f).unwrap().result,
        Some(R::Pong(_))
    ));
    binary::send(&mut f, &get);
    let resp = binary::recv(&mut f).unwrap();
    assert_eq!(
        resp.result,
        Some(R::Redirect(pb::Redirect {
            leader: leader.to_string()
        }))
    );
}

#[test]
fn malformed_binary_frames_get_an_error_or_a_closed_connection() {
    use kv_proto::client::{self as pb, error::Kind, request::Op, response::Result as R};
    let c = Cluster::start("badbinary", 3, &["--max-key-bytes", "8"]);
    let leader = c.client(c.leader(Duration::from_secs(10)));
    let kind = |r: &pb::Response| match &r.result {
        Some(R::Error(e)) => Some(e.kind),
        _ => None,
    };
    let mut s = binary::connect(leader);
    // Undecodable payload: an error, and the connection stays usable.
    binary::send_raw(&mut s, &[0xff, 0xff, 0xff, 0xff]);
    assert_eq!(
        kind(&binary::recv(&mut s).unwrap()),
        Some(Kind::BadRequest as i32)
    );
    // No operation.
    binary::send(
        &mut s,
        &pb::Request {
            id: 3,
            op: None,
            ..Default::default()
        },
    );
    let r = binary::recv(&mut s).unwrap();
    assert_eq!((r.id, kind(&r)), (3, Some(Kind::BadRequest as i32)));
    // A key over the limit.
    let long = pb::Request {
        id: 4,
        op: Some(Op::Get(pb::Get {
            key: bytes::Bytes::from(vec![b'k'; 9]),
        })),
        ..Default::default()
    };
    binary::send(&mut s, &long);
    let r = binary::recv(&mut s).unwrap();
    assert_eq!((r.id, kind(&r)), (4, Some(Kind::BadRequest as i32)));
    binary::send(
        &mut s,
        &pb::Request {
            id: 5,
            op: Some(Op::Ping(pb::Ping {})),
            ..Default::default()
        },
    );
    assert_eq!(binary::recv(&mut s).unwrap().id, 5, "still usable");
    // A frame over the size limit: an error, then the connection closes.
    s.write_all(&(64u32 << 20).to_be_bytes()).unwrap();
    assert_eq!(
        kind(&binary::recv(&mut s).unwrap()),
        Some(Kind::BadRequest as i32)
    );
    assert!(
        binary::recv(&mut s).is_none(),
        "closed after an oversize frame"
    );
    // A bad preamble is refused in text.
    let mut t = TcpStream::connect(leader).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    t.write_all(b"\0XYZ").unwrap();
    let mut resp = String::new();
    BufReader::new(t).read_line(&mut resp).unwrap();
    assert!(resp.starts_with("ERR"), "{resp}");
    // The node still serves everyone else.
    assert_eq!(c.request("PING"), "PONG");
}

#[test]
fn kv_bench_loads_keys_in_batches_and_measures_with_no_failures() {
    let c = Cluster::start("bench", 3, &[]);
    c.leader(Duration::from_secs(10));
    let addrs: Vec<String> = (1..=3).map(|i| c.client(i).to_string()).collect();
    let out = Command::new(env!("CARGO_BIN_EXE_kv-bench"))
        .args([
            "--addr",
            &addrs.join(","),
            "--keys",
            "3000",
            "--load",
            "3000",
        ])
        .args([
            "--count",
            "2000",
            "--connections",
            "4",
            "--inflight",
            "4",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(
        json.contains("\"ok\":2000,") && json.contains("\"errors\":0,"),
        "{json}"
    );
    // Every loaded key is there.
    for i in (0..3000).step_by(271) {
        let k = format!("k{i:015}");
        assert_eq!(
            c.request(&format!("GET {k}")),
            format!("VALUE {}", "v".repeat(100))
        );
    }
}

/// Whatever bytes a binary client stored, a text client gets exactly one
/// answer line per request: the value, or an ERR naming the binary
/// protocol when the value holds CR, LF or NUL. A `PING` after each pair of
/// requests must answer `PONG`, so no answer ever spills into the next.
#[test]
fn a_text_client_gets_one_line_per_request_whatever_bytes_were_stored() {
    use std::io::{BufRead, Write};

    use kv_proto::client::{self as pb, request::Op, response::Result as R};
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let c = Cluster::start("anybytes", 3, &[]);
    let leader = c.client(c.leader(Duration::from_secs(10)));
    // The runner takes an `Fn`: the connections live in cells.
    let bin = std::cell::RefCell::new(binary::connect(leader));
    let text = std::cell::RefCell::new(connect(leader));
    let next_id = std::cell::Cell::new(0u64);
    let line = |text_in: &mut std::io::BufReader<std::net::TcpStream>| {
        let mut buf = Vec::new();
        text_in.read_until(b'\n', &mut buf).unwrap();
        assert_eq!(buf.last(), Some(&b'\n'), "a whole line: {buf:?}");
        buf.pop();
        buf
    };
    let unprintable = b"ERR value holds CR, LF or NUL bytes: read it with the binary protocol";
    let mut runner = TestRunner::new(Config {
        cases: 100,
        ..Config::default()
    });
    let values = prop_oneof![
        8 => prop::collection::vec(any::<u8>(), 1..48),
        1 => Just(b"x\nOK".to_vec()),
        1 => Just(b"VALUE y\r".to_vec()),
    ];
    runner
        .run(&values, |value| {
            let id = next_id.get() + 1;
            next_id.set(id);
            let key = format!("any{id}");
            let set = pb::Request {
                id,
                op: Some(Op::Set(pb::Set {
                    key: bytes::Bytes::from(key.clone()),
                    value: bytes::Bytes::from(value.clone()),
                })),
                ..Default::default()
            };
            let mut bin = bin.borrow_mut();
            binary::send(&mut bin, &set);
            let answer = binary::recv(&mut bin).unwrap();
            let mut text = text.borrow_mut();
            let (text_in, text_out) = &mut *text;
            prop_assert!(matches!(answer.result, Some(R::Ok(_))), "{answer:?}");
            text_out
                .write_all(format!("GET {key}\nCAS {key} nothing new\nPING\n").as_bytes())
                .unwrap();
            let printable = !value.iter().any(|&b| matches!(b, b'\n' | b'\r' | 0));
            let (get, cas) = (line(text_in), line(text_in));
            if printable {
                prop_assert_eq!(get, [b"VALUE ".as_slice(), &value].concat());
                prop_assert_eq!(cas, [b"FAIL ".as_slice(), &value].concat());
            } else {
                prop_assert_eq!(&get[..], &unprintable[..]);
                prop_assert_eq!(&cas[..], &unprintable[..]);
            }
            prop_assert_eq!(line(text_in), b"PONG".to_vec());
            Ok(())
        })
        .unwrap();
}
