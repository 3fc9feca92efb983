//! The history of client operations: what each client asked, what it was
//! told (or that it never found out), and when, as a total order of events.
//!
//! "When" is a sequence number drawn at each invoke and each return. The
//! simulation runs one task at a time, so the order of these calls is the
//! real-time order the linearizability checker needs.

use std::sync::Mutex;

use bytes::Bytes;

/// What a client asked for: the node's own operation type.
pub use kv_net::api::ClientOp as Input;

/// What a client was told.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Output {
    /// OK
    Ok,
    /// VALUE v
    Value(Bytes),
    /// NOT_FOUND
    NotFound,
    /// FAIL current / FAIL NOT_FOUND
    CasFailed(Option<Bytes>),
    /// INT n (INCR's new value)
    Int(i64),
}

/// One operation of the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The client that ran it.
    pub client: u64,
    /// What it asked.
    pub input: Input,
    /// What it was told; `None` if it never found out (timed out: the
    /// operation may or may not have taken effect).
    pub output: Option<Output>,
    /// Sequence number of the invocation.
    pub invoke: u64,
    /// Sequence number of the return (`u64::MAX` while unknown).
    pub ret: u64,
    /// Simulated milliseconds since the recorder was made, at the
    /// invocation and at the return (for people reading a failure).
    pub at_ms: (u64, u64),
}

/// Identifies an operation in a recorder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpId(usize);

/// Collects a history from concurrent clients.
#[derive(Debug)]
pub struct HistoryRecorder {
    state: Mutex<(Vec<Operation>, u64)>,
    started: tokio::time::Instant,
}

impl Default for HistoryRecorder {
    fn default() -> Self {
        HistoryRecorder {
            state: Mutex::default(),
            started: tokio::time::Instant::now(),
        }
    }
}

impl HistoryRecorder {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Milliseconds of simulated time since the history began (the clock
    /// of `Operation::at_ms`).
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Vec<Operation>, u64)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that `client` invoked `input`.
    pub fn invoke(&self, client: u64, input: Input) -> OpId {
        let now = self.now_ms();
        let mut s = self.lock();
        s.1 += 1;
        let invoke = s.1;
        s.0.push(Operation {
            client,
            input,
            output: None,
            invoke,
            ret: u64::MAX,
            at_ms: (now, u64::MAX),
        });
        OpId(s.0.len() - 1)
    }

    /// Records the answer to `op`.
    pub fn complete(&self, op: OpId, output: Output) {
        let now = self.now_ms();
        let mut s = self.lock();
        s.1 += 1;
        let ret = s.1;
        if let Some(o) = s.0.get_mut(op.0) {
            o.output = Some(output);
            o.ret = ret;
            o.at_ms.1 = now;
        }
    }

    /// Records that `op` ended without an answer (indeterminate).
    pub fn timeout(&self, op: OpId) {
        let mut s = self.lock();
        if let Some(o) = s.0.get_mut(op.0) {
            o.output = None;
            o.ret = u64::MAX;
        }
    }

    /// A point in the history: operations invoked later have a greater
    /// `invoke` number.
    pub fn mark(&self) -> u64 {
        self.lock().1
    }

    /// The operations so far.
    pub fn operations(&self) -> Vec<Operation> {
        self.lock().0.clone()
    }
}
