//! `herd_unique(actor)`: the exact number of distinct non-null actor strings, as a DataFusion
//! aggregate (what `count(DISTINCT actor)` answers, planned without the rewrite to a
//! two-column GROUP BY that DataFusion applies to a distinct count).
//!
//! Each accumulator interns actor strings once into dense `u32` ids ([`Interner`]); a group
//! is then a set of ids. Strings read from Parquet arrive as `Utf8View`, where a value of up
//! to 12 bytes is the 16-byte view itself: those are interned by the view (no byte hashing),
//! longer ones by their bytes. A row equal to the row before it (event files are sorted by
//! event, first group type and person, so runs are long) costs one comparison. Partial
//! states are each group's actors as a list of strings, so the answer does not depend on
//! batch boundaries, partitioning or the number of aggregation phases.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, ListArray, StringViewArray,
    StringViewBuilder,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, Expr, GroupsAccumulator, Signature,
    Volatility,
};
use hashbrown::HashTable;

use crate::actors::short_key;

/// The aggregate: distinct non-null values of one string argument, as `Int64`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct UniqueUdaf {
    signature: Signature,
}

impl UniqueUdaf {
    /// `herd_unique(arg)`.
    pub fn expr(arg: Expr) -> Expr {
        Self::udaf().call(vec![arg])
    }

    /// The aggregate.
    pub(crate) fn udaf() -> AggregateUDF {
        AggregateUDF::new_from_impl(Self {
            // Any string type (values that are not views are cast to views), or actor
            // numbers (`crate::number_set`).
            signature: Signature::uniform(
                1,
                vec![
                    DataType::Utf8View,
                    DataType::Utf8,
                    DataType::LargeUtf8,
                    DataType::UInt32,
                ],
                Volatility::Immutable,
            ),
        })
    }
}

fn list_of_views() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8View, true)))
}

impl AggregateUDFImpl for UniqueUdaf {
    fn name(&self) -> &str {
        "herd_unique"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }

    fn is_nullable(&self) -> bool {
        false
    }

    fn default_value(&self, _data_type: &DataType) -> Result<ScalarValue> {
        Ok(ScalarValue::Int64(Some(0)))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let state = match args.input_fields.first().map(|f| f.data_type()) {
            Some(DataType::UInt32) => crate::number_set::list_of_numbers(),
            _ => list_of_views(),
        };
        Ok(vec![Arc::new(Field::new(
            format!("{}[actors]", args.name),
            state,
            true,
        ))])
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        if numbered(&args) {
            return Ok(Box::new(crate::number_set::NumberUnique::default()));
        }
        Ok(Box::new(UniqueAccumulator::default()))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        if numbered(&args) {
            return Ok(Box::new(crate::number_set::NumberGroups::default()));
        }
        Ok(Box::new(UniqueGroups::default()))
    }
}

/// Whether the argument is actor numbers rather than strings.
fn numbered(args: &AccumulatorArgs) -> bool {
    args.expr_fields
        .first()
        .is_some_and(|f| f.data_type() == &DataType::UInt32)
}

fn internal(message: impl Into<String>) -> DataFusionError {
    DataFusionError::Internal(format!("herd_unique: {}", message.into()))
}

/// `array` as string views (a cast unless it is one already).
fn views(array: &ArrayRef) -> Result<StringViewArray> {
    match array.data_type() {
        DataType::Utf8View => Ok(array.as_string_view().clone()),
        _ => {
            let cast = datafusion::arrow::compute::cast(array, &DataType::Utf8View)?;
            Ok(cast.as_string_view().clone())
        }
    }
}

/// Strings interned into dense ids `0..len`, in first-seen order.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    /// Ids of strings of at most 12 bytes, by their (masked) view.
    inline: InlineTable,
    /// Ids of longer strings, hashed by their bytes.
    long: HashTable<u32>,
    /// The bytes of every interned string, and each id's span in them.
    bytes: Vec<u8>,
    spans: Vec<(usize, u32)>,
    hasher: foldhash::fast::FixedState,
}

