//! Numbering actor strings: the hash tables behind the funnel's actor buckets
//! ([`crate::funnel`]).
//!
//! Actors are `distinct_id`s or group keys, read as `Utf8View`. A string of at most 12 bytes
//! is stored inline in its 16-byte view, so the view (bytes past the length masked) is the
//! key: no string hashing or comparison. Longer strings are keyed by the string. Callers
//! shard actors by the high bits of the same hash ([`shard_of`]), so one actor lives in one
//! shard whatever partition saw it.

use datafusion::arrow::array::{Array, StringViewArray};
use hashbrown::HashTable;

/// No id yet (in [`ActorIds`]'s number index).
const NO_ID: u32 = u32::MAX;

/// The direct number index grows while it has at most this many slots per actor seen (4
/// bytes each, against ~10 in the sparse table)...
const DIRECT_SLOTS_PER_ACTOR: usize = 4;
/// ...or this many slots in all.
const DIRECT_SLOTS_MIN: usize = 4096;

fn number_hash(slot: u32) -> u64 {
    u64::from(slot)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(32)
}

/// Actor keys of one shard, numbered densely from 0 in order of arrival.
#[derive(Default)]
pub(crate) struct ActorIds {
    /// Strings of at most 12 bytes: their view (length + bytes, zero padded) is the key.
    short: HashTable<Packed>,
    /// Longer strings.
    long: HashTable<(Box<str>, u32)>,
    /// Whether a null actor was seen, and its id.
    null: Option<u32>,
    /// Actor numbers (`$distinct_id_num`, `$group_N_num`), for funnels over numbered
    /// events: `by_number[slot]` is the id of the number in `slot` ([`ActorIds::number_id`]),
    /// [`NO_ID`] if not seen. A direct index, no hashing; it grows only while it stays
    /// within a few slots per actor seen, so a funnel over few of a project's actors does not
    /// pay for all of them: slots past it go to `sparse_numbers`.
    by_number: Vec<u32>,
    sparse_numbers: HashTable<(u32, u32)>,
    /// Actors numbered so far.
    pub(crate) count: u32,
}

/// A short key and its id in 20 bytes (a `(u128, u32)` entry takes 32, u128 being 16-byte
/// aligned): a query by user at 100M events holds millions of them.
#[derive(Clone, Copy)]
struct Packed {
    key: [u32; 4],
    id: u32,
}

fn pack(v: u128) -> [u32; 4] {
    [
        v as u32,
        (v >> 32) as u32,
        (v >> 64) as u32,
        (v >> 96) as u32,
    ]
}

fn unpack(k: [u32; 4]) -> u128 {
    u128::from(k[0]) | u128::from(k[1]) << 32 | u128::from(k[2]) << 64 | u128::from(k[3]) << 96
}

/// The key of a null actor in [`ActorIds::short`] would need an impossible view; it has a
/// slot of its own instead.
#[derive(Clone)]
pub(crate) enum Key<'a> {
    Short(u128),
    Long(&'a str),
    Null,
}

impl Key<'_> {
    pub(crate) fn same(&self, other: &Key<'_>) -> bool {
        match (self, other) {
            (Key::Short(a), Key::Short(b)) => a == b,
            (Key::Long(a), Key::Long(b)) => a == b,
            (Key::Null, Key::Null) => true,
            _ => false,
        }
    }
}

fn hasher() -> foldhash::fast::FixedState {
    foldhash::fast::FixedState::with_seed(0x6865_7264)
}

pub(crate) fn hash_key(key: &Key<'_>) -> u64 {
    use std::hash::BuildHasher;
    match key {
        Key::Short(v) => hasher().hash_one(v),
        Key::Long(s) => hasher().hash_one(s),
        Key::Null => 0,
    }
}

impl ActorIds {
    fn next(&mut self) -> u32 {
        let id = self.count;
        self.count += 1;
        id
    }

    pub(crate) fn id(&mut self, key: Key<'_>, hash: u64) -> u32 {
        match key {
            Key::Short(v) => {
                let key = pack(v);
                if let Some(e) = self.short.find(hash, |e| e.key == key) {
                    return e.id;
                }
                let id = self.next();
                self.short.insert_unique(hash, Packed { key, id }, |e| {
                    hash_key(&Key::Short(unpack(e.key)))
                });
                id
            }
            Key::Long(s) => {
                if let Some((_, id)) = self.long.find(hash, |(k, _)| k.as_ref() == s) {
                    return *id;
                }
                let id = self.next();
                self.long
                    .insert_unique(hash, (s.into(), id), |(k, _)| hash_key(&Key::Long(k)));
                id
            }
            Key::Null => match self.null {
                Some(id) => id,
                None => {
                    let id = self.next();
                    self.null = Some(id);
                    id
                }
            },
        }
    }

    /// The id of the actor number in `slot` (callers shard numbers as `n % shards` and pass
    /// `n / shards`, so slots are dense per shard).
    pub(crate) fn number_id(&mut self, slot: u32) -> u32 {
        let index = slot as usize;
        if let Some(&id) = self.by_number.get(index)
            && id != NO_ID
        {
            return id;
        }
        if index >= self.by_number.len() {
            let len = (index + 1).max(self.by_number.len() * 2);
            if len > DIRECT_SLOTS_PER_ACTOR * (self.count as usize) + DIRECT_SLOTS_MIN {
                return self.sparse_number_id(slot);
            }
            self.by_number.resize(len, NO_ID);
            // Numbers seen while their slots were past the index move into it.
            if !self.sparse_numbers.is_empty() {
                let by_number = &mut self.by_number;
                self.sparse_numbers
                    .retain(|(s, id)| match by_number.get_mut(*s as usize) {
                        Some(e) => {
                            *e = *id;
                            false
                        }
                        None => true,
                    });
            }
            if self.by_number[index] != NO_ID {
                return self.by_number[index];
            }
        }
        self.by_number[index] = self.next();
        self.by_number[index]
    }

