//! `herd_funnel(ts, steps, excl, breakdown, bucket)`: the funnel as a DataFusion aggregate,
//! grouped by actor.
//!
//! The [`GroupsAccumulator`] keeps one flat `Vec` of compact rows `(group, ts, steps, excl,
//! breakdown id, bucket)` for all groups, with breakdown strings interned once. Evaluation
//! sorts the rows of the emitted groups by group (a counting sort) and each group's rows by
//! time, then runs the state machine of [`machine`] per group. Partial states are the group's
//! rows as lists, so the answer is the same whatever the batch boundaries, the partitioning or
//! the number of aggregation phases. Groups emitted early (`EmitTo::First`, when the input
//! arrives sorted by actor) release their rows.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, BooleanBuilder, Int32Builder, Int64Builder, ListArray,
    StringBuilder, StructArray, UInt32Builder,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{
    DataType, Field, FieldRef, Fields, Int32Type, Int64Type, UInt32Type,
};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, Expr, GroupsAccumulator, Signature,
    Volatility,
};

use super::machine::{self, Ev, NO_VALUE, Params};

/// What the aggregate computes per actor.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Mode {
    /// Furthest step and step times per breakdown value.
    Steps,
    /// Per entry bucket, converted or not (funnel trends).
    Trends {
        /// Step an entry must reach to count (0-based).
        from_step: usize,
        /// Step an entry must reach to convert (0-based).
        to_step: usize,
    },
}

/// The funnel aggregate of one request.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct FunnelUdaf {
    params: Params,
    mode: Mode,
    signature: Signature,
}

/// Name of the breakdown field of the output structs.
pub const BD: &str = "bd";
/// Name of the steps bitfield of the output structs.
pub const BITS: &str = "bits";
/// Name of the bucket field of the trends output structs.
pub const BUCKET: &str = "bucket";
/// Name of the converted flag of the trends output structs.
pub const CONVERTED: &str = "converted";

/// Name of the time field of step `k` of the output structs.
pub fn time_field(k: usize) -> String {
    format!("t{k}")
}

impl FunnelUdaf {
    /// `herd_funnel(ts: Int64 µs, steps: UInt32, excl: UInt32, breakdown: Utf8, bucket:
    /// Int32)` for one request. Returns a list of structs per actor: for [`Mode::Steps`]
    /// `{bd, bits, t0 … t(n−1)}`, for [`Mode::Trends`] `{bd, bucket, converted}`.
    pub fn expr(params: Params, mode: Mode, args: Vec<Expr>) -> Expr {
        Self::udaf(params, mode).call(args)
    }

    /// The aggregate of one request.
    pub(crate) fn udaf(params: Params, mode: Mode) -> AggregateUDF {
        AggregateUDF::new_from_impl(Self {
            params,
            mode,
            signature: Signature::exact(
                vec![
                    DataType::Int64,
                    DataType::UInt32,
                    DataType::UInt32,
                    DataType::Utf8,
                    DataType::Int32,
                ],
                Volatility::Immutable,
            ),
        })
    }

    fn output_type(&self) -> DataType {
        output_type(&self.params, &self.mode)
    }

    fn accumulator_state(&self) -> FunnelAccumulator {
        FunnelAccumulator::new(self.params.clone(), self.mode.clone())
    }
}

/// The aggregate's (and [`super::exec::FunnelExec`]'s) output: a list of outcome structs.
pub(crate) fn output_type(params: &Params, mode: &Mode) -> DataType {
    DataType::List(Arc::new(Field::new(
        "item",
        DataType::Struct(item_fields(params, mode)),
        true,
    )))
}

/// The fields of the aggregate's output structs for `params` and `mode`.
fn item_fields(params: &Params, mode: &Mode) -> Fields {
    let mut fields = vec![Field::new(BD, DataType::Utf8, true)];
    match mode {
        Mode::Steps => {
            fields.push(Field::new(BITS, DataType::UInt32, false));
            for k in 0..params.steps {
                fields.push(Field::new(time_field(k), DataType::Int64, true));
            }
        }
        Mode::Trends { .. } => {
            fields.push(Field::new(BUCKET, DataType::Int32, false));
            fields.push(Field::new(CONVERTED, DataType::Boolean, false));
        }
    }
    Fields::from(fields)
}