/// A row without an id (null, or filtered out).
pub(crate) const NO_ID: u32 = u32::MAX;
/// Lookups whose slots are touched together before they are probed: their cache lines
/// (64 bytes each) stay well inside the L1/L2 caches between the two passes.
const TOUCH_CHUNK: usize = 256;

/// One slot of [`InlineTable`]: a key and its id ([`NO_ID`] when empty).
#[derive(Debug, Clone, Copy)]
struct Slot {
    lo: u64,
    hi: u64,
    id: u32,
}

const EMPTY: Slot = Slot {
    lo: 0,
    hi: 0,
    id: NO_ID,
};

/// Open addressing with linear probing over one flat array of 24-byte slots. A table of a
/// few hundred thousand actors outgrows the L2 cache and each lookup would wait on memory;
/// the flat layout lets a batch of lookups first load their home slots (independent loads
/// that the CPU overlaps) and then probe slots that are already cached.
#[derive(Debug, Default)]
struct InlineTable {
    slots: Vec<Slot>,
    len: usize,
}

impl InlineTable {
    fn home(&self, hash: u64) -> usize {
        // `slots.len()` is a power of two (or zero).
        hash as usize & self.slots.len().wrapping_sub(1)
    }

    /// Loads the home slot of `hash` (a cache warm-up; the value is only folded).
    fn touch(&self, hash: u64) -> u64 {
        self.slots.get(self.home(hash)).map_or(0, |s| s.lo)
    }

    fn get_or_insert(
        &mut self,
        key: u128,
        hash: u64,
        hasher: &foldhash::fast::FixedState,
        new_id: impl FnOnce() -> Result<u32>,
    ) -> Result<u32> {
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow(hasher);
        }
        let (lo, hi) = (key as u64, (key >> 64) as u64);
        let mask = self.slots.len() - 1;
        let mut i = self.home(hash);
        loop {
            let s = self.slots[i];
            if s.id == NO_ID {
                let id = new_id()?;
                self.slots[i] = Slot { lo, hi, id };
                self.len += 1;
                return Ok(id);
            }
            if s.lo == lo && s.hi == hi {
                return Ok(s.id);
            }
            i = (i + 1) & mask;
        }
    }

    fn grow(&mut self, hasher: &foldhash::fast::FixedState) {
        use std::hash::BuildHasher;
        let cap = (self.slots.len() * 2).max(1024);
        let old = std::mem::replace(&mut self.slots, vec![EMPTY; cap]);
        let mask = cap - 1;
        for s in old.into_iter().filter(|s| s.id != NO_ID) {
            let key = u128::from(s.lo) | (u128::from(s.hi) << 64);
            let mut i = hasher.hash_one(key) as usize & mask;
            while self.slots[i].id != NO_ID {
                i = (i + 1) & mask;
            }
            self.slots[i] = s;
        }
    }

    fn size(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot>()
    }
}

/// A value to look up: its row and, for a short value, its key and hash.
#[derive(Debug, Clone, Copy)]
struct Lookup {
    row: usize,
    inline: Option<(u128, u64)>,
}

impl Interner {
    /// Number of interned strings.
    pub(crate) fn len(&self) -> usize {
        self.spans.len()
    }

    /// The string of `id`.
    pub(crate) fn get(&self, id: u32) -> &[u8] {
        let (start, len) = self.spans[id as usize];
        &self.bytes[start..start + len as usize]
    }

    fn push(bytes: &mut Vec<u8>, spans: &mut Vec<(usize, u32)>, value: &[u8]) -> Result<u32> {
        let id = u32::try_from(spans.len())
            .ok()
            .filter(|id| *id != NO_ID)
            .ok_or_else(|| internal("over 2^32 - 1 actors"))?;
        let len = u32::try_from(value.len()).map_err(|_| internal("actor over 4 GiB"))?;
        spans.push((bytes.len(), len));
        bytes.extend_from_slice(value);
        Ok(id)
    }

