//! `kv-cli status`: every member's STATUS, gathered node by node (each
//! answers for itself, never redirecting) and shown as a table like
//! `etcdctl endpoint status -w table`, or as JSON.

use std::fmt::Write as _;

use anyhow::Result;
use kv_net::client::text::{Request, Response};

use crate::client::Client;

/// What one member said, or why it said nothing.
#[derive(Debug, Clone)]
pub struct MemberStatus {
    /// Its id (0 if not known: an address given that answered nothing).
    pub id: u64,
    /// Its client address.
    pub addr: String,
    /// Its STATUS fields, if it answered.
    pub fields: Option<Vec<(String, String)>>,
    /// Why it did not answer.
    pub error: Option<String>,
}

impl MemberStatus {
    fn field(&self, name: &str) -> &str {
        self.fields
            .as_ref()
            .and_then(|f| f.iter().find(|(k, _)| k == name))
            .map_or("", |(_, v)| v.as_str())
    }
}

/// Asks one node for its status.
fn ask(
    addr: &str,
    connect: &impl Fn(&[String]) -> Result<Client>,
) -> Result<Vec<(String, String)>, String> {
    let mut client = connect(&[addr.to_string()]).map_err(|e| format!("{e:#}"))?;
    match client.call(&Request::Status) {
        Ok(Response::Status(fields)) => Ok(fields),
        Ok(Response::Err(e)) => Err(e),
        Ok(other) => Err(format!("unexpected answer {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Every member's status: the members are learnt from the first of
/// `addrs` that answers; members no node names are not shown.
pub fn member_statuses(
    addrs: &[String],
    connect: impl Fn(&[String]) -> Result<Client>,
) -> Vec<MemberStatus> {
    let mut first = None;
    let mut tried = Vec::new();
    for addr in addrs {
        match ask(addr, &connect) {
            Ok(fields) => {
                first = Some((addr.clone(), fields));
                break;
            }
            Err(e) => tried.push(MemberStatus {
                id: 0,
                addr: addr.clone(),
                fields: None,
                error: Some(e),
            }),
        }
    }
    let Some((first_addr, first_fields)) = first else {
        return tried;
    };
    let members: Vec<(u64, String)> = first_fields
        .iter()
        .find(|(k, _)| k == "members")
        .map(|(_, v)| {
            v.split(',')
                .filter_map(|m| m.split_once('@'))
                .filter_map(|(id, addr)| Some((id.parse().ok()?, addr.to_string())))
                .collect()
        })
        .unwrap_or_default();
    members
        .into_iter()
        .map(|(id, addr)| {
            let answer = if addr == first_addr {
                Ok(first_fields.clone())
            } else {
                ask(&addr, &connect)
            };
            match answer {
                Ok(fields) => MemberStatus {
                    id,
                    addr,
                    fields: Some(fields),
                    error: None,
                },
                Err(e) => MemberStatus {
                    id,
                    addr,
                    fields: None,
                    error: Some(e),
                },
            }
        })
        .collect()
}

/// Columns of the table: heading and STATUS field.
const COLUMNS: [(&str, &str); 14] = [
    ("ID", "id"),
    ("ADDRESS", "client_addr"),
    ("ROLE", "role"),
    ("TERM", "term"),
    ("LEADER", "leader"),
    ("LAST INDEX", "last_index"),
    ("COMMIT", "commit"),
    ("APPLIED", "applied"),
    ("SNAPSHOT", "snapshot_index"),
    ("WAL BYTES", "wal_bytes"),
    ("UPTIME", "uptime_ms"),
    ("VERSION", "version"),
    ("HEALTH", "health"),
    ("REACHABLE", ""),
];

/// The statuses as a boxed table, one row per member.
pub fn render_table(statuses: &[MemberStatus]) -> String {
    let rows: Vec<Vec<String>> = statuses.iter().map(row).collect();
    let widths: Vec<usize> = COLUMNS
        .iter()
        .enumerate()
        .map(|(i, (head, _))| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.len())
                .chain([head.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let rule: String = widths
        .iter()
        .map(|w| format!("+{}", "-".repeat(w + 2)))
        .collect::<String>()
        + "+\n";
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (cell, w) in cells.iter().zip(&widths) {
            let _ = write!(out, "| {cell:<w$} ");
        }
        out + "|\n"
    };
    let mut out = rule.clone();
    out += &line(COLUMNS.iter().map(|(h, _)| h.to_string()).collect());
    out += &rule;
    for r in rows {
        out += &line(r);
    }
    out += &rule;
    for s in statuses.iter().filter(|s| s.error.is_some()) {
        let _ = writeln!(
            out,
            "{} ({}): {}",
            if s.id == 0 {
                "?".to_string()
            } else {
                s.id.to_string()
            },
            s.addr,
            s.error.as_deref().unwrap_or_default()
        );
    }
    out
}

fn row(s: &MemberStatus) -> Vec<String> {
    COLUMNS
        .iter()
        .map(|&(head, field)| match head {
            "ID" if s.id != 0 => s.id.to_string(),
            "ADDRESS" => s.addr.clone(),
            "REACHABLE" => (s.fields.is_some()).to_string(),
            "UPTIME" => s
                .field(field)
                .parse::<u64>()
                .map(uptime)
                .unwrap_or_default(),
            "WAL BYTES" => s.field(field).parse::<u64>().map(bytes).unwrap_or_default(),
            "LEADER" if s.field(field) == "0" => "none".into(),
            _ => s.field(field).to_string(),
        })
        .collect()
}

fn uptime(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

fn bytes(b: u64) -> String {
    match b {
        0..=9_999 => format!("{b} B"),
        10_000..=9_999_999 => format!("{} kB", b / 1000),
        _ => format!("{} MB", b / 1_000_000),
    }
}

/// The statuses as a JSON array, one object per member.
pub fn render_json(statuses: &[MemberStatus]) -> String {
    use kv_net::http::json_string;
    let items: Vec<String> = statuses
        .iter()
        .map(|s| {
            let mut obj = format!(
                "{{\"id\":{},\"address\":{},\"reachable\":{}",
                s.id,
                json_string(&s.addr),
                s.fields.is_some()
            );
            for (k, v) in s.fields.iter().flatten() {
                let numeric = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
                let value = if numeric || v == "true" || v == "false" {
                    v.clone()
                } else {
                    json_string(v)
                };
                if k != "id" {
                    let _ = write!(obj, ",{}:{value}", json_string(k));
                }
            }
            if let Some(e) = &s.error {
                let _ = write!(obj, ",\"error\":{}", json_string(e));
            }
            obj + "}"
        })
        .collect();
    format!("[{}]", items.join(","))
}