fn list_of(t: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("item", t, true)))
}

impl AggregateUDFImpl for FunnelUdaf {
    fn name(&self) -> &str {
        "herd_funnel"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(self.output_type())
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let name = |s: &str| format!("{}[{s}]", args.name);
        Ok(vec![
            Arc::new(Field::new(name("ts"), list_of(DataType::Int64), true)),
            Arc::new(Field::new(name("steps"), list_of(DataType::UInt32), true)),
            Arc::new(Field::new(name("excl"), list_of(DataType::UInt32), true)),
            Arc::new(Field::new(name("bd"), list_of(DataType::Utf8), true)),
            Arc::new(Field::new(name("bucket"), list_of(DataType::Int32), true)),
        ])
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(SingleFunnel(self.accumulator_state())))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        _args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(self.accumulator_state()))
    }
}

/// One input row, compact.
#[derive(Debug, Clone, Copy)]
struct Row {
    group: u32,
    ev: Ev,
}

/// Bytes of one row held in memory.
pub(crate) const ROW_BYTES: usize = std::mem::size_of::<Row>();

/// Rows per chunk of [`Rows`] (at most).
const CHUNK_ROWS: usize = 1 << 16;
/// Rows of a [`Rows`]' first chunk: chunks grow from this to [`CHUNK_ROWS`], so that an
/// accumulator holding a few rows (the funnel runs many, one per hash bucket) stays small.
const FIRST_CHUNK_ROWS: usize = 1 << 10;
/// Bytes of one row in a spill file: group, ts, steps, excl, bd, bucket (little endian).
const SPILLED_ROW: usize = 28;

/// Rows in fixed-size chunks: appending never moves what is stored (a growing `Vec` copied
/// everything at each doubling and faulted in twice the memory: a fifth of a funnel's time),
/// and whole chunks move between accumulators without copying.
#[derive(Debug, Default)]
struct Rows {
    chunks: Vec<Vec<Row>>,
    len: usize,
}

impl Rows {
    fn push(&mut self, row: Row) {
        match self.chunks.last_mut() {
            Some(c) if c.len() < c.capacity() => c.push(row),
            _ => {
                let mut c = Vec::with_capacity(self.len.clamp(FIRST_CHUNK_ROWS, CHUNK_ROWS));
                c.push(row);
                self.chunks.push(c);
            }
        }
        self.len += 1;
    }

    fn len(&self) -> usize {
        self.len
    }

    fn iter(&self) -> impl Iterator<Item = &Row> {
        self.chunks.iter().flatten()
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Row> {
        self.chunks.iter_mut().flatten()
    }

    fn bytes(&self) -> usize {
        self.chunks.iter().map(Vec::capacity).sum::<usize>() * std::mem::size_of::<Row>()
    }
}

/// A row from a [`SPILLED_ROW`]-byte record.
fn decode_row(b: &[u8]) -> Row {
    let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&b[4..12]);
    Row {
        group: u32_at(0),
        ev: Ev {
            ts: i64::from_le_bytes(ts),
            steps: u32_at(12),
            excl: u32_at(16),
            bd: u32_at(20),
            bucket: u32_at(24) as i32,
        },
    }
}

/// The flat state of all groups.
#[derive(Debug)]
pub(crate) struct FunnelAccumulator {
    params: Params,
    mode: Mode,
    item_fields: Fields,
    rows: Rows,
    /// Groups seen so far (groups may have no rows).
    groups: usize,
    /// Interned breakdown values.
    values: Vec<String>,
    ids: HashMap<String, u32>,
}

fn internal(message: &str) -> DataFusionError {
    DataFusionError::Internal(format!("herd_funnel: {message}"))
}