    /// The id of `value`, a string longer than a view holds.
    fn intern_long(&mut self, value: &[u8]) -> Result<u32> {
        use std::hash::BuildHasher;
        let hash = self.hasher.hash_one(value);
        let (bytes, spans) = (&self.bytes, &self.spans);
        let same = |id: &u32| {
            let (start, len) = spans[*id as usize];
            &bytes[start..start + len as usize] == value
        };
        if let Some(id) = self.long.find(hash, same) {
            return Ok(*id);
        }
        let id = Self::push(&mut self.bytes, &mut self.spans, value)?;
        let (bytes, spans, hasher) = (&self.bytes, &self.spans, &self.hasher);
        self.long.insert_unique(hash, id, |id| {
            let (start, len) = spans[*id as usize];
            hasher.hash_one(&bytes[start..start + len as usize])
        });
        Ok(id)
    }

    /// The id of every row of `array`: [`NO_ID`] where the value is null or `keep` refuses
    /// the row. A row whose view equals the previous kept row's shares its lookup (equal
    /// views of one array are equal values).
    fn ids(&mut self, array: &StringViewArray, keep: impl Fn(usize) -> bool) -> Result<Vec<u32>> {
        use std::hash::BuildHasher;
        let views = array.views();
        let nulls = array.nulls();
        // Per row, the index of its lookup (NO_ID: none).
        let mut lookup_of = vec![NO_ID; views.len()];
        let mut lookups: Vec<Lookup> = Vec::new();
        let mut last: Option<u128> = None;
        for (row, &view) in views.iter().enumerate() {
            if nulls.is_some_and(|n| n.is_null(row)) || !keep(row) {
                continue;
            }
            if last != Some(view) {
                last = Some(view);
                let inline = short_key(view).map(|key| (key, self.hasher.hash_one(key)));
                lookups.push(Lookup { row, inline });
            }
            // Fewer lookups than rows, and rows fit in u32 in any Arrow array we are given.
            lookup_of[row] = u32::try_from(lookups.len() - 1).unwrap_or(NO_ID);
        }
        let mut found = Vec::with_capacity(lookups.len());
        for chunk in lookups.chunks(TOUCH_CHUNK) {
            let mut folded = 0u64;
            for l in chunk {
                if let Some((_, hash)) = l.inline {
                    folded ^= self.inline.touch(hash);
                }
            }
            std::hint::black_box(folded);
            for l in chunk {
                let id = match l.inline {
                    Some((key, hash)) => {
                        let (bytes, spans) = (&mut self.bytes, &mut self.spans);
                        let value = array.value(l.row).as_bytes();
                        self.inline.get_or_insert(key, hash, &self.hasher, || {
                            Self::push(bytes, spans, value)
                        })?
                    }
                    None => self.intern_long(array.value(l.row).as_bytes())?,
                };
                found.push(id);
            }
        }
        Ok(lookup_of
            .into_iter()
            .map(|l| found.get(l as usize).copied().unwrap_or(NO_ID))
            .collect())
    }

    fn size(&self) -> usize {
        self.inline.size()
            + self.long.capacity() * std::mem::size_of::<u32>()
            + self.bytes.capacity()
            + self.spans.capacity() * std::mem::size_of::<(usize, u32)>()
    }
}

/// The actors of each group in `groups` (ids), as a list of strings per group.
fn lists<I: IntoIterator<Item = u32>>(
    interner: &Interner,
    groups: impl Iterator<Item = I>,
) -> Result<ArrayRef> {
    let mut values = StringViewBuilder::new();
    let mut lengths = Vec::new();
    for group in groups {
        let mut n = 0;
        for id in group {
            // Interned values came from strings.
            let s = std::str::from_utf8(interner.get(id))
                .map_err(|_| internal("interned value is not UTF-8"))?;
            values.append_value(s);
            n += 1;
        }
        lengths.push(n);
    }
    Ok(Arc::new(ListArray::try_new(
        Arc::new(Field::new("item", DataType::Utf8View, true)),
        OffsetBuffer::from_lengths(lengths),
        Arc::new(values.finish()),
        None,
    )?))
}

