//! The queue from the peer connections to the core, bounded in bytes as
//! well as in messages.
//!
//! A bound in messages alone lets a member that the core does not keep up
//! with queue thousands of frames of up to the frame limit each. Here each
//! message is charged what it holds in memory (its frame, plus its entries'
//! in-memory size, see `peer_wire`) before it is queued, and the charge is
//! given back when the core takes it: a connection whose message does not
//! fit waits, which slows that connection and no one's memory. A single
//! message larger than the whole budget is charged the whole budget, so it
//! still gets through once the queue is empty.

use std::sync::Arc;

use kv_proto::raft::Message;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// The largest budget: a semaphore takes at most `u32::MAX` permits at once.
const MAX_BUDGET: usize = u32::MAX as usize;

/// Makes a queue of at most `capacity` messages and `max_bytes` charged.
pub fn channel(capacity: usize, max_bytes: usize) -> (InboxSender, Inbox) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let max = max_bytes.clamp(1, MAX_BUDGET);
    let budget = Arc::new(Semaphore::new(max));
    (
        InboxSender {
            tx,
            budget: budget.clone(),
            max,
        },
        Inbox { rx, budget },
    )
}

/// The queue is closed: the core has stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the peer inbox is closed")]
pub struct Closed;

/// The sending side, one clone per peer connection.
#[derive(Debug, Clone)]
pub struct InboxSender {
    tx: mpsc::Sender<(Message, OwnedSemaphorePermit)>,
    budget: Arc<Semaphore>,
    max: usize,
}

impl InboxSender {
    /// Queues `msg`, charged `bytes`, once both a slot and the bytes are
    /// free. The charge travels with the message as a permit, so it is
    /// given back however the message goes: taken by the core, dropped with
    /// the queue, or with this future if it is cancelled.
    pub async fn send(&self, msg: Message, bytes: usize) -> Result<(), Closed> {
        // `max` fits in a u32 (see `channel`), so the cast cannot truncate.
        let charge = bytes.clamp(1, self.max) as u32;
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(charge)
            .await
            .map_err(|_| Closed)?;
        self.tx.send((msg, permit)).await.map_err(|_| Closed)
    }

    /// Bytes charged to messages queued now.
    pub fn queued_bytes(&self) -> usize {
        self.max - self.budget.available_permits()
    }
}

/// The core's side.
#[derive(Debug)]
pub struct Inbox {
    rx: mpsc::Receiver<(Message, OwnedSemaphorePermit)>,
    budget: Arc<Semaphore>,
}

impl Inbox {
    /// The next message, its charge given back.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await.map(|(msg, _charge)| msg)
    }

    /// The next message if one is queued, its charge given back.
    pub fn try_recv(&mut self) -> Result<Message, mpsc::error::TryRecvError> {
        self.rx.try_recv().map(|(msg, _charge)| msg)
    }
}

impl Drop for Inbox {
    /// The core has stopped: a connection waiting for room is told so at
    /// once, instead of waiting for charges no one will give back.
    fn drop(&mut self) {
        self.budget.close();
    }
}

#[cfg(test)]
// Test code: its inputs are fixed here; an unwrap that fails is how a test reports.
mod tests {
    use std::time::Duration;

    use super::*;

    fn msg(term: u64) -> Message {
        Message {
            from: 2,
            to: 1,
            term,
            body: None,
        }
    }

    #[tokio::test]
    async fn a_message_that_does_not_fit_waits_until_the_core_takes_one() {
        let (tx, mut rx) = channel(100, 1000);
        // Test only: channels the test owns; a failure is the finding.
        tx.send(msg(1), 600).await.unwrap();
        // Test only: channels the test owns; a failure is the finding.
        tx.send(msg(2), 400).await.unwrap();
        assert_eq!(tx.queued_bytes(), 1000);
        let sender = tx.clone();
        let third = tokio::spawn(async move { sender.send(msg(3), 500).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!third.is_finished(), "1,500 bytes would be queued");
        // Test only: channels the test owns; a failure is the finding.
        assert_eq!(rx.recv().await.unwrap().term, 1);
        // Test only: channels the test owns; a failure is the finding.
        third.await.unwrap().unwrap();
        assert_eq!(tx.queued_bytes(), 900);
        // Test only: channels the test owns; a failure is the finding.
        assert_eq!(rx.try_recv().unwrap().term, 2);
        // Test only: channels the test owns; a failure is the finding.
        assert_eq!(rx.recv().await.unwrap().term, 3);
        assert_eq!(tx.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn a_message_larger_than_the_budget_passes_alone() {
        let (tx, mut rx) = channel(100, 1000);
        // Test only: channels the test owns; a failure is the finding.
        tx.send(msg(1), 10).await.unwrap();
        let sender = tx.clone();
        let big = tokio::spawn(async move { sender.send(msg(2), 5000).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!big.is_finished(), "it waits for the queue to empty");
        // Test only: channels the test owns; a failure is the finding.
        assert_eq!(rx.recv().await.unwrap().term, 1);
        // Test only: channels the test owns; a failure is the finding.
        big.await.unwrap().unwrap();
        assert_eq!(tx.queued_bytes(), 1000);
        // Test only: channels the test owns; a failure is the finding.
        assert_eq!(rx.recv().await.unwrap().term, 2);
        assert_eq!(tx.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn a_connection_waiting_for_room_is_released_when_the_core_stops() {
        let (tx, rx) = channel(100, 1000);
        // Test only: channels the test owns; a failure is the finding.
        tx.send(msg(1), 1000).await.unwrap();
        let sender = tx.clone();
        let waiting = tokio::spawn(async move { sender.send(msg(2), 10).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the inbox is full");
        drop(rx);
        let outcome = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        // Test only: the task the test spawned; a failure is the finding.
        assert_eq!(outcome.unwrap().unwrap(), Err(Closed));
    }

    #[tokio::test]
    async fn a_cancelled_send_gives_its_charge_back() {
        let (tx, _rx) = channel(1, 1000);
        // Test only: channels the test owns; a failure is the finding.
        tx.send(msg(1), 100).await.unwrap();
        // The one slot is taken: this send waits for it, holding 300 bytes.
        let cancelled = tokio::time::timeout(Duration::from_millis(50), tx.send(msg(2), 300)).await;
        assert!(cancelled.is_err(), "it waited");
        assert_eq!(
            tx.queued_bytes(),
            100,
            "the cancelled send's charge is back"
        );
    }

    #[tokio::test]
    async fn sending_to_a_stopped_core_fails_and_charges_nothing() {
        let (tx, rx) = channel(100, 1000);
        drop(rx);
        assert_eq!(tx.send(msg(1), 10).await, Err(Closed));
        assert_eq!(tx.queued_bytes(), 0);
    }
}
