//! Scenario scripts for the Raft core, after etcd-io/raft's `testdata/`.
//!
//! A script in `engine/testdata/` is a list of blocks. Each block is a
//! command line, a `----` line, and the output the command must print, up
//! to a blank line. Lines starting with `#` (and blank lines) between
//! blocks are comments. The commands are documented on [`Driver::run`].
//!
//! After an intended change in the core's behaviour, rewrite every
//! script's expected output with the actual one and review the diff:
//!
//! ```text
//! UPDATE_SCENARIOS=1 cargo nextest run -p kv-engine --test scenarios
//! git diff engine/testdata
//! ```
#![allow(dead_code)]

mod driver;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

pub use driver::Driver;

/// One command of a script and the output it must print.
struct Block {
    /// Comments and blank lines before the command, kept on rewrite.
    preamble: Vec<String>,
    command: String,
    /// 1-based line of the command in its file.
    line: usize,
    expected: String,
}

/// A parsed script: its blocks and any comments after the last one.
struct Script {
    blocks: Vec<Block>,
    trailer: Vec<String>,
}

fn parse(text: &str, file: &str) -> Script {
    let mut blocks = Vec::new();
    let mut preamble = Vec::new();
    let mut lines = text.lines().enumerate().peekable();
    while let Some((i, line)) = lines.next() {
        if line.trim().is_empty() || line.starts_with('#') {
            preamble.push(line.to_string());
            continue;
        }
        let separator = lines.next().map(|(_, l)| l);
        assert_eq!(
            separator,
            Some("----"),
            "{file}:{}: a command is followed by a `----` line",
            i + 1
        );
        let mut expected = Vec::new();
        while let Some((_, out)) = lines.next_if(|(_, l)| !l.trim().is_empty()) {
            expected.push(out);
        }
        blocks.push(Block {
            preamble: std::mem::take(&mut preamble),
            command: line.to_string(),
            line: i + 1,
            expected: expected.join("\n"),
        });
    }
    Script {
        blocks,
        trailer: preamble,
    }
}

fn render(script: &Script, outputs: &[String]) -> String {
    let mut text = String::new();
    for (block, output) in script.blocks.iter().zip(outputs) {
        for line in &block.preamble {
            text.push_str(line);
            text.push('\n');
        }
        text.push_str(&block.command);
        text.push_str("\n----\n");
        text.push_str(output);
        text.push('\n');
    }
    for line in &script.trailer {
        text.push_str(line);
        text.push('\n');
    }
    text
}

fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

/// Runs `testdata/<name>.txt`: every command's output must be the one
/// written under it, or (with `UPDATE_SCENARIOS=1`) becomes it.
pub fn run_file(name: &str) {
    let path = testdata().join(format!("{name}.txt"));
    let file = format!("engine/testdata/{name}.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
    let script = parse(&text, &file);
    let mut driver = Driver::default();
    let mut outputs = Vec::new();
    for block in &script.blocks {
        let output = catch_unwind(AssertUnwindSafe(|| driver.run(&block.command)))
            .unwrap_or_else(|_| panic!("{file}:{}: `{}` panicked", block.line, block.command));
        outputs.push(output.trim_end().to_string());
    }
    if std::env::var_os("UPDATE_SCENARIOS").is_some() {
        let rewritten = render(&script, &outputs);
        if rewritten != text {
            std::fs::write(&path, rewritten).unwrap_or_else(|e| panic!("{file}: {e}"));
        }
        return;
    }
    for (block, output) in script.blocks.iter().zip(&outputs) {
        assert!(
            *output == block.expected,
            "{file}:{}: `{}` printed\n{output}\n---- but the script expects ----\n{}\n\
             (UPDATE_SCENARIOS=1 rewrites the scripts; review the diff)",
            block.line,
            block.command,
            block.expected
        );
    }
}

/// Fails unless every script in `testdata/` is among `names` (so none is
/// silently left out of the test run).
pub fn assert_all_listed(names: &[&str]) {
    let mut missing = Vec::new();
    let dir = std::fs::read_dir(testdata()).unwrap_or_else(|e| panic!("testdata: {e}"));
    for entry in dir {
        let path = entry.unwrap_or_else(|e| panic!("testdata: {e}")).path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if path.extension().is_some_and(|e| e == "txt") && !names.contains(&stem) {
            missing.push(stem.to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "scripts without a test in engine/tests/scenarios.rs: {missing:?}"
    );
}