impl FunnelAccumulator {
    /// An empty accumulator; also for running the aggregate outside DataFusion's aggregation
    /// operator (see [`super::exec`]).
    pub(crate) fn new(params: Params, mode: Mode) -> Self {
        Self {
            item_fields: item_fields(&params, &mode),
            params,
            mode,
            rows: Rows::default(),
            groups: 0,
            values: Vec::new(),
            ids: HashMap::new(),
        }
    }

    /// Appends rows `(row, group)` of `values` (the aggregate's five argument columns);
    /// `groups` is the number of groups so far.
    pub(crate) fn push(
        &mut self,
        values: &[ArrayRef],
        rows: &[(usize, u32)],
        groups: usize,
    ) -> Result<()> {
        let [ts, steps, excl, bd, bucket] = values else {
            return Err(internal("takes 5 arguments"));
        };
        self.groups = self.groups.max(groups);
        self.push_rows(ts, steps, excl, bd, bucket, rows.iter().copied())
    }

    /// Bytes held by the rows.
    pub(crate) fn row_bytes(&self) -> usize {
        self.rows.bytes()
    }

    /// Writes the rows to `out` as fixed-size records and frees them. The groups and the
    /// interned breakdown values stay, so rows read back by [`Self::unspill`] mean what they
    /// meant. Returns the number of rows written.
    pub(crate) fn spill(&mut self, out: &mut impl std::io::Write) -> std::io::Result<usize> {
        let rows = std::mem::take(&mut self.rows);
        let n = rows.len();
        let mut buf = Vec::new();
        for chunk in rows.chunks {
            buf.clear();
            buf.reserve(chunk.len() * SPILLED_ROW);
            for r in &chunk {
                buf.extend_from_slice(&r.group.to_le_bytes());
                buf.extend_from_slice(&r.ev.ts.to_le_bytes());
                buf.extend_from_slice(&r.ev.steps.to_le_bytes());
                buf.extend_from_slice(&r.ev.excl.to_le_bytes());
                buf.extend_from_slice(&r.ev.bd.to_le_bytes());
                buf.extend_from_slice(&r.ev.bucket.to_le_bytes());
            }
            out.write_all(&buf)?;
        }
        Ok(n)
    }

    /// Appends the rows of a piece of a spill file written by [`Self::spill`]; `partial` holds
    /// the bytes of a record cut at the end of the previous piece (and keeps those of this
    /// piece's). An empty `partial` at the end of the file means every record was whole.
    pub(crate) fn unspill(&mut self, piece: &[u8], partial: &mut Vec<u8>) {
        let mut piece = piece;
        if !partial.is_empty() {
            let need = (SPILLED_ROW - partial.len()).min(piece.len());
            partial.extend_from_slice(&piece[..need]);
            piece = &piece[need..];
            if partial.len() < SPILLED_ROW {
                return;
            }
            let record = std::mem::take(partial);
            self.rows.push(decode_row(&record));
        }
        let mut records = piece.chunks_exact(SPILLED_ROW);
        for record in &mut records {
            self.rows.push(decode_row(record));
        }
        partial.extend_from_slice(records.remainder());
    }

    /// Evaluates every group (a list of output structs per group, in group order).
    pub(crate) fn evaluate_all(&mut self) -> Result<ArrayRef> {
        self.evaluate_rows(EmitTo::All)
    }

    fn intern(&mut self, value: &str) -> u32 {
        if let Some(id) = self.ids.get(value) {
            return *id;
        }
        let id = self.values.len() as u32;
        self.values.push(value.to_string());
        self.ids.insert(value.to_string(), id);
        id
    }

    fn group_of(index: usize) -> Result<u32> {
        u32::try_from(index).map_err(|_| internal("more than 2^32 groups"))
    }

