//! `kv-cli`: talk to the store. With a command it runs it once
//! (`kv-cli SET a 1`); without, it opens an interactive prompt with line
//! editing and history.

// A binary talks to its user on the terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use kv_bin::client::{is_error, request_from_words, Client, Protocol};
use kv_net::client::text::{encode_response, Response};
use rustyline::error::ReadlineError;
use rustyline::DefaultEditor;

/// Client for the kv store. It follows REDIRECTs to the leader by itself.
///
/// Commands: SET <key> <value>, GET <key>, DEL <key>, CAS <key> <expected> <new>,
/// MSET <key> <value> [<key> <value> ...], PING.
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

    /// A command to run once (e.g. `SET a 1`); without one, start a prompt.
    /// Each word is one token, so a quoted value may hold spaces.
    command: Vec<String>,
}

/// Exit codes: 0 answered, 1 the server answered ERR, 2 no answer.
const EXIT_ERR: u8 = 1;
const EXIT_UNREACHABLE: u8 = 2;

fn main() -> ExitCode {
    let args = Args::parse();
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        eprintln!("error: --timeout must be a positive number of seconds");
        return ExitCode::from(EXIT_UNREACHABLE);
    }
    let mut client = match connect(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    if args.command.is_empty() {
        match repl(&mut client) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(EXIT_UNREACHABLE)
            }
        }
    } else {
        one_shot(&mut client, &args.command)
    }
}

/// The client the flags describe.
fn connect(args: &Args) -> Result<Client> {
    let client = Client::with_protocol(
        &args.addr,
        Duration::from_secs_f64(args.timeout),
        args.protocol,
    )?;
    let Some(ca) = &args.tls_ca else {
        return Ok(client);
    };
    let identity = args.tls_cert.as_deref().zip(args.tls_key.as_deref());
    let tls = kv_net::tls::client_tls(ca, identity).context("loading the TLS certificates")?;
    Ok(client.with_tls(tls))
}

fn one_shot(client: &mut Client, words: &[String]) -> ExitCode {
    let req = match request_from_words(words) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_ERR);
        }
    };
    match client.call(&req).map(|r| render(&r)) {
        Ok(resp) if is_error(&resp) => {
            eprintln!("{resp}");
            ExitCode::from(EXIT_ERR)
        }
        Ok(resp) => {
            println!("{resp}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_UNREACHABLE)
        }
    }
}

fn repl(client: &mut Client) -> Result<()> {
    let mut editor = DefaultEditor::new()?;
    let history =
        std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".kv_cli_history"));
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    println!(
        "kv-cli: connected to {} (type HELP for commands, Ctrl-D to quit)",
        client.current_addr()
    );
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
        match line.to_ascii_uppercase().as_str() {
            "QUIT" | "EXIT" => break,
            "HELP" => {
                println!(
                    "SET <key> <value> | GET <key> | DEL <key> | CAS <key> <expected> <new> | MSET <key> <value> ... | PING | QUIT"
                );
                continue;
            }
            _ => {}
        }
        match client.request(line) {
            Ok(resp) => println!("{resp}"),
            Err(e) => eprintln!("error: {e}"),
        }
    }
    if let Some(path) = &history {
        let _ = editor.save_history(path);
    }
    Ok(())
}

/// A response as the line the text protocol would print.
fn render(resp: &Response) -> String {
    let mut out = Vec::new();
    encode_response(resp, &mut out);
    String::from_utf8_lossy(&out).trim_end().to_string()
}
