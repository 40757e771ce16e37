//! `herd_unique` over actor numbers (`$distinct_id_num`, `$group_N_num`): the distinct
//! count of `u32`s per group, with no strings to hash or intern.
//!
//! Numbers are dense per project (herd gives them in order of first arrival), so a set that
//! holds a fair share of the numbers below its largest is a bitmap; a sparse one is a small
//! hash table ([`NumberSet`]). Partial states are each group's numbers as a list, so the
//! answer does not depend on batch boundaries, partitioning or aggregation phases.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, ListArray, UInt32Array,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, UInt32Type};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::{Accumulator, EmitTo, GroupsAccumulator};
use hashbrown::HashTable;

/// The state type: a list of numbers.
pub(crate) fn list_of_numbers() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::UInt32, true)))
}

fn internal(message: impl Into<String>) -> DataFusionError {
    DataFusionError::Internal(format!("herd_unique: {}", message.into()))
}

/// The product's high half lands in the low bits (the table's bucket index) and its low
/// half in the high bits (the control byte): strided numbers spread too.
fn hash(n: u32) -> u64 {
    u64::from(n)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(32)
}

/// A set of numbers: a hash table while sparse, a bitmap once the bitmap is no larger.
#[derive(Debug, Default)]
pub(crate) struct NumberSet {
    small: HashTable<u32>,
    /// Non-empty once the set is a bitmap.
    bits: Vec<u64>,
    len: usize,
    max: u32,
}

/// A hash-table slot: the number and a control byte.
const SLOT_BYTES: usize = 5;

impl NumberSet {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn insert(&mut self, n: u32) {
        if !self.bits.is_empty() {
            let (w, b) = ((n >> 6) as usize, n & 63);
            if w >= self.bits.len() {
                self.bits.resize((w + 1).max(self.bits.len() * 2), 0);
            }
            let word = &mut self.bits[w];
            self.len += usize::from(*word & (1 << b) == 0);
            *word |= 1 << b;
            return;
        }
        let h = hash(n);
        if self.small.find(h, |&x| x == n).is_some() {
            return;
        }
        self.small.insert_unique(h, n, |&x| hash(x));
        self.len += 1;
        self.max = self.max.max(n);
        // The bitmap of numbers up to `max` is no larger than the table: switch.
        if self.len >= 64 && (self.max as usize / 8) <= self.small.capacity() * SLOT_BYTES {
            let mut bits = vec![0u64; (self.max as usize >> 6) + 1];
            for &x in self.small.iter() {
                bits[(x >> 6) as usize] |= 1 << (x & 63);
            }
            self.bits = bits;
            self.small = HashTable::new();
        }
    }

    /// Inserts every number of `values` (a row equal to the one before it costs one
    /// comparison; once the set is a bitmap, a tight loop).
    pub(crate) fn insert_all(&mut self, values: &[u32]) {
        let mut i = 0;
        let mut last = None;
        while self.bits.is_empty() {
            let Some(&n) = values.get(i) else {
                return;
            };
            if last != Some(n) {
                last = Some(n);
                self.insert(n);
            }
            i += 1;
        }
        let rest = &values[i..];
        let Some(&max) = rest.iter().max() else {
            return;
        };
        let words = (max as usize >> 6) + 1;
        if words > self.bits.len() {
            self.bits.resize(words.max(self.bits.len() * 2), 0);
        }
        let mut added = 0;
        for &n in rest {
            let word = &mut self.bits[(n >> 6) as usize];
            let bit = 1u64 << (n & 63);
            added += usize::from(*word & bit == 0);
            *word |= bit;
        }
        self.len += added;
    }

    #[cfg(test)]
    pub(crate) fn values(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.len);
        self.append_to(&mut out);
        out
    }

    /// Appends the set's numbers to `out`.
    pub(crate) fn append_to(&self, out: &mut Vec<u32>) {
        if self.bits.is_empty() {
            out.extend(self.small.iter().copied());
            return;
        }
        for (w, &word) in self.bits.iter().enumerate() {
            let mut rest = word;
            while rest != 0 {
                let b = rest.trailing_zeros();
                out.push(((w as u32) << 6) | b);
                rest &= rest - 1;
            }
        }
    }

    pub(crate) fn size(&self) -> usize {
        self.small.capacity() * SLOT_BYTES + self.bits.capacity() * 8
    }
}

fn numbers(array: &ArrayRef) -> Result<&UInt32Array> {
    array
        .as_primitive_opt::<UInt32Type>()
        .ok_or_else(|| internal("numbers are not UInt32"))
}