/// Without grouping: the interned set is the answer.
#[derive(Debug, Default)]
struct UniqueAccumulator {
    actors: Interner,
}

impl Accumulator for UniqueAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let array = views(values.first().ok_or_else(|| internal("takes 1 argument"))?)?;
        self.actors.ids(&array, |_| true).map(drop)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Int64(Some(self.actors.len() as i64)))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.actors.size()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let ids = 0..self.actors.len() as u32;
        let list = lists(&self.actors, std::iter::once(ids))?;
        Ok(vec![ScalarValue::List(Arc::new(
            list.as_list::<i32>().clone(),
        ))])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let lists = states
            .first()
            .ok_or_else(|| internal("one state column"))?
            .as_list_opt::<i32>()
            .ok_or_else(|| internal("state is not a list"))?;
        let values = views(lists.values())?;
        self.actors.ids(&values, |_| true).map(drop)
    }
}

/// Per group, the set of its actor ids (ids interned once for all groups).
///
/// A final aggregate often gets exactly one partial state per group (when the partitions
/// read disjoint days, every day's bucket comes from one of them): such a state is already
/// a set, so it is kept as it came ([`Adopted`]) and counted by its length; its values are
/// interned only if a second state or a row for the same group arrives.
#[derive(Debug, Default)]
struct UniqueGroups {
    actors: Interner,
    groups: Vec<HashTable<u32>>,
    /// Per group, the one state list adopted in place of its (then empty) set.
    adopted: Vec<Option<Adopted>>,
    /// Slots of all groups' sets (kept as they change: `size` is asked for every batch).
    slots: usize,
    /// Bytes of the adopted lists' values, and how many groups hold one.
    adopted_bytes: usize,
    adopted_count: usize,
}

/// A state list kept as it came: distinct values (a partial aggregate's set, or one row).
#[derive(Debug)]
struct Adopted {
    values: StringViewArray,
    bytes: usize,
}

impl Adopted {
    fn new(values: StringViewArray) -> Self {
        // A view each, and the bytes of the values too long to sit in their view (they live
        // in the state batch's buffers, which the slice keeps alive).
        let bytes = values.len() * std::mem::size_of::<u128>()
            + values
                .views()
                .iter()
                .filter(|v| short_key(**v).is_none())
                .map(|v| *v as u32 as usize)
                .sum::<usize>();
        Self { values, bytes }
    }

    fn count(&self) -> usize {
        self.values.len() - self.values.null_count()
    }
}