    fn sparse_number_id(&mut self, slot: u32) -> u32 {
        let hash = number_hash(slot);
        if let Some((_, id)) = self.sparse_numbers.find(hash, |(s, _)| *s == slot) {
            return *id;
        }
        let id = self.next();
        self.sparse_numbers
            .insert_unique(hash, (slot, id), |(s, _)| number_hash(*s));
        id
    }
}

/// The key of a string view: the view itself for inline strings (bytes past the length
/// masked), the string for longer ones.
pub(crate) fn key_of<'a>(actors: &'a StringViewArray, i: usize) -> Key<'a> {
    if actors.is_null(i) {
        return Key::Null;
    }
    match short_key(actors.views()[i]) {
        Some(k) => Key::Short(k),
        None => Key::Long(actors.value(i)),
    }
}

/// The key of an inline view (a string of at most 12 bytes): its length and bytes, anything
/// past the length zeroed; `None` for a view pointing into a data buffer.
pub(crate) fn short_key(view: u128) -> Option<u128> {
    let len = view as u32;
    (len <= 12).then(|| {
        let bits = 32 + 8 * len;
        if bits >= 128 {
            view
        } else {
            view & ((1u128 << bits) - 1)
        }
    })
}

pub(crate) fn shard_of(hash: u64, shards: usize) -> usize {
    // The high bits pick the shard; the tables use the low ones.
    ((hash >> 32) % shards as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::StringViewArray;

    fn ids_of(ids: &mut ActorIds, actors: &StringViewArray) -> Vec<u32> {
        (0..actors.len())
            .map(|i| {
                let key = key_of(actors, i);
                let hash = hash_key(&key);
                ids.id(key, hash)
            })
            .collect()
    }

    #[test]
    fn short_long_and_null_actors_are_numbered_once_each_and_merge_by_string() {
        let long = "an actor name longer than twelve bytes";
        let a = StringViewArray::from(vec![
            Some("u1"),
            Some(long),
            None,
            Some("u1"),
            Some(""),
            Some("twelve bytes"),
            Some(long),
            None,
        ]);
        let mut left = ActorIds::default();
        assert_eq!(ids_of(&mut left, &a), vec![0, 1, 2, 0, 3, 4, 1, 2]);
        let b = StringViewArray::from(vec![Some("twelve bytes"), Some("u2"), Some(long), None]);
        let mut right = ActorIds::default();
        assert_eq!(ids_of(&mut right, &b), vec![0, 1, 2, 3]);
    }

    #[test]
    fn numbers_get_one_id_each_directly_or_sparse() {
        let mut left = ActorIds::default();
        // Small slots go to the direct index; a far one (few actors seen) to the table.
        let slots = [3u32, 7, 3, 0, 5_000_000, 7, 5_000_000, 9];
        let ids: Vec<u32> = slots.iter().map(|&s| left.number_id(s)).collect();
        assert_eq!(ids, vec![0, 1, 0, 2, 3, 1, 3, 4]);
        assert!(
            left.by_number.len() < 10_000,
            "the far slot is not indexed directly"
        );
        assert_eq!(left.sparse_numbers.len(), 1);
        let mut right = ActorIds::default();
        let ids: Vec<u32> = [9u32, 5_000_000, 11]
            .iter()
            .map(|&s| right.number_id(s))
            .collect();
        assert_eq!(ids, vec![0, 1, 2]);
        // Numbers first seen past the index keep their ids when it grows over them.
        let mut ids = ActorIds::default();
        let far: Vec<u32> = (0..100).map(|i| 100_000 + i * 7).collect();
        let first: Vec<u32> = far.iter().map(|&s| ids.number_id(s)).collect();
        assert!(!ids.sparse_numbers.is_empty());
        for s in 0..40_000 {
            ids.number_id(s);
        }
        ids.number_id(110_000);
        assert!(
            ids.by_number.len() > 110_000,
            "the index grew over the far slots"
        );
        assert!(ids.sparse_numbers.is_empty());
        let again: Vec<u32> = far.iter().map(|&s| ids.number_id(s)).collect();
        assert_eq!(again, first);
        assert_eq!(ids.count, 40_101);
    }

    #[test]
    fn packed_keys_round_trip() {
        for v in [
            0u128,
            1,
            u128::MAX,
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
        ] {
            assert_eq!(unpack(pack(v)), v);
        }
        assert_eq!(std::mem::size_of::<Packed>(), 20);
    }

    #[test]
    fn inline_views_are_keyed_by_their_bytes_only() {
        // The same string from a view with garbage past its length (as a slice of a longer
        // inline buffer could carry) gets the same key; 12-byte strings use the whole view;
        // longer strings have no short key.
        let clean = StringViewArray::from(vec!["abc", "twelve bytes", "thirteen byte"]);
        let k = short_key(clean.views()[0]).expect("inline");
        assert_eq!(short_key(clean.views()[0] | (0xFFu128 << 120)), Some(k));
        assert_ne!(short_key(clean.views()[0] ^ (0x01u128 << 40)), Some(k));
        assert_eq!(short_key(clean.views()[1]), Some(clean.views()[1]));
        assert_eq!(short_key(clean.views()[2]), None);
        assert!(matches!(key_of(&clean, 0), Key::Short(x) if x == k));
    }
}