/// The lists of a state column.
fn state_lists(states: &[ArrayRef]) -> Result<&ListArray> {
    states
        .first()
        .ok_or_else(|| internal("one state column"))?
        .as_list_opt::<i32>()
        .ok_or_else(|| internal("state is not a list"))
}

fn to_lists<'a>(sets: impl Iterator<Item = &'a NumberSet>) -> Result<ListArray> {
    let mut values = Vec::new();
    let mut lengths = Vec::new();
    for set in sets {
        lengths.push(set.len());
        set.append_to(&mut values);
    }
    Ok(ListArray::try_new(
        Arc::new(Field::new("item", DataType::UInt32, true)),
        OffsetBuffer::from_lengths(lengths),
        Arc::new(UInt32Array::from(values)),
        None,
    )?)
}

/// Without grouping: one set.
#[derive(Debug, Default)]
pub(crate) struct NumberUnique {
    set: NumberSet,
}

impl NumberUnique {
    fn add(&mut self, array: &UInt32Array) {
        if array.null_count() == 0 {
            self.set.insert_all(array.values());
            return;
        }
        let mut last = None;
        for n in array.iter().flatten() {
            if last != Some(n) {
                last = Some(n);
                self.set.insert(n);
            }
        }
    }
}

impl Accumulator for NumberUnique {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let array = numbers(values.first().ok_or_else(|| internal("takes 1 argument"))?)?;
        self.add(array);
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Int64(Some(self.set.len() as i64)))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.set.size()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let list = to_lists(std::iter::once(&self.set))?;
        Ok(vec![ScalarValue::List(Arc::new(list))])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let lists = state_lists(states)?;
        self.add(numbers(lists.values())?);
        Ok(())
    }
}

/// Per group, its set of numbers.
#[derive(Debug, Default)]
pub(crate) struct NumberGroups {
    sets: Vec<NumberSet>,
    /// Bytes of all sets (kept as they change: `size` is asked for every batch).
    bytes: usize,
}

impl NumberGroups {
    fn resize(&mut self, total_num_groups: usize) {
        if self.sets.len() < total_num_groups {
            self.sets.resize_with(total_num_groups, Default::default);
        }
    }

    fn add(&mut self, g: usize, n: u32) {
        let set = &mut self.sets[g];
        let before = set.size();
        set.insert(n);
        self.bytes = self.bytes + set.size() - before;
    }

    fn take(&mut self, emit_to: EmitTo) -> Vec<NumberSet> {
        let taken = emit_to.take_needed(&mut self.sets);
        self.bytes -= taken.iter().map(NumberSet::size).sum::<usize>();
        taken
    }
}

