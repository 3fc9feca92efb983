//! SCAN cursors of one Redis connection. A Redis cursor is a 64-bit number
//! and this store's scan resumes at a key, so a connection remembers, for
//! each cursor it handed out, the key it stands for.
//!
//! A cursor's high seven bytes are the first seven bytes of its key, so a
//! cursor this connection never handed out (a scan resumed after a
//! reconnection, or on another node) still resumes at about the right
//! place: at the first key with that prefix (keys may then be returned
//! again, never skipped). Its low byte tells apart the cursors handed out
//! for keys with the same prefix, so two scans in progress on one
//! connection never share a cursor: resuming one cannot move the other.

use std::collections::{BTreeMap, HashMap};
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
    /// Cursor -> (when it was minted, the key it resumes at).
    keys: HashMap<u64, (u64, Bytes)>,
    /// When minted -> cursor, for the cursors in `keys`: oldest first.
    by_age: BTreeMap<u64, u64>,
    minted: u64,
}

impl Kept {
    fn forget(&mut self, cursor: u64) -> Option<Bytes> {
        let (age, key) = self.keys.remove(&cursor)?;
        self.by_age.remove(&age);
        Some(key)
    }

    fn forget_oldest(&mut self) {
        if let Some((_, cursor)) = self.by_age.pop_first() {
            self.keys.remove(&cursor);
        }
    }
}

impl ScanCursors {
    /// The key a scan at `cursor` starts from (empty: the start). A cursor
    /// is used up by resuming it: the page's answer hands out the next one.
    pub fn resume(&self, cursor: u64) -> Bytes {
        if cursor == 0 {
            return Bytes::new();
        }
        let mut kept = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        kept.forget(cursor).unwrap_or_else(|| prefix_of(cursor))
    }

    /// A cursor that resumes a scan at `next` (never 0, which means done),
    /// used by no other scan in progress on this connection. When all 255
    /// cursors of `next`'s prefix are in use, the oldest of them is
    /// forgotten: its scan resumes at the prefix (keys again, none skipped).
    pub fn mint(&self, next: Bytes) -> u64 {
        let family = prefix_cursor(&next);
        let mut kept = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let free = (1..=u8::MAX)
            .map(|low| family | u64::from(low))
            .find(|c| !kept.keys.contains_key(c));
        let cursor = match free {
            Some(c) => c,
            None => {
                let oldest = (1..=u8::MAX)
                    .map(|low| family | u64::from(low))
                    .min_by_key(|c| kept.keys.get(c).map_or(0, |(age, _)| *age))
                    .unwrap_or(family | 1);
                kept.forget(oldest);
                oldest
            }
        };
        while kept.keys.len() >= KEPT {
            kept.forget_oldest();
        }
        let age = kept.minted;
        kept.minted += 1;
        kept.keys.insert(cursor, (age, next));
        kept.by_age.insert(age, cursor);
        debug_assert!(kept.keys.len() <= KEPT, "cursors kept are bounded");
        debug_assert_eq!(kept.keys.len(), kept.by_age.len(), "one age per cursor");
        cursor
    }
}

/// A key's first seven bytes, zero-padded, as a cursor's high seven bytes
/// (its low byte zero).
fn prefix_cursor(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    for (slot, byte) in b.iter_mut().take(7).zip(key) {
        *slot = *byte;
    }
    u64::from_be_bytes(b)
}

/// The smallest key a cursor's number can stand for: its high seven bytes,
/// trailing zero bytes left off.
fn prefix_of(cursor: u64) -> Bytes {
    let mut key = cursor.to_be_bytes().to_vec();
    key.truncate(7);
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
        // One scan through keys sharing a long prefix: each page's cursor
        // resumes where the page ended.
        for key in ["user:000123", "user:000456", "user:000789"] {
            let cursor = c.mint(b(key));
            assert_eq!(cursor >> 8, prefix_cursor(b"user:00") >> 8);
            assert_eq!(c.resume(cursor), b(key));
        }
        // A cursor used up resumes at its prefix (keys again, none skipped).
        let cursor = c.mint(b("user:000456"));
        assert_eq!(c.resume(cursor), b("user:000456"));
        assert_eq!(c.resume(cursor), b("user:00"));
    }

    #[test]
    fn two_scans_on_one_connection_never_skip_a_key_of_each_other() {
        // Both scans stand at keys with the same prefix; resuming one and
        // handing out its next cursor must not move the other.
        let c = ScanCursors::default();
        let a = c.mint(b("user:000010"));
        let other = c.mint(b("user:000010"));
        assert_ne!(a, other, "each scan has its own cursor");
        assert_eq!(c.resume(a), b("user:000010"));
        let a_next = c.mint(b("user:000020"));
        assert_eq!(
            c.resume(other),
            b("user:000010"),
            "the other scan is where it was"
        );
        assert_eq!(c.resume(a_next), b("user:000020"));
    }

    #[test]
    fn an_unknown_cursor_resumes_at_its_prefix_and_none_is_zero() {
        let c = ScanCursors::default();
        let cursor = prefix_cursor(b"greeting") | 7;
        assert_eq!(c.resume(cursor), b("greetin"));
        assert_eq!(c.resume(prefix_cursor(b"ab")), b("ab"));
        assert_ne!(c.mint(Bytes::from_static(b"\0\0")), 0, "0 means done");
    }

    #[test]
    fn a_prefix_with_every_cursor_in_use_forgets_its_oldest() {
        let c = ScanCursors::default();
        let cursors: Vec<u64> = (0..255)
            .map(|i| c.mint(Bytes::from(format!("same-p-{i:03}"))))
            .collect();
        let distinct: std::collections::HashSet<_> = cursors.iter().collect();
        assert_eq!(distinct.len(), 255);
        let newest = c.mint(b("same-p-zzz"));
        assert_eq!(newest, cursors[0], "the oldest cursor's number is reused");
        assert_eq!(c.resume(newest), b("same-p-zzz"));
        assert_eq!(c.resume(cursors[1]), b("same-p-001"), "the others are kept");
    }

    #[test]
    fn only_the_latest_cursors_are_kept_however_many_are_used() {
        let c = ScanCursors::default();
        let minted: Vec<u64> = (0..(KEPT as u64 + 10))
            .map(|i| c.mint(Bytes::copy_from_slice(&((i + 1) << 8).to_be_bytes())))
            .collect();
        {
            let kept = c.inner.lock().unwrap_or_else(|e| e.into_inner());
            assert_eq!(kept.keys.len(), KEPT);
            assert!(!kept.keys.contains_key(&minted[0]), "the oldest went first");
            assert!(kept.keys.contains_key(&minted[KEPT + 9]));
        }
        // A long scan mints and resumes a cursor per page: nothing piles up.
        for i in 0..10_000u64 {
            let cursor = c.mint(Bytes::copy_from_slice(&i.to_be_bytes()));
            c.resume(cursor);
        }
        let kept = c.inner.lock().unwrap_or_else(|e| e.into_inner());
        assert!(kept.keys.len() <= KEPT);
        assert_eq!(kept.by_age.len(), kept.keys.len());
    }
}
