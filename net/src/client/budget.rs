//! The bytes all clients of a node may hold at once: requests from the
//! moment they are read until they are answered, and the read buffers of
//! requests still arriving beyond a small base per connection. When it is
//! spent, connections stop reading (TCP pushes back on their clients)
//! until answers free some; nothing is dropped and no client is refused.
//!
//! Each connection also has a small allowance of its own
//! ([`CONNECTION_ALLOWANCE`]), charged first: a client asking small things
//! one at a time never waits behind others' large requests for the shared
//! budget (whose waiters are served in order, largest included).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Budgets are counted in units of this many bytes (a semaphore counts in
/// `u32`, so a budget can reach 4 TiB).
const UNIT: usize = 1024;

/// A node-wide byte budget shared by its client connections.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    units: Arc<Semaphore>,
    total_units: u32,
}

/// Bytes each connection may hold of its own before it draws on the
/// shared budget.
pub const CONNECTION_ALLOWANCE: usize = 16 * UNIT;

/// One connection's view of the budget: its own allowance first, then the
/// shared budget.
#[derive(Debug, Clone)]
pub struct ConnectionBudget {
    shared: MemoryBudget,
    /// Units of the allowance not held by a charge.
    own: Arc<AtomicU32>,
}

/// Bytes held against a budget; given back when dropped.
#[derive(Debug)]
pub struct Charge {
    permit: Option<OwnedSemaphorePermit>,
    /// Units taken from a connection's allowance, and where they go back.
    own: Option<(Arc<AtomicU32>, u32)>,
}

impl MemoryBudget {
    /// A budget of `bytes` (rounded up to a KiB).
    pub fn new(bytes: usize) -> Self {
        let total_units = u32::try_from(bytes.div_ceil(UNIT).max(1)).unwrap_or(u32::MAX);
        MemoryBudget {
            units: Arc::new(Semaphore::new(total_units as usize)),
            total_units,
        }
    }

    /// A view for one new connection, with its own allowance.
    pub fn connection(&self) -> ConnectionBudget {
        ConnectionBudget {
            shared: self.clone(),
            own: Arc::new(AtomicU32::new((CONNECTION_ALLOWANCE / UNIT) as u32)),
        }
    }

    /// Holds `bytes` against the budget, waiting until they are free. A
    /// request larger than the whole budget waits for all of it.
    pub async fn charge(&self, bytes: usize) -> Charge {
        self.charge_units(self.units_for(bytes)).await
    }

    async fn charge_units(&self, units: u32) -> Charge {
        if units == 0 {
            return Charge::none();
        }
        // The semaphore is never closed, so acquiring only waits.
        let permit = self.units.clone().acquire_many_owned(units).await.ok();
        Charge { permit, own: None }
    }

    /// Bytes free right now.
    pub fn available(&self) -> usize {
        self.units.available_permits() * UNIT
    }

    fn units_for(&self, bytes: usize) -> u32 {
        u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .min(self.total_units)
    }
}

impl ConnectionBudget {
    /// The whole shared budget: a charge that grows in steps stops here,
    /// or its next step would wait for units it holds itself.
    pub fn most(&self) -> usize {
        (self.shared.total_units as usize).saturating_mul(UNIT)
    }

    /// Holds `bytes`: as much as it can from the connection's allowance,
    /// the rest from the shared budget (waiting until it is free).
    pub async fn charge(&self, bytes: usize) -> Charge {
        let units = u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX);
        let own = self
            .own
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |free| {
                Some(free - free.min(units))
            })
            .map_or(0, |free| free.min(units));
        let rest = (units - own).min(self.shared.total_units);
        let mut charge = self.shared.charge_units(rest).await;
        if own > 0 {
            charge.own = Some((self.own.clone(), own));
        }
        charge
    }
}

impl Charge {
    /// A charge of nothing.
    pub fn none() -> Self {
        Charge {
            permit: None,
            own: None,
        }
    }