    /// Appends rows `i` of flat value arrays for `group`.
    #[allow(clippy::too_many_arguments)]
    fn push_rows(
        &mut self,
        ts: &ArrayRef,
        steps: &ArrayRef,
        excl: &ArrayRef,
        bd: &ArrayRef,
        bucket: &ArrayRef,
        rows: impl Iterator<Item = (usize, u32)>,
    ) -> Result<()> {
        let ts = ts
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| internal("ts"))?;
        let steps = steps
            .as_primitive_opt::<UInt32Type>()
            .ok_or_else(|| internal("steps"))?;
        let excl = excl
            .as_primitive_opt::<UInt32Type>()
            .ok_or_else(|| internal("excl"))?;
        let bd = bd.as_string_opt::<i32>().ok_or_else(|| internal("bd"))?;
        let bucket = bucket
            .as_primitive_opt::<Int32Type>()
            .ok_or_else(|| internal("bucket"))?;
        for (i, group) in rows {
            if ts.is_null(i) {
                continue;
            }
            let s = if steps.is_null(i) { 0 } else { steps.value(i) };
            let x = if excl.is_null(i) { 0 } else { excl.value(i) };
            let b = if bd.is_null(i) {
                NO_VALUE
            } else {
                self.intern(bd.value(i))
            };
            self.rows.push(Row {
                group,
                ev: Ev {
                    ts: ts.value(i),
                    steps: s,
                    excl: x,
                    bd: b,
                    bucket: if bucket.is_null(i) {
                        0
                    } else {
                        bucket.value(i)
                    },
                },
            });
        }
        Ok(())
    }

    /// Takes the rows of the emitted groups, sorted by group and then by event, with the
    /// group count; the remaining groups are renumbered from 0.
    fn take(&mut self, emit_to: EmitTo) -> (Vec<Row>, usize) {
        let groups = match emit_to {
            EmitTo::All => std::mem::take(&mut self.groups),
            EmitTo::First(n) => {
                let n = n.min(self.groups);
                self.groups -= n;
                n
            }
        };
        let taken = match emit_to {
            EmitTo::All => std::mem::take(&mut self.rows),
            EmitTo::First(_) => {
                let n = groups as u32;
                let mut taken = Rows::default();
                let mut kept = Rows::default();
                for chunk in std::mem::take(&mut self.rows).chunks {
                    for mut r in chunk {
                        if r.group < n {
                            taken.push(r);
                        } else {
                            r.group -= n;
                            kept.push(r);
                        }
                    }
                }
                self.rows = kept;
                taken
            }
        };
        // Counting sort by group, then each group's rows by event.
        let mut starts = vec![0usize; groups + 1];
        for r in taken.iter() {
            starts[r.group as usize + 1] += 1;
        }
        for g in 0..groups {
            starts[g + 1] += starts[g];
        }
        let mut next = starts.clone();
        let mut sorted = vec![
            Row {
                group: 0,
                ev: Ev {
                    ts: 0,
                    steps: 0,
                    excl: 0,
                    bd: NO_VALUE,
                    bucket: 0
                }
            };
            taken.len()
        ];
        // Chunk by chunk, so each is freed once scattered.
        for chunk in taken.chunks {
            for r in chunk {
                let g = r.group as usize;
                sorted[next[g]] = r;
                next[g] += 1;
            }
        }
        for g in 0..groups {
            sorted[starts[g]..starts[g + 1]].sort_unstable_by_key(|a| a.ev);
        }
        (sorted, groups)
    }

    fn empty(&self) -> Self {
        Self::new(self.params.clone(), self.mode.clone())
    }

    fn bd_value(&self, id: u32) -> Option<&str> {
        (id != NO_VALUE).then(|| self.values.get(id as usize).map(String::as_str))?
    }

    /// Keeps only the interned values the remaining rows use (groups emitted early take
    /// theirs with them).
    fn compact_values(&mut self) {
        if self.values.is_empty() {
            return;
        }
        let mut used = vec![u32::MAX; self.values.len()];
        let mut values = Vec::new();
        for r in self.rows.iter_mut() {
            if r.ev.bd == NO_VALUE {
                continue;
            }
            let old = r.ev.bd as usize;
            if used[old] == u32::MAX {
                used[old] = values.len() as u32;
                values.push(std::mem::take(&mut self.values[old]));
            }
            r.ev.bd = used[old];
        }
        self.ids = values
            .iter()
            .enumerate()
            .map(|(i, v)| (v.clone(), i as u32))
            .collect();
        self.values = values;
    }

    /// Renumbers the interned values in string order, so that ties between values (two
    /// events at the same time with different values) resolve the same way whatever order
    /// the rows arrived in.
    fn sort_values(&mut self) {
        if self.values.is_empty() {
            return;
        }
        let mut order: Vec<u32> = (0..self.values.len() as u32).collect();
        order.sort_by(|a, b| self.values[*a as usize].cmp(&self.values[*b as usize]));
        let mut new_id = vec![0u32; order.len()];
        for (pos, old) in order.iter().enumerate() {
            new_id[*old as usize] = pos as u32;
        }
        for r in self.rows.iter_mut() {
            if r.ev.bd != NO_VALUE {
                r.ev.bd = new_id[r.ev.bd as usize];
            }
        }
        let values = std::mem::take(&mut self.values);
        self.values = order.iter().map(|o| values[*o as usize].clone()).collect();
        self.ids = self
            .values
            .iter()
            .enumerate()
            .map(|(i, v)| (v.clone(), i as u32))
            .collect();
    }

    fn evaluate_rows(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        self.sort_values();
        let (rows, groups) = self.take(emit_to);
        let fields = self.item_fields.clone();
        let mut offsets = Vec::with_capacity(groups + 1);
        offsets.push(0i32);
        let mut bd = StringBuilder::new();
        let mut bits = UInt32Builder::new();
        let mut times: Vec<Int64Builder> = (0..self.params.steps)
            .map(|_| Int64Builder::new())
            .collect();
        let mut buckets = Int32Builder::new();
        let mut converted = BooleanBuilder::new();
        let mut items = 0i32;
        let mut start = 0;
        let mut evs: Vec<Ev> = Vec::new();
        for g in 0..groups {
            let mut end = start;
            while end < rows.len() && rows[end].group as usize == g {
                end += 1;
            }
            evs.clear();
            evs.extend(rows[start..end].iter().map(|r| r.ev));
            start = end;
            match self.mode {
                Mode::Steps => {
                    for o in machine::run(&self.params, &evs) {
                        bd.append_option(self.bd_value(o.bd));
                        bits.append_value(o.bits);
                        for (k, t) in o.at.iter().enumerate() {
                            times[k].append_option(*t);
                        }
                        items += 1;
                    }
                }
                Mode::Trends { from_step, to_step } => {
                    for o in machine::run_trends(&self.params, &evs, from_step, to_step) {
                        bd.append_option(self.bd_value(o.bd));
                        buckets.append_value(o.bucket);
                        converted.append_value(o.converted);
                        items += 1;
                    }
                }
            }
            offsets.push(items);
        }
        let mut columns: Vec<ArrayRef> = vec![Arc::new(bd.finish())];
        match self.mode {
            Mode::Steps => {
                columns.push(Arc::new(bits.finish()));
                for mut t in times {
                    columns.push(Arc::new(t.finish()));
                }
            }
            Mode::Trends { .. } => {
                columns.push(Arc::new(buckets.finish()));
                columns.push(Arc::new(converted.finish()));
            }
        }
        let structs = StructArray::try_new(fields.clone(), columns, None)?;
        let list = ListArray::try_new(
            Arc::new(Field::new("item", DataType::Struct(fields), true)),
            OffsetBuffer::new(offsets.into()),
            Arc::new(structs),
            None,
        )?;
        self.compact_values();
        Ok(Arc::new(list))
    }

    fn state_rows(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let (rows, groups) = self.take(emit_to);
        let mut offsets = Vec::with_capacity(groups + 1);
        offsets.push(0i32);
        let mut ts = Int64Builder::with_capacity(rows.len());
        let mut steps = UInt32Builder::with_capacity(rows.len());
        let mut excl = UInt32Builder::with_capacity(rows.len());
        let mut bd = StringBuilder::new();
        let mut bucket = Int32Builder::with_capacity(rows.len());
        let mut i = 0;
        for g in 0..groups {
            while i < rows.len() && rows[i].group as usize == g {
                let e = rows[i].ev;
                ts.append_value(e.ts);
                steps.append_value(e.steps);
                excl.append_value(e.excl);
                bd.append_option(self.bd_value(e.bd));
                bucket.append_value(e.bucket);
                i += 1;
            }
            offsets
                .push(i32::try_from(i).map_err(|_| internal("more than 2^31 rows in one state"))?);
        }
        let offsets = OffsetBuffer::new(offsets.into());
        let list = |values: ArrayRef| -> Result<ArrayRef> {
            Ok(Arc::new(ListArray::try_new(
                Arc::new(Field::new("item", values.data_type().clone(), true)),
                offsets.clone(),
                values,
                None,
            )?))
        };
        let out = vec![
            list(Arc::new(ts.finish()))?,
            list(Arc::new(steps.finish()))?,
            list(Arc::new(excl.finish()))?,
            list(Arc::new(bd.finish()))?,
            list(Arc::new(bucket.finish()))?,
        ];
        self.compact_values();
        Ok(out)
    }

    fn merge_lists(
        &mut self,
        values: &[ArrayRef],
        group_of: &dyn Fn(usize) -> Result<u32>,
    ) -> Result<()> {
        if values.len() != 5 {
            return Err(internal("state has 5 columns"));
        }
        let lists = values
            .iter()
            .map(|v| {
                v.as_list_opt::<i32>()
                    .ok_or_else(|| internal("state is a list"))
            })
            .collect::<Result<Vec<_>>>()?;
        let offsets = lists[0].value_offsets();
        let mut row_groups = Vec::with_capacity(lists[0].values().len());
        for r in 0..lists[0].len() {
            let g = group_of(r)?;
            let (a, b) = (offsets[r] as usize, offsets[r + 1] as usize);
            row_groups.extend((a..b).map(|i| (i, g)));
        }
        let inner: Vec<ArrayRef> = lists.iter().map(|l| l.values().clone()).collect();
        self.push_rows(
            &inner[0],
            &inner[1],
            &inner[2],
            &inner[3],
            &inner[4],
            row_groups.into_iter(),
        )
    }
}

