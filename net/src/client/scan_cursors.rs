//! SCAN cursors of one Redis connection. A Redis cursor is a 64-bit number
//! and this store's scan resumes at a key, so a connection remembers, for
//! each cursor it handed out, the key it stands for. The number itself is
//! the key's first eight bytes, so a cursor this connection never handed
//! out (a scan resumed after a reconnection, or on another node) still
//! resumes at about the right place: at the first key with that prefix
//! (keys may then be returned again, never skipped).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;

/// Cursors remembered per connection (the oldest are forgotten first).
const KEPT: usize = 1024;

/// The cursors one connection handed out.
#[derive(Debug, Default)]
pub struct ScanCursors {
    inner: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    keys: HashMap<u64, Bytes>,
    order: VecDeque<u64>,
}

impl ScanCursors {
    /// The key a scan at `cursor` starts from (empty: the start). A cursor
    /// is used up by resuming it: the page's answer hands out the next one.
    pub fn resume(&self, cursor: u64) -> Bytes {
        if cursor == 0 {
            return Bytes::new();
        }
        let mut kept = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match kept.keys.remove(&cursor) {
            Some(key) => key,
            None => prefix_of(cursor),
        }
    }

    /// The cursor that resumes a scan at `next` (never 0, which means done).
    /// Two scans in progress on one connection whose next keys share their
    /// first eight bytes share a cursor; it resumes at the smaller key, so
    /// neither scan skips a key (one may see some twice).
    pub fn mint(&self, next: Bytes) -> u64 {
        let cursor = prefix_cursor(&next).max(1);
        let mut kept = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(key) = kept.keys.get_mut(&cursor) {
            if next < *key {
                *key = next;
            }
            return cursor;
        }
        while kept.keys.len() >= KEPT {
            let Some(oldest) = kept.order.pop_front() else {
                break;
            };
            kept.keys.remove(&oldest);
        }
        kept.keys.insert(cursor, next);
        kept.order.push_back(cursor);
        debug_assert!(kept.keys.len() <= KEPT, "cursors kept are bounded");
        cursor
    }
}

/// A key's first eight bytes, zero-padded, as a number.
fn prefix_cursor(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    for (slot, byte) in b.iter_mut().zip(key) {
        *slot = *byte;
    }
    u64::from_be_bytes(b)
}

/// The smallest key a cursor's number can stand for: its eight bytes,
/// trailing zero bytes left off.
fn prefix_of(cursor: u64) -> Bytes {
    let mut key = cursor.to_be_bytes().to_vec();
    while key.last() == Some(&0) {
        key.pop();
    }
    Bytes::from(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn a_cursor_handed_out_resumes_at_its_exact_key() {
        let c = ScanCursors::default();
        assert_eq!(c.resume(0), Bytes::new());
        // One scan through keys sharing a long prefix: every page's cursor
        // has the same number, and each resumes where its page ended.
        for key in ["user:000123", "user:000456", "user:000789"] {
            let cursor = c.mint(b(key));
            assert_eq!(cursor, prefix_cursor(b"user:000"));
            assert_eq!(c.resume(cursor), b(key));
        }
        // Two scans in progress at once with one number: the smaller key,
        // so neither skips anything.
        let first = c.mint(b("user:000456"));
        assert_eq!(c.mint(b("user:000123")), first);
        assert_eq!(c.resume(first), b("user:000123"));
        // A cursor used up resumes at its prefix (keys again, none skipped).
        assert_eq!(c.resume(first), b("user:000"));
    }

    #[test]
    fn an_unknown_cursor_resumes_at_its_prefix_and_none_is_zero() {
        let c = ScanCursors::default();
        let cursor = prefix_cursor(b"greeting");
        assert_eq!(c.resume(cursor), b("greeting"));
        assert_eq!(c.resume(prefix_cursor(b"ab")), b("ab"));
        assert_ne!(c.mint(Bytes::from_static(b"\0\0")), 0, "0 means done");
    }

    #[test]
    fn only_the_latest_cursors_are_kept() {
        let c = ScanCursors::default();
        for i in 0..(KEPT as u64 + 10) {
            c.mint(Bytes::copy_from_slice(&(i + 1).to_be_bytes()));
        }
        let kept = c.inner.lock().unwrap_or_else(|e| e.into_inner());
        assert_eq!(kept.keys.len(), KEPT);
        assert!(!kept.keys.contains_key(&1), "the oldest went first");
        assert!(kept.keys.contains_key(&(KEPT as u64 + 10)));
    }
}
