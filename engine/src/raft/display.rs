//! A compact, one-line-per-item text form of what the core produces, for
//! tests that assert a handler's whole output and for the scenario scripts
//! in `engine/testdata/`.
//!
//! An entry is `index@term` followed by its data (`noop` for the leader's
//! empty entry); a message is `from->to Kind term=T` and its fields; a Ready
//! lists its non-empty parts, one per line, indented under a heading.

use std::fmt;

use kv_proto::raft::{
    message::Body, AppendEntries, AppendEntriesResponse, Entry, HardState, Message, SnapshotMeta,
};

use super::ready::{Ready, SoftState};

/// Bytes of an entry's data shown before it is cut short.
const SHOWN_DATA_BYTES: usize = 24;

/// Shows a message on one line: `1->2 MsgApp term=1 log=3@1 commit=3 entries=[4@1 "x"]`.
pub struct MsgDisplay<'a>(pub &'a Message);

/// Shows an entry as `index@term "data"` (or `index@term noop`).
pub struct EntryDisplay<'a>(pub &'a Entry);

/// Shows a list of entries as `[1@1 noop, 2@1 "a"]`.
pub struct EntriesDisplay<'a>(pub &'a [Entry]);

impl fmt::Display for EntryDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.0;
        write!(f, "{}@{} ", e.index, e.term)?;
        if e.data.is_empty() {
            return f.write_str("noop");
        }
        let shown = e.data.get(..SHOWN_DATA_BYTES).unwrap_or(&e.data);
        f.write_str("\"")?;
        for &b in shown {
            write!(f, "{}", std::ascii::escape_default(b))?;
        }
        f.write_str("\"")?;
        if shown.len() < e.data.len() {
            write!(f, "+{}B", e.data.len() - shown.len())?;
        }
        Ok(())
    }
}

impl fmt::Display for EntriesDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}", EntryDisplay(e))?;
        }
        f.write_str("]")
    }
}

fn meta(m: Option<SnapshotMeta>) -> String {
    m.map_or_else(|| "none".to_string(), |m| format!("{}@{}", m.index, m.term))
}

impl fmt::Display for MsgDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(f, "{}->{} ", m.from, m.to)?;
        let Some(body) = &m.body else {
            return write!(f, "Empty term={}", m.term);
        };
        match body {
            Body::RequestVote(v) => {
                let kind = if v.pre_vote { "MsgPreVote" } else { "MsgVote" };
                let (i, t) = (v.last_log_index, v.last_log_term);
                write!(f, "{kind} term={} last={i}@{t}", m.term)?;
                flags(f, &[(v.transfer, "transfer")])
            }
            Body::RequestVoteResponse(r) => {
                let kind = if r.pre_vote {
                    "MsgPreVoteResp"
                } else {
                    "MsgVoteResp"
                };
                let answer = if r.granted { "granted" } else { "rejected" };
                write!(f, "{kind} term={} {answer}", m.term)
            }
            Body::AppendEntries(a) => append(f, m.term, a),
            Body::AppendEntriesResponse(r) => append_response(f, m.term, r),
            Body::InstallSnapshot(s) => {
                let (snap, len) = (meta(s.meta), s.data.len());
                write!(
                    f,
                    "MsgSnap term={} snap={snap} offset={} len={len}",
                    m.term, s.offset
                )?;
                flags(f, &[(s.done, "done")])?;
                write!(f, " round={}", s.round)
            }
            Body::InstallSnapshotResponse(r) => {
                let snap = meta(r.meta);
                write!(
                    f,
                    "MsgSnapResp term={} snap={snap} next={}",
                    m.term, r.next_offset
                )?;
                flags(
                    f,
                    &[
                        (r.done, "done"),
                        (r.reject, "reject"),
                        (r.recovering, "recovering"),
                    ],
                )?;
                write!(f, " round={}", r.round)
            }
            Body::StatusQuery(q) => write!(f, "MsgStatusQuery term={} nonce={}", m.term, q.nonce),
            Body::StatusReply(r) => write!(
                f,
                "MsgStatusReply term={} nonce={} fresh={} recovering={}",
                m.term, r.nonce, r.fresh, r.recovering
            ),
            Body::RepairRequest(r) => write!(f, "MsgRepair term={} floor={}", m.term, r.floor),
            Body::TimeoutNow(_) => write!(f, "MsgTimeoutNow term={}", m.term),
        }
    }
}

/// Writes ` name` for each flag that is set.
fn flags(f: &mut fmt::Formatter<'_>, set: &[(bool, &str)]) -> fmt::Result {
    for &(on, name) in set {
        if on {
            write!(f, " {name}")?;
        }
    }
    Ok(())
}

fn append(f: &mut fmt::Formatter<'_>, term: u64, a: &AppendEntries) -> fmt::Result {
    let (i, t) = (a.prev_log_index, a.prev_log_term);
    write!(
        f,
        "MsgApp term={term} log={i}@{t} commit={}",
        a.leader_commit
    )?;
    if !a.entries.is_empty() {
        write!(f, " entries={}", EntriesDisplay(&a.entries))?;
    }
    write!(f, " round={}", a.round)
}