/// Ids are dense: a multiplicative hash spreads them.
fn id_hash(id: u32) -> u64 {
    u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl UniqueGroups {
    fn add(&mut self, group: usize, id: u32) {
        let set = &mut self.groups[group];
        let hash = id_hash(id);
        if set.find(hash, |x| *x == id).is_none() {
            let before = set.capacity();
            set.insert_unique(hash, id, |x| id_hash(*x));
            self.slots += set.capacity() - before;
        }
    }

    fn resize(&mut self, total_num_groups: usize) {
        if self.groups.len() < total_num_groups {
            self.groups.resize_with(total_num_groups, Default::default);
            self.adopted.resize_with(total_num_groups, || None);
        }
    }

    /// Interns group `g`'s adopted list into its set, if it has one.
    fn unadopt(&mut self, g: usize) -> Result<()> {
        let Some(adopted) = self.adopted.get_mut(g).and_then(Option::take) else {
            return Ok(());
        };
        self.adopted_bytes -= adopted.bytes;
        self.adopted_count -= 1;
        let ids = self.actors.ids(&adopted.values, |_| true)?;
        for id in ids {
            if id != NO_ID {
                self.add(g, id);
            }
        }
        Ok(())
    }

    /// Interns every adopted list of the groups `emit_to` covers.
    fn unadopt_all(&mut self, emit_to: EmitTo) -> Result<()> {
        if self.adopted_count == 0 {
            return Ok(());
        }
        let n = match emit_to {
            EmitTo::All => self.groups.len(),
            EmitTo::First(n) => n.min(self.groups.len()),
        };
        for g in 0..n {
            self.unadopt(g)?;
        }
        Ok(())
    }

    /// Removes and returns the groups of `emit_to`: their sets and adopted lists.
    fn take(&mut self, emit_to: EmitTo) -> (Vec<HashTable<u32>>, Vec<Option<Adopted>>) {
        let taken = emit_to.take_needed(&mut self.groups);
        self.slots -= taken.iter().map(HashTable::capacity).sum::<usize>();
        let adopted = emit_to.take_needed(&mut self.adopted);
        for a in adopted.iter().flatten() {
            self.adopted_bytes -= a.bytes;
            self.adopted_count -= 1;
        }
        (taken, adopted)
    }
}

pub(crate) fn keep_row(opt_filter: Option<&BooleanArray>) -> impl Fn(usize) -> bool + '_ {
    move |row| opt_filter.is_none_or(|f| f.is_valid(row) && f.value(row))
}

/// Each row of `array` its own group's state: a list of its value, empty where null or
/// filtered out (`convert_to_state` of the string and number accumulators).
pub(crate) fn one_row_lists(
    array: &dyn Array,
    opt_filter: Option<&BooleanArray>,
) -> Result<ArrayRef> {
    let keep = keep_row(opt_filter);
    let mask: BooleanArray = (0..array.len())
        .map(|row| Some(array.is_valid(row) && keep(row)))
        .collect();
    let lengths: Vec<usize> = mask.values().iter().map(usize::from).collect();
    let kept = datafusion::arrow::compute::filter(array, &mask)?;
    Ok(Arc::new(ListArray::try_new(
        Arc::new(Field::new("item", array.data_type().clone(), true)),
        OffsetBuffer::from_lengths(lengths),
        kept,
        None,
    )?))
}

