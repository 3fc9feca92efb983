//! `kv-cli`: talk to the store. With a command it runs it once
//! (`kv-cli SET a 1`); without, it opens an interactive prompt with line
//! editing and history. `kv-cli status` shows every member;
//! `kv-cli transfer-leader [--to ID]` hands leadership over.

// A binary talks to its user on the terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use kv_bin::client::{display, request_from_args, split_args, Client, ClientError, Protocol};
use kv_bin::status::{member_statuses, render_json, render_table};
use kv_net::client::text::{Request, Response};
use rustyline::error::ReadlineError;
use rustyline::DefaultEditor;

/// Client for the kv store. It follows REDIRECTs to the leader by itself.
///
/// Commands: SET <key> <value>, GET <key>, DEL <key>, CAS <key> <expected> <new>,
/// MSET <key> <value> [<key> <value> ...], INCR <key>, INCRBY <key> <n>,
/// DECR <key>, DECRBY <key> <n>, PING, STATUS (this node's own);
/// `status` (every member, as a table), `transfer-leader [--to ID]`.
///
/// Writes go in an exactly-once session: a write whose answer was lost is
/// sent again by itself (to any node) and applied at most once, so its
/// answer is definite.
///
/// Exit codes: 0 answered (NOT_FOUND and FAIL included), 1 the server
/// answered ERR, 2 no server reachable, 3 nodes answered but no leader was
/// elected in time, 4 refused (too many connections, or TLS), 5 the
/// request was sent but no answer came back before the timeout (it may or
/// may not have been applied).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Server addresses (host:port), comma-separated; any node will do.
    #[arg(
        long,
        env = "KV_ADDR",
        value_delimiter = ',',
        default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
    )]
    addr: Vec<String>,

    /// Give up on a request after this many seconds (while no leader is
    /// known or no node answers).
    #[arg(long, env = "KV_TIMEOUT", default_value_t = 5.0)]
    timeout: f64,

    /// Wire protocol: binary (any bytes in keys and values) or text.
    #[arg(long, env = "KV_PROTOCOL", value_enum, default_value_t = Protocol::Binary)]
    protocol: Protocol,

    /// The cluster CA certificate (PEM): speak TLS and trust the nodes it
    /// signed.
    #[arg(long, env = "KV_TLS_CA")]
    tls_ca: Option<PathBuf>,

    /// A client certificate (PEM) the cluster CA signed, for nodes that
    /// require one (with --tls-key).
    #[arg(long, env = "KV_TLS_CERT", requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,

    /// The client certificate's private key (PEM).
    #[arg(long, env = "KV_TLS_KEY", requires_all = ["tls_cert", "tls_ca"])]
    tls_key: Option<PathBuf>,

    /// Read the command's last argument from standard input (any bytes).
    #[arg(short = 'x')]
    stdin_last: bool,

    /// Send writes without a session: one log entry fewer per run, but a
    /// write whose answer is lost is not retried (exit code 5).
    #[arg(long)]
    no_session: bool,

    /// With `status`: print JSON instead of a table.
    #[arg(long)]
    json: bool,

    /// A command to run once (e.g. `SET a 1`); without one, start a prompt.
    /// Each word is one token, so a quoted value may hold spaces, and a
    /// word may start with '-' (`SET n -5`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// Exit codes (see the command's help).
const EXIT_ERR: u8 = 1;
const EXIT_UNREACHABLE: u8 = 2;
const EXIT_NO_LEADER: u8 = 3;
const EXIT_REFUSED: u8 = 4;
const EXIT_LOST: u8 = 5;

fn main() -> ExitCode {
    let args = Args::parse();
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        eprintln!("error: --timeout must be a positive number of seconds");
        return ExitCode::from(EXIT_ERR);
    }
    let mut words: Vec<Vec<u8>> = args.command.iter().map(|w| w.as_bytes().to_vec()).collect();
    if args.stdin_last {
        let mut last = Vec::new();
        if let Err(e) = std::io::stdin().read_to_end(&mut last) {
            eprintln!("error: reading standard input: {e}");
            return ExitCode::from(EXIT_ERR);
        }
        words.push(last);
    }
    let first = words
        .first()
        .map(|w| String::from_utf8_lossy(w).to_ascii_lowercase());
    let rest = words.get(1..).unwrap_or_default();
    match first.as_deref() {
        Some("status") if rest.iter().all(|w| w == b"--json") => {
            return status(&args, args.json || !rest.is_empty())
        }
        Some("transfer-leader") => return transfer_leader(&args, rest),
        _ => {}
    }
    let mut client = match connect(&args, &args.addr) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    if words.is_empty() {
        match repl(&mut client, &args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(EXIT_UNREACHABLE)
            }
        }
    } else {
        one_shot(&mut client, &words)
    }
}

/// A client for `addrs` as the flags describe.
fn connect(args: &Args, addrs: &[String]) -> Result<Client> {
    let mut client =
        Client::with_protocol(addrs, Duration::from_secs_f64(args.timeout), args.protocol)?;
    if !args.no_session {
        client = client.with_sessions();
    }
    let Some(ca) = &args.tls_ca else {
        return Ok(client);
    };
    let identity = args.tls_cert.as_deref().zip(args.tls_key.as_deref());
    let tls = kv_net::tls::client_tls(ca, identity).context("loading the TLS certificates")?;
    Ok(client.with_tls(tls))
}