impl GroupsAccumulator for FunnelAccumulator {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        if values.len() != 5 {
            return Err(internal("takes 5 arguments"));
        }
        self.groups = self.groups.max(total_num_groups);
        let mut rows = Vec::with_capacity(group_indices.len());
        for (i, g) in group_indices.iter().enumerate() {
            if opt_filter.is_some_and(|f| !f.is_valid(i) || !f.value(i)) {
                continue;
            }
            rows.push((i, Self::group_of(*g)?));
        }
        self.push_rows(
            &values[0],
            &values[1],
            &values[2],
            &values[3],
            &values[4],
            rows.into_iter(),
        )
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        self.evaluate_rows(emit_to)
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        // Each row its own group: with no filter, the input columns are the list values as
        // they are (one-element lists, no copy).
        let expected = [
            DataType::Int64,
            DataType::UInt32,
            DataType::UInt32,
            DataType::Utf8,
            DataType::Int32,
        ];
        if opt_filter.is_none()
            && values.len() == expected.len()
            && values
                .iter()
                .zip(&expected)
                .all(|(v, t)| v.data_type() == t)
        {
            let n = values.first().map_or(0, |v| v.len());
            let offsets = OffsetBuffer::from_lengths(std::iter::repeat_n(1, n));
            return values
                .iter()
                .map(|v| -> Result<ArrayRef> {
                    Ok(Arc::new(ListArray::try_new(
                        Arc::new(Field::new("item", v.data_type().clone(), true)),
                        offsets.clone(),
                        v.clone(),
                        None,
                    )?))
                })
                .collect();
        }
        let mut one = self.empty();
        one.update_batch(
            values,
            &(0..values.first().map_or(0, |v| v.len())).collect::<Vec<_>>(),
            opt_filter,
            values.first().map_or(0, |v| v.len()),
        )?;
        one.state_rows(EmitTo::All)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        self.state_rows(emit_to)
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.groups = self.groups.max(total_num_groups);
        self.merge_lists(values, &|r| {
            group_indices
                .get(r)
                .ok_or_else(|| internal("state row without a group"))
                .and_then(|g| Self::group_of(*g))
        })
    }

    fn size(&self) -> usize {
        self.rows.bytes()
            + self
                .values
                .iter()
                .map(|v| v.capacity() * 2 + 48)
                .sum::<usize>()
    }
}

