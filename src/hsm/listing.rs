//! What the last listing of the token read, by object handle, so that a later page of a
//! listing (ListSourceKeys with a page token, src/service/keys.rs) reads only the objects
//! it has not seen. Never used to find a key for an export: that searches afresh
//! (src/hsm/keys.rs, `find`).
//!
//! Which objects a page lists is never stale: every page searches the token. What can be
//! stale is what was read of an object found again under the same handle, for at most
//! [`MAX_AGE`] after the first page read it (plus the length of one page): its attributes
//! changed in place (`C_SetAttributeValue`: a new label or id, `CKA_EXTRACTABLE` turned
//! off), or, on a token that reuses handles, another object created under the handle of
//! one deleted between two pages. A first page (no page token) always reads everything.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// How long what a listing read is reused; a later page after that reads every object
/// again.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(60);

/// Most objects kept (about 200 bytes each): a token with more is read in full for every
/// page.
pub(crate) const MAX_OBJECTS: usize = 50_000;

/// What one listing read: each object by raw handle, `None` for an object that is not a
/// key the listing shows.
pub(crate) struct Listing<T> {
    read_at: Instant,
    objects: HashMap<u64, Option<T>>,
}

impl<T: Clone> Listing<T> {
    /// A listing of everything read at `at`; `None` past [`MAX_OBJECTS`].
    pub(crate) fn new(
        read: impl IntoIterator<Item = (u64, Option<T>)>,
        at: Instant,
    ) -> Option<Self> {
        let objects: HashMap<_, _> = read.into_iter().collect();
        (objects.len() <= MAX_OBJECTS).then_some(Listing {
            read_at: at,
            objects,
        })
    }

    /// When the listing read everything.
    pub(crate) fn read_at(&self) -> Instant {
        self.read_at
    }

    /// For the handles a search found: the keys this listing read among them, and the
    /// positions in `found` of the objects it never read. `None` once it is older than
    /// [`MAX_AGE`].
    pub(crate) fn recall(&self, found: &[u64], now: Instant) -> Option<(Vec<T>, Vec<usize>)> {
        if now.saturating_duration_since(self.read_at) > MAX_AGE {
            return None;
        }
        let mut known = Vec::new();
        let mut unread = Vec::new();
        for (i, h) in found.iter().enumerate() {
            match self.objects.get(h) {
                Some(Some(key)) => known.push(key.clone()),
                Some(None) => {}
                None => unread.push(i),
            }
        }
        Some((known, unread))
    }

    /// Forgets the objects a later search no longer found and adds what was read of the new
    /// ones. `false` when that would pass [`MAX_OBJECTS`] (the listing is then of no use).
    pub(crate) fn update(
        &mut self,
        found: &[u64],
        read: impl IntoIterator<Item = (u64, Option<T>)>,
    ) -> bool {
        if found.len() > MAX_OBJECTS {
            return false;
        }
        let present: HashSet<u64> = found.iter().copied().collect();
        self.objects.retain(|h, _| present.contains(h));
        self.objects.extend(read);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(keys: &[(u64, Option<&str>)]) -> Listing<String> {
        Listing::new(
            keys.iter().map(|(h, k)| (*h, k.map(str::to_string))),
            Instant::now(),
        )
        .unwrap()
    }

    #[test]
    fn a_later_page_reads_only_new_objects_and_drops_removed_ones() {
        let mut l = listing(&[(1, Some("a")), (2, Some("b")), (3, None), (4, Some("d"))]);
        // 2 removed, 5 and 6 new (6 not a key).
        let found = [4, 1, 3, 5, 6];
        let (known, unread) = l.recall(&found, Instant::now()).unwrap();
        assert_eq!(known, ["d", "a"]);
        assert_eq!(unread, [3, 4]);
        assert!(l.update(&found, [(5, Some("e".into())), (6, None)]));
        let (known, unread) = l.recall(&found, Instant::now()).unwrap();
        assert_eq!(known, ["d", "a", "e"]);
        assert!(unread.is_empty());
        // 2 is gone from the listing: if a handle 2 turns up again, it is read.
        assert_eq!(l.recall(&[2], Instant::now()).unwrap().1, [0]);
    }

    #[test]
    fn an_old_listing_is_not_reused() {
        let l = listing(&[(1, Some("a"))]);
        let at = l.read_at();
        assert!(l.recall(&[1], at + MAX_AGE).is_some());
        assert!(
            l.recall(&[1], at + MAX_AGE + Duration::from_millis(1))
                .is_none()
        );
    }

    #[test]
    fn memory_is_bounded() {
        let many = (0..=MAX_OBJECTS as u64).map(|h| (h, None::<String>));
        assert!(Listing::new(many, Instant::now()).is_none());
        let mut l = listing(&[(1, Some("a"))]);
        let found: Vec<u64> = (0..=MAX_OBJECTS as u64).collect();
        assert!(!l.update(&found, []));
    }
}
