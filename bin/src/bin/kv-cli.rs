//! `kv-cli`: talk to the store. With a command it runs it once
//! (`kv-cli SET a 1`); without, it opens an interactive prompt with line
//! editing and history.

// A binary talks to its user on the terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use kv_bin::client::{is_error, Client};
use rustyline::error::ReadlineError;
use rustyline::DefaultEditor;

/// Client for the kv store. It follows REDIRECTs to the leader by itself.
///
/// Commands: SET <key> <value>, GET <key>, DEL <key>, CAS <key> <expected> <new>, PING.
#[derive(Debug, Parser)]
#[command(version, about)]
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

    /// A command to run once (e.g. `SET a 1`); without one, start a prompt.
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
    let mut client = match Client::new(&args.addr, Duration::from_secs_f64(args.timeout)) {
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
        one_shot(&mut client, &args.command.join(" "))
    }
}

fn one_shot(client: &mut Client, line: &str) -> ExitCode {
    match client.request(line) {
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
                println!("SET <key> <value> | GET <key> | DEL <key> | CAS <key> <expected> <new> | PING | QUIT");
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