/// The row accumulator (aggregates without GROUP BY, window functions): one group.
#[derive(Debug)]
struct SingleFunnel(FunnelAccumulator);

impl Accumulator for SingleFunnel {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let n = values.first().map_or(0, |v| v.len());
        let rows = (0..n).map(|i| (i, 0u32)).collect::<Vec<_>>();
        if values.len() != 5 {
            return Err(internal("takes 5 arguments"));
        }
        self.0.groups = 1;
        self.0.push_rows(
            &values[0],
            &values[1],
            &values[2],
            &values[3],
            &values[4],
            rows.into_iter(),
        )
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        self.0.groups = 1;
        let out = self.0.evaluate_rows(EmitTo::All)?;
        ScalarValue::try_from_array(&out, 0)
    }

    fn size(&self) -> usize {
        self.0.size() + std::mem::size_of::<Self>()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        self.0.groups = 1;
        let arrays = self.0.state_rows(EmitTo::All)?;
        arrays
            .iter()
            .map(|a| ScalarValue::try_from_array(a, 0))
            .collect()
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.0.groups = 1;
        self.0.merge_lists(states, &|_| Ok(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int32Array, Int64Array, RecordBatch, StringArray, UInt32Array};
    use datafusion::arrow::datatypes::Schema;
    use datafusion::datasource::MemTable;
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::{SessionConfig, SessionContext, col};

    use crate::funnel::machine::Order;

    const H: i64 = 3_600_000_000;

    fn params() -> Params {
        Params {
            steps: 2,
            order: Order::Ordered,
            window: 24 * H,
            step_windows: vec![],
            optional: 0,
            attribution: None,
        }
    }

    fn arrays(rows: &[(i64, u32)]) -> Vec<ArrayRef> {
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(UInt32Array::from_iter_values(rows.iter().map(|_| 0))),
            Arc::new(StringArray::from_iter(rows.iter().map(|_| None::<&str>))),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|_| 0))),
        ]
    }

    #[test]
    fn spilled_rows_read_back_in_pieces_of_any_size_are_the_same_rows() {
        let mut acc = FunnelAccumulator::new(params(), Mode::Steps);
        let values = vec![
            Arc::new(Int64Array::from(vec![-5, i64::MAX, 7])) as ArrayRef,
            Arc::new(UInt32Array::from(vec![1, 2, u32::MAX])),
            Arc::new(UInt32Array::from(vec![0, 4, 1])),
            Arc::new(StringArray::from(vec![Some("x"), None, Some("y")])),
            Arc::new(Int32Array::from(vec![-1, 0, i32::MIN])),
        ];
        acc.push(&values, &[(0, 0), (1, 7), (2, 3)], 8)
            .expect("push");
        let before: Vec<(u32, Ev)> = acc.rows.iter().map(|r| (r.group, r.ev)).collect();
        let mut file = Vec::new();
        assert_eq!(acc.spill(&mut file).expect("spill"), 3);
        assert_eq!(
            (acc.rows.len(), acc.row_bytes(), file.len()),
            (0, 0, 3 * SPILLED_ROW)
        );
        for piece in 1..=file.len() {
            let mut back = FunnelAccumulator::new(params(), Mode::Steps);
            let mut partial = Vec::new();
            for p in file.chunks(piece) {
                back.unspill(p, &mut partial);
            }
            assert!(partial.is_empty(), "piece {piece}");
            let after: Vec<(u32, Ev)> = back.rows.iter().map(|r| (r.group, r.ev)).collect();
            assert_eq!(after, before, "piece {piece}");
        }
        // A file cut inside a record leaves the cut record's bytes in `partial`.
        let mut back = FunnelAccumulator::new(params(), Mode::Steps);
        let mut partial = Vec::new();
        back.unspill(&file[..SPILLED_ROW + 5], &mut partial);
        assert_eq!((back.rows.len(), partial.len()), (1, 5));
    }

    fn bits_of(list: &ArrayRef) -> Vec<Vec<u32>> {
        let list = list.as_list::<i32>();
        (0..list.len())
            .map(|g| {
                let items = list.value(g);
                let s = items.as_struct();
                let bits = s.column(1).as_primitive::<UInt32Type>();
                bits.values().to_vec()
            })
            .collect()
    }

    #[test]
    fn emitting_the_first_groups_releases_their_rows_and_renumbers_the_rest() {
        let udaf = FunnelUdaf {
            params: params(),
            mode: Mode::Steps,
            signature: Signature::any(5, Volatility::Immutable),
        };
        let mut acc = udaf.accumulator_state();
        // Groups 0, 1, 2: A→B, A only, A→B.
        acc.update_batch(
            &arrays(&[(0, 1), (H, 2), (0, 1), (0, 1)]),
            &[0, 0, 1, 2],
            None,
            3,
        )
        .expect("update");
        let first = acc.evaluate(EmitTo::First(2)).expect("evaluate");
        assert_eq!(bits_of(&first), [vec![0b11], vec![0b1]]);
        assert_eq!(acc.rows.len(), 1, "only group 2's row is kept");
        // Former group 2 is now group 0.
        acc.update_batch(&arrays(&[(H, 2)]), &[0], None, 1)
            .expect("update");
        let rest = acc.evaluate(EmitTo::All).expect("evaluate");
        assert_eq!(bits_of(&rest), [vec![0b11]]);
        assert_eq!(acc.rows.len(), 0);
    }

    #[tokio::test]
    async fn input_sorted_by_actor_is_aggregated_in_streaming_order() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("actor", DataType::Utf8, false),
            Field::new("ts", DataType::Int64, false),
            Field::new("steps", DataType::UInt32, false),
            Field::new("excl", DataType::UInt32, false),
            Field::new("bd", DataType::Utf8, true),
            Field::new("bucket", DataType::Int32, false),
        ]));
        let actors: Vec<String> = (0..1000).map(|i| format!("a{i:04}")).collect();
        let mut columns = vec![Arc::new(StringArray::from_iter_values(
            actors.iter().flat_map(|a| [a.clone(), a.clone()]),
        )) as ArrayRef];
        let rows: Vec<(i64, u32)> = (0..1000).flat_map(|_| [(0, 1), (H, 2)]).collect();
        columns.extend(arrays(&rows));
        let batch = RecordBatch::try_new(schema.clone(), columns).expect("batch");
        let table = MemTable::try_new(schema, vec![vec![batch]])
            .expect("table")
            .with_sort_order(vec![vec![col("actor").sort(true, false)]]);
        let ctx = SessionContext::new_with_config(
            SessionConfig::new()
                .with_target_partitions(1)
                .with_batch_size(64),
        );
        let agg = FunnelUdaf::expr(
            params(),
            Mode::Steps,
            vec![
                col("ts"),
                col("steps"),
                col("excl"),
                col("bd"),
                col("bucket"),
            ],
        );
        let df = ctx
            .read_table(Arc::new(table))
            .expect("read")
            .aggregate(vec![col("actor")], vec![agg.alias("r")])
            .expect("aggregate");
        let plan = df.clone().create_physical_plan().await.expect("plan");
        let text = displayable(plan.as_ref()).indent(true).to_string();
        // The aggregate knows its input is grouped by actor and emits each actor as soon as
        // the next one starts, instead of holding every actor's rows to the end.
        assert!(text.contains("ordering_mode=Sorted"), "{text}");
        let batches = df.collect().await.expect("collect");
        let converted: usize = batches
            .iter()
            .map(|b| {
                bits_of(b.column(1))
                    .iter()
                    .filter(|v| v == &&vec![0b11])
                    .count()
            })
            .sum();
        assert_eq!(converted, 1000);
    }
}
