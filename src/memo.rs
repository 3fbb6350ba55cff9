//! A bounded memo keyed by bytes, for results that are a pure function of an input callers
//! send again and again (a wrapping key's PEM text, a client certificate's DER). Keyed by
//! the bytes themselves (std's randomly keyed SipHash, then a full comparison), which costs
//! well under a microsecond where an OpenSSL SHA-256 of them cost about three
//! (BENCHMARKS.md, "The daemon's own CPU per call"). At `capacity` entries it starts over,
//! and keys longer than `max_key` are not kept, so hostile callers cannot grow it past
//! `capacity` × `max_key`.

use std::collections::HashMap;
use std::sync::Mutex;

pub(crate) struct Memo<V> {
    capacity: usize,
    max_key: usize,
    map: Mutex<HashMap<Box<[u8]>, V>>,
}

impl<V: Clone> Memo<V> {
    pub(crate) fn new(capacity: usize, max_key: usize) -> Memo<V> {
        Memo {
            capacity,
            max_key,
            map: Mutex::default(),
        }
    }

    /// The value kept for `key`, if any.
    pub(crate) fn get(&self, key: &[u8]) -> Option<V> {
        self.lock().get(key).cloned()
    }

    /// Keeps `value` for `key` (unless `key` is longer than `max_key`).
    pub(crate) fn put(&self, key: &[u8], value: V) {
        if key.len() > self.max_key {
            return;
        }
        let mut map = self.lock();
        if map.len() >= self.capacity {
            map.clear();
        }
        map.insert(key.into(), value);
    }

    /// How many values are kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<[u8]>, V>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_by_bytes_starts_over_when_full_and_skips_long_keys() {
        let m = Memo::new(2, 4);
        m.put(b"a", 1);
        m.put(b"b", 2);
        assert_eq!(
            (m.get(b"a"), m.get(b"b"), m.get(b"c")),
            (Some(1), Some(2), None)
        );
        m.put(b"c", 3);
        assert_eq!(
            (m.get(b"a"), m.get(b"b"), m.get(b"c")),
            (None, None, Some(3))
        );
        m.put(b"toolong", 4);
        assert_eq!(m.get(b"toolong"), None);
    }
}