impl GroupsAccumulator for NumberGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        let array = numbers(values.first().ok_or_else(|| internal("takes 1 argument"))?)?;
        if group_indices.len() != array.len() {
            return Err(internal("one group index per row"));
        }
        self.resize(total_num_groups);
        let keep = crate::unique::keep_row(opt_filter);
        let mut last = None;
        for (row, &g) in group_indices.iter().enumerate() {
            if array.is_null(row) || !keep(row) {
                continue;
            }
            let n = array.value(row);
            if last != Some((g, n)) {
                last = Some((g, n));
                self.add(g, n);
            }
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let sets = self.take(emit_to);
        let counts: Int64Array = sets.iter().map(|s| Some(s.len() as i64)).collect();
        Ok(Arc::new(counts))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let sets = self.take(emit_to);
        Ok(vec![Arc::new(to_lists(sets.iter())?)])
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        let lists = state_lists(values)?;
        if group_indices.len() != lists.len() {
            return Err(internal("one group index per state row"));
        }
        self.resize(total_num_groups);
        let items = numbers(lists.values())?;
        let offsets = lists.value_offsets();
        for (row, &g) in group_indices.iter().enumerate() {
            if lists.is_null(row) {
                continue;
            }
            for i in offsets[row] as usize..offsets[row + 1] as usize {
                if items.is_valid(i) {
                    self.add(g, items.value(i));
                }
            }
        }
        Ok(())
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let array = numbers(values.first().ok_or_else(|| internal("takes 1 argument"))?)?;
        Ok(vec![crate::unique::one_row_lists(array, opt_filter)?])
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self)
            + self.sets.capacity() * std::mem::size_of::<NumberSet>()
            + self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeSet, HashMap};

    #[test]
    fn a_set_turns_into_a_bitmap_and_keeps_every_number() {
        let mut s = NumberSet::default();
        for n in (0..5000u32).map(|i| i * 3 % 4001) {
            s.insert(n);
        }
        assert!(!s.bits.is_empty(), "dense numbers end in a bitmap");
        let want: BTreeSet<u32> = (0..5000u32).map(|i| i * 3 % 4001).collect();
        assert_eq!(s.len(), want.len());
        let got: BTreeSet<u32> = s.values().into_iter().collect();
        assert_eq!(got, want);
        // A number past the bitmap's end grows it.
        s.insert(1_000_000);
        s.insert(1_000_000);
        assert_eq!(s.len(), want.len() + 1);
    }

    #[test]
    fn inserting_a_slice_equals_inserting_one_by_one() {
        let values: Vec<u32> = (0..20_000u32)
            .map(|i| (i * 7919) % 9000 + (i % 3))
            .collect();
        for cut in [0, 10, 5000, 20_000] {
            let (mut one, mut all) = (NumberSet::default(), NumberSet::default());
            for &n in &values {
                one.insert(n);
            }
            all.insert_all(&values[..cut]);
            all.insert_all(&values[cut..]);
            all.insert_all(&[50_000, 50_000]);
            one.insert(50_000);
            assert_eq!(all.len(), one.len());
            let (mut a, mut b) = (all.values(), one.values());
            a.sort_unstable();
            b.sort_unstable();
            assert_eq!(a, b);
        }
    }

    #[test]
    fn rows_convert_to_one_number_states() {
        let acc = NumberGroups::default();
        let filter = BooleanArray::from(vec![true, true, false, true]);
        let state = acc
            .convert_to_state(&[column(&[Some(4), None, Some(5), Some(4)])], Some(&filter))
            .expect("state");
        let lists = state[0].as_list::<i32>();
        let lens: Vec<usize> = (0..lists.len()).map(|i| lists.value(i).len()).collect();
        assert_eq!(lens, vec![1, 0, 0, 1]);
        assert_eq!(lists.value_type(), DataType::UInt32);
    }

    #[test]
    fn sparse_numbers_stay_in_a_table() {
        let mut s = NumberSet::default();
        for n in [7u32, 4_000_000_000, 7, 12] {
            s.insert(n);
        }
        assert!(s.bits.is_empty());
        assert_eq!(s.len(), 3);
    }

    fn column(v: &[Option<u32>]) -> ArrayRef {
        Arc::new(UInt32Array::from(v.to_vec()))
    }

    proptest! {
        /// Rows split into batches over two partial accumulators, their states merged
        /// (in two pieces) by a final one: the counts of a set per group.
        #[test]
        fn matches_a_set_per_group(
            rows in prop::collection::vec((0usize..6, prop::option::weighted(0.95, 0u32..3000)), 0..3000),
            cut in 0usize..3000,
        ) {
            let mut want: HashMap<usize, BTreeSet<u32>> = HashMap::new();
            for (g, n) in &rows {
                let set = want.entry(*g).or_default();
                if let Some(n) = n {
                    set.insert(*n);
                }
            }
            let cut = cut.min(rows.len());
            let mut partials = [NumberGroups::default(), NumberGroups::default()];
            for (part, acc) in [&rows[..cut], &rows[cut..]].iter().zip(partials.iter_mut()) {
                for chunk in part.chunks(97) {
                    let groups: Vec<usize> = chunk.iter().map(|r| r.0).collect();
                    let values: Vec<Option<u32>> = chunk.iter().map(|r| r.1).collect();
                    acc.update_batch(&[column(&values)], &groups, None, 6).expect("accumulator");
                }
            }
            let mut fin = NumberGroups::default();
            for acc in &mut partials {
                acc.resize(6);
                let state = acc.state(EmitTo::All).expect("accumulator");
                fin.merge_batch(&state, &[0, 1, 2, 3, 4, 5], 6).expect("accumulator");
            }
            let counts = fin.evaluate(EmitTo::All).expect("accumulator");
            let counts = counts.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
            for g in 0..6 {
                let n = want.get(&g).map_or(0, BTreeSet::len);
                prop_assert_eq!(counts.value(g) as usize, n);
            }
            // Without grouping, the same rows in one set.
            let mut one = NumberUnique::default();
            let all: Vec<Option<u32>> = rows.iter().map(|r| r.1).collect();
            one.update_batch(&[column(&all[..cut])]).expect("accumulator");
            let mut other = NumberUnique::default();
            other.update_batch(&[column(&all[cut..])]).expect("accumulator");
            let ScalarValue::List(state) = other.state().expect("accumulator").remove(0) else {
                panic!("list state");
            };
            one.merge_batch(&[state as ArrayRef]).expect("accumulator");
            let distinct: BTreeSet<u32> = all.iter().flatten().copied().collect();
            prop_assert_eq!(one.evaluate().expect("accumulator"), ScalarValue::Int64(Some(distinct.len() as i64)));
        }
    }
}