impl GroupsAccumulator for UniqueGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        let array = views(values.first().ok_or_else(|| internal("takes 1 argument"))?)?;
        if group_indices.len() != array.len() {
            return Err(internal("one group index per row"));
        }
        self.resize(total_num_groups);
        if self.adopted_count > 0 {
            for &g in group_indices {
                self.unadopt(g)?;
            }
        }
        let ids = self.actors.ids(&array, keep_row(opt_filter))?;
        let mut last = None;
        for (&g, id) in group_indices.iter().zip(ids) {
            if id != NO_ID && last != Some((g, id)) {
                last = Some((g, id));
                self.add(g, id);
            }
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let (sets, adopted) = self.take(emit_to);
        let counts: Int64Array = sets
            .iter()
            .zip(&adopted)
            .map(|(set, adopted)| Some(adopted.as_ref().map_or(set.len(), Adopted::count) as i64))
            .collect();
        Ok(Arc::new(counts))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        // A state of a final aggregate (multi-stage plans): intern what was adopted first.
        self.unadopt_all(emit_to)?;
        let (sets, _) = self.take(emit_to);
        Ok(vec![lists(
            &self.actors,
            sets.iter().map(|set| set.iter().copied()),
        )?])
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        let lists = values
            .first()
            .ok_or_else(|| internal("one state column"))?
            .as_list_opt::<i32>()
            .ok_or_else(|| internal("state is not a list"))?;
        if group_indices.len() != lists.len() {
            return Err(internal("one group index per state row"));
        }
        self.resize(total_num_groups);
        let values = views(lists.values())?;
        let offsets = lists.value_offsets();
        // Lists of this batch per group (counted over the batch's rows, not over all groups):
        // a group met once, with nothing yet, adopts its list.
        let mut seen: std::collections::HashMap<usize, u32, foldhash::fast::FixedState> =
            std::collections::HashMap::with_capacity_and_hasher(
                group_indices.len(),
                Default::default(),
            );
        for (row, &g) in group_indices.iter().enumerate() {
            if !lists.is_null(row) {
                *seen.entry(g).or_default() += 1;
            }
        }
        let mut intern_value = vec![false; values.len()];
        let mut interned_rows = Vec::new();
        for (row, &g) in group_indices.iter().enumerate() {
            if lists.is_null(row) {
                continue;
            }
            let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
            let fresh = self.groups[g].is_empty() && self.adopted[g].is_none();
            if fresh && seen.get(&g) == Some(&1) {
                let adopted = Adopted::new(values.slice(start, end - start));
                self.adopted_bytes += adopted.bytes;
                self.adopted_count += 1;
                self.adopted[g] = Some(adopted);
                continue;
            }
            self.unadopt(g)?;
            if let Some(flags) = intern_value.get_mut(start..end) {
                flags.fill(true);
            }
            interned_rows.push((row, g));
        }
        if interned_rows.is_empty() {
            return Ok(());
        }
        let ids = self.actors.ids(&values, |i| intern_value[i])?;
        for (row, g) in interned_rows {
            let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
            for &id in ids.get(start..end).unwrap_or_default() {
                if id != NO_ID {
                    self.add(g, id);
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
        let array = views(values.first().ok_or_else(|| internal("takes 1 argument"))?)?;
        Ok(vec![one_row_lists(&array, opt_filter)?])
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self)
            + self.actors.size()
            + self.groups.capacity() * std::mem::size_of::<HashTable<u32>>()
            + self.adopted.capacity() * std::mem::size_of::<Option<Adopted>>()
            + self.slots * (std::mem::size_of::<u32>() + 1)
            + self.adopted_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{StringArray, StringViewArray};
    use proptest::prelude::*;
    use std::collections::{BTreeSet, HashSet};

    fn view_array(values: &[Option<&str>]) -> ArrayRef {
        Arc::new(StringViewArray::from(values.to_vec()))
    }

    #[test]
    fn short_and_long_values_get_one_id_each() {
        let mut i = Interner::default();
        let a = view_array(&[
            Some("a"),
            Some("twelve bytes"),
            Some("thirteen byte"),
            Some("a"),
            None,
            Some(""),
            Some("thirteen byte"),
            Some("twelve bytes"),
        ]);
        let a = views(&a).expect("views");
        let ids = i.ids(&a, |row| row != 7).expect("intern");
        assert_eq!(ids, vec![0, 1, 2, 0, NO_ID, 3, 2, NO_ID]);
        assert_eq!(i.len(), 4);
        // Another array (other buffers) finds the same ids.
        let b = views(&view_array(&[Some("thirteen byte"), Some("a")])).expect("views");
        assert_eq!(i.ids(&b, |_| true).expect("intern"), vec![2, 0]);
        assert_eq!(i.get(1), b"twelve bytes");
        assert_eq!(i.get(2), b"thirteen byte");
    }

    #[test]
    fn the_table_grows_and_keeps_every_id() {
        let mut i = Interner::default();
        let values: Vec<String> = (0..5000).map(|n| format!("u{n}")).collect();
        let a = StringViewArray::from_iter_values(values.iter());
        let first = i.ids(&a, |_| true).expect("ids");
        assert_eq!(first, (0..5000).collect::<Vec<u32>>());
        let again = i.ids(&a, |_| true).expect("ids");
        assert_eq!(again, first);
        assert_eq!(i.len(), 5000);
        assert_eq!(i.get(4321), b"u4321");
    }

    #[test]
    fn groups_count_distinct_actors_and_emit_first_groups() {
        let mut g = UniqueGroups::default();
        let a = view_array(&[
            Some("u1"),
            Some("u1"),
            Some("a-long-user-name-1"),
            Some("u2"),
            Some("u1"),
            None,
        ]);
        g.update_batch(&[a], &[0, 0, 0, 1, 1, 1], None, 2)
            .expect("update");
        let b = view_array(&[Some("a-long-user-name-1"), Some("u3")]);
        let filter = BooleanArray::from(vec![true, false]);
        g.update_batch(&[b], &[1, 2], Some(&filter), 3)
            .expect("update");
        // Partial state of group 0 merged into another accumulator's group 5.
        let state = g.state(EmitTo::First(1)).expect("state");
        let mut other = UniqueGroups::default();
        other.merge_batch(&state, &[5], 6).expect("merge");
        let counts = other.evaluate(EmitTo::All).expect("evaluate");
        assert_eq!(
            counts
                .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                .value(5),
            2
        );
        // Group 1 (now first) has u2, u1, the long name; group 2 saw only a filtered row.
        let counts = g.evaluate(EmitTo::All).expect("evaluate");
        let counts = counts.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        assert_eq!(counts.values().to_vec(), vec![3, 0]);
    }

    #[test]
    fn non_view_strings_are_cast() {
        let mut acc = UniqueAccumulator::default();
        let a: ArrayRef = Arc::new(StringArray::from(vec!["x", "y", "x"]));
        acc.update_batch(&[a]).expect("update");
        assert_eq!(
            acc.evaluate().expect("evaluate"),
            ScalarValue::Int64(Some(2))
        );
    }

    proptest! {
        /// Random strings in random batches and groups, through partial states and a final
        /// merge: each group's count is the size of a plain set.
        #[test]
        fn matches_a_set_per_group(
            rows in prop::collection::vec(
                (0usize..4, prop::option::weighted(0.9, "[ab]{0,3}|[ab]{11,14}")),
                0..200,
            ),
            cut in 0usize..200,
        ) {
            let mut want: Vec<BTreeSet<String>> = vec![BTreeSet::new(); 4];
            for (g, v) in &rows {
                if let Some(v) = v {
                    want[*g].insert(v.clone());
                }
            }
            let cut = cut.min(rows.len());
            let mut final_acc = UniqueGroups::default();
            let mut plain = UniqueAccumulator::default();
            for part in [&rows[..cut], &rows[cut..]] {
                let mut partial = UniqueGroups::default();
                let values: Vec<Option<&str>> = part.iter().map(|(_, v)| v.as_deref()).collect();
                let groups: Vec<usize> = part.iter().map(|(g, _)| *g).collect();
                partial.update_batch(&[view_array(&values)], &groups, None, 4).expect("update");
                plain.update_batch(&[view_array(&values)]).expect("update");
                // Either a partial aggregate's state or each row as its own state.
                let state = if cut % 2 == 0 {
                    partial.state(EmitTo::All).expect("state")
                } else {
                    partial.convert_to_state(&[view_array(&values)], None).expect("convert")
                };
                let n = state[0].len();
                let groups = if cut % 2 == 0 { (0..n).collect::<Vec<_>>() } else { groups };
                final_acc.merge_batch(&state, &groups, 4).expect("merge");
            }
            // Sometimes once more through a state (a final aggregate's, adopted lists included).
            if cut % 3 == 0 {
                let state = final_acc.state(EmitTo::All).expect("state");
                let n = state[0].len();
                let mut again = UniqueGroups::default();
                again.merge_batch(&state, &(0..n).collect::<Vec<_>>(), 4).expect("merge");
                final_acc = again;
            }
            let counts = final_acc.evaluate(EmitTo::All).expect("evaluate");
            let counts = counts.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
            for (g, set) in want.iter().enumerate() {
                let got = if g < counts.len() { counts.value(g) } else { 0 };
                prop_assert_eq!(got as usize, set.len(), "group {}", g);
            }
            let all: HashSet<&String> = want.iter().flatten().collect();
            prop_assert_eq!(plain.evaluate().expect("evaluate"), ScalarValue::Int64(Some(all.len() as i64)));
        }
    }
}