    /// Adds `more` to this charge.
    pub fn merge(&mut self, mut more: Charge) {
        match (&mut self.permit, more.permit.take()) {
            (Some(held), Some(more)) => held.merge(more),
            (None, more) => self.permit = more,
            (Some(_), None) => {}
        }
        match (&mut self.own, more.own.take()) {
            (Some((pool, held)), Some((more_pool, more))) if Arc::ptr_eq(pool, &more_pool) => {
                *held += more;
            }
            (None, more) => self.own = more,
            // From another connection (never done): give it back now.
            (Some(_), Some((more_pool, more))) => {
                more_pool.fetch_add(more, Ordering::AcqRel);
            }
            (Some(_), None) => {}
        }
    }

    /// Bytes held (rounded up to a KiB).
    pub fn bytes(&self) -> usize {
        let shared = self.permit.as_ref().map_or(0, |p| p.num_permits());
        let own = self.own.as_ref().map_or(0, |(_, units)| *units as usize);
        (shared + own) * UNIT
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if let Some((pool, units)) = self.own.take() {
            pool.fetch_add(units, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::block_on;

    #[test]
    fn charges_wait_for_bytes_to_be_given_back() {
        block_on(async {
            let budget = MemoryBudget::new(10 * 1024);
            let a = budget.charge(6 * 1024).await;
            assert_eq!(budget.available(), 4 * 1024);
            let b = budget.charge(100).await;
            assert_eq!((b.bytes(), budget.available()), (1024, 3 * 1024));
            let waiting = budget.clone();
            let mut c = Box::pin(async move { waiting.charge(5 * 1024).await });
            assert!(
                futures_poll(&mut c).is_none(),
                "5 KiB are not free: it waits"
            );
            drop(a);
            let c = futures_poll(&mut c).expect("free once the first is given back");
            assert_eq!(c.bytes(), 5 * 1024);
            let mut all = budget.charge(0).await;
            assert_eq!(all.bytes(), 0);
            all.merge(b);
            assert_eq!(all.bytes(), 1024);
        });
    }

    #[test]
    fn a_charge_larger_than_the_budget_takes_all_of_it() {
        block_on(async {
            let budget = MemoryBudget::new(4096);
            let huge = budget.charge(1 << 30).await;
            assert_eq!((huge.bytes(), budget.available()), (4096, 0));
        });
    }

    #[test]
    fn a_connection_spends_its_own_allowance_before_the_shared_budget() {
        block_on(async {
            let budget = MemoryBudget::new(8 * 1024);
            let conn = budget.connection();
            let small = conn.charge(CONNECTION_ALLOWANCE - 1024).await;
            assert_eq!(budget.available(), 8 * 1024, "all from its own allowance");
            let over = conn.charge(3 * 1024).await;
            assert_eq!(
                (over.bytes(), budget.available()),
                (3 * 1024, 6 * 1024),
                "1 KiB of its own, 2 from the shared budget"
            );
            // Another connection's small request does not wait even though
            // the shared budget is spent by a large waiter.
            let hog = budget.charge(6 * 1024).await;
            let waiting = budget.clone();
            let mut big = Box::pin(async move { waiting.charge(4 * 1024).await });
            assert!(futures_poll(&mut big).is_none());
            let other = budget.connection();
            let mut polite = Box::pin(async move { other.charge(100).await });
            let polite = futures_poll(&mut polite).expect("served from its own allowance");
            assert_eq!(polite.bytes(), 1024);
            drop((small, over, hog));
            assert!(futures_poll(&mut big).is_some());
            let again = conn.charge(CONNECTION_ALLOWANCE).await;
            assert_eq!(again.bytes(), CONNECTION_ALLOWANCE, "given back on drop");
        });
    }

    /// Polls a future once.
    fn futures_poll<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match std::pin::Pin::new(f).poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }
}