fn one_shot(client: &mut Client, words: &[Vec<u8>]) -> ExitCode {
    let req = match request_from_args(words) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_ERR);
        }
    };
    let (text, code) = answer(client, &req);
    if code == 0 {
        println!("{text}");
    } else {
        eprintln!("{text}");
    }
    ExitCode::from(code)
}

/// Sends `req`; what to print and the exit code it means.
fn answer(client: &mut Client, req: &Request) -> (String, u8) {
    match client.call(req) {
        Ok(Response::Err(msg)) if msg.starts_with("too many connections") => {
            (format!("ERR {msg}"), EXIT_REFUSED)
        }
        Ok(resp @ Response::Err(_)) => (display(resp), EXIT_ERR),
        Ok(Response::Status(fields)) => (render_fields(&fields), 0),
        Ok(resp) => (display(resp), 0),
        Err(e @ ClientError::NoLeader { .. }) => (format!("error: {e}"), EXIT_NO_LEADER),
        Err(e @ ClientError::Refused(_)) => (format!("error: {e}"), EXIT_REFUSED),
        Err(e @ ClientError::Lost { .. }) => (format!("error: {e}"), EXIT_LOST),
        Err(e) => (format!("error: {e}"), EXIT_UNREACHABLE),
    }
}

/// One node's STATUS fields, one per line.
fn render_fields(fields: &[(String, String)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `kv-cli status`: every member's status, as a table or JSON.
fn status(args: &Args, json: bool) -> ExitCode {
    let statuses = member_statuses(&args.addr, |addrs| connect(args, addrs));
    if json {
        println!("{}", render_json(&statuses));
    } else {
        print!("{}", render_table(&statuses));
    }
    if statuses.iter().any(|s| s.fields.is_some()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_UNREACHABLE)
    }
}

/// `kv-cli transfer-leader [--to ID]`.
fn transfer_leader(args: &Args, rest: &[Vec<u8>]) -> ExitCode {
    let rest: Vec<String> = rest
        .iter()
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect();
    let to = match rest.as_slice() {
        [] => None,
        [flag, id] if flag == "--to" => match id.parse::<u64>() {
            Ok(id) => Some(id),
            Err(_) => {
                eprintln!("error: --to takes a member id, not {id:?}");
                return ExitCode::from(EXIT_ERR);
            }
        },
        _ => {
            eprintln!("usage: kv-cli transfer-leader [--to ID]");
            return ExitCode::from(EXIT_ERR);
        }
    };
    let mut client = match connect(args, &args.addr) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    let (text, code) = answer(&mut client, &Request::TransferLeader { to });
    if code != 0 {
        eprintln!("{text}");
        return ExitCode::from(code);
    }
    // Say who leads now, once the node that handed over has heard of it.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let mut leader = String::from("?");
    while std::time::Instant::now() < deadline {
        let (now, _) = answer(&mut client, &Request::Status);
        match now.lines().find_map(|l| l.strip_prefix("leader: ")) {
            Some(id) if id != "0" => {
                leader = id.to_string();
                break;
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    println!("OK: leadership handed over; member {leader} leads now");
    ExitCode::SUCCESS
}

fn repl(client: &mut Client, args: &Args) -> Result<()> {
    let mut editor = DefaultEditor::new()?;
    let history =
        std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".kv_cli_history"));
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    match client.call(&Request::Ping) {
        Ok(Response::Pong) => println!(
            "kv-cli: connected to {} (type HELP for commands, Ctrl-D to quit)",
            client.current_addr()
        ),
        Ok(other) => println!(
            "kv-cli: {} answered {}",
            client.current_addr(),
            display(other)
        ),
        Err(e) => println!("kv-cli: not connected ({e}); commands will keep trying"),
    }
    loop {
        let prompt = format!("kv {}> ", client.current_addr());
        let line = match editor.readline(&prompt) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(line);
        let words = match split_args(line) {
            Ok(w) => w,
            Err(e) => {
                println!("(error) {e}");
                continue;
            }
        };
        let name = words
            .first()
            .map(|w| String::from_utf8_lossy(w).to_ascii_uppercase())
            .unwrap_or_default();
        match name.as_str() {
            "QUIT" | "EXIT" => break,
            "HELP" => {
                println!(
                    "SET <key> <value> | GET <key> | DEL <key> | CAS <key> <expected> <new> | \
                     MSET <key> <value> ... | PING | STATUS | QUIT\n\
                     Quote arguments with spaces or escapes: SET k \"two words\" | SET k \"\\x00\\n\""
                );
                continue;
            }
            _ => {}
        }
        match request_from_args(&words) {
            Ok(req) => println!("{}", answer(client, &req).0),
            Err(e) => println!("(error) {e}"),
        }
    }
    if let Some(path) = &history {
        let _ = editor.save_history(path);
    }
    let _ = args;
    Ok(())
}