fn append_response(
    f: &mut fmt::Formatter<'_>,
    term: u64,
    r: &AppendEntriesResponse,
) -> fmt::Result {
    write!(f, "MsgAppResp term={term}")?;
    if r.success {
        write!(f, " match={}", r.match_index)?;
    } else {
        let (i, t) = (r.conflict_index, r.conflict_term);
        write!(f, " rejected={} hint={i}@{t}", r.rejected_index)?;
    }
    write!(f, " round={}", r.round)?;
    flags(f, &[(r.recovering, "recovering")])
}

/// Shows a hard state as `term=T vote=V commit=C` (and the recovery fields
/// when set).
pub struct HardStateDisplay<'a>(pub &'a HardState);

impl fmt::Display for HardStateDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hs = self.0;
        write!(f, "term={} vote={} commit={}", hs.term, hs.vote, hs.commit)?;
        if hs.recovering {
            write!(f, " recovering floor={}", hs.repair_floor)?;
        }
        Ok(())
    }
}

impl fmt::Display for SoftState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} term={}", self.role, self.term)?;
        match self.leader {
            Some(l) => write!(f, " leader={l}")?,
            None => f.write_str(" leader=none")?,
        }
        if self.standing != super::Standing::Voter {
            write!(f, " {:?}", self.standing)?;
        }
        Ok(())
    }
}

/// Writes `heading:` then one indented line per item, if there are any.
fn section<T>(
    f: &mut fmt::Formatter<'_>,
    heading: &str,
    items: &[T],
    show: impl Fn(&T) -> String,
) -> fmt::Result {
    if items.is_empty() {
        return Ok(());
    }
    writeln!(f, "{heading}:")?;
    for item in items {
        writeln!(f, "  {}", show(item))?;
    }
    Ok(())
}

impl fmt::Display for Ready {
    /// One line per part, in the order a driver handles them; an empty
    /// Ready shows as `(empty)`. Every line ends in a newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return writeln!(f, "(empty)");
        }
        if let Some(ss) = &self.soft_state {
            writeln!(f, "state: {ss}")?;
        }
        if let Some(hs) = &self.hard_state {
            writeln!(f, "hard state: {}", HardStateDisplay(hs))?;
        }
        if let Some(m) = self.snapshot {
            writeln!(f, "snapshot: {}", meta(Some(m)))?;
        }
        section(f, "entries", &self.entries, |e| EntryDisplay(e).to_string())?;
        section(f, "messages", &self.messages, |m| MsgDisplay(m).to_string())?;
        section(f, "after fsync", &self.persisted_messages, |m| {
            MsgDisplay(m).to_string()
        })?;
        section(f, "committed", &self.committed_entries, |e| {
            EntryDisplay(e).to_string()
        })?;
        section(f, "reads", &self.read_states, |r| {
            format!("id={} index={}", r.id, r.index)
        })?;
        section(f, "failed reads", &self.failed_reads, |id| {
            format!("id={id}")
        })?;
        section(f, "snapshot chunks out", &self.snapshot_chunks_out, |c| {
            format!(
                "to={} snap={} offset={} len={}{}",
                c.to,
                meta(Some(c.meta)),
                c.offset,
                c.len,
                if c.done { " done" } else { "" }
            )
        })?;
        section(f, "snapshot chunks in", &self.snapshot_chunks_in, |c| {
            format!(
                "snap={} offset={} len={}{}",
                meta(Some(c.meta)),
                c.offset,
                c.data.len(),
                if c.done { " done" } else { "" }
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn an_append_shows_its_log_position_and_entries_on_one_line() {
        let m = Message {
            from: 1,
            to: 2,
            term: 3,
            body: Some(Body::AppendEntries(AppendEntries {
                prev_log_index: 4,
                prev_log_term: 2,
                entries: vec![
                    Entry {
                        term: 3,
                        index: 5,
                        data: Bytes::new(),
                    },
                    Entry {
                        term: 3,
                        index: 6,
                        data: Bytes::from_static(b"k\x00\"v"),
                    },
                ],
                leader_commit: 4,
                round: 7,
            })),
        };
        assert_eq!(
            MsgDisplay(&m).to_string(),
            r#"1->2 MsgApp term=3 log=4@2 commit=4 entries=[5@3 noop, 6@3 "k\x00\"v"] round=7"#
        );
    }

    #[test]
    fn long_data_is_cut_short_with_the_bytes_left_counted() {
        let e = Entry {
            term: 1,
            index: 1,
            data: Bytes::from(vec![b'a'; 30]),
        };
        assert_eq!(
            EntryDisplay(&e).to_string(),
            format!("1@1 \"{}\"+6B", "a".repeat(24))
        );
    }

    #[test]
    fn an_empty_ready_says_so() {
        assert_eq!(Ready::default().to_string(), "(empty)\n");
    }
}
