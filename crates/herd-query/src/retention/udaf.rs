//! `herd_retention`: the per-actor aggregate of a retention plan (see the parent module).

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, BooleanArray, Int64Builder, StringBuilder, StructArray,
};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields, Int32Type, Int64Type};
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, Expr, GroupsAccumulator, Signature,
    Volatility,
};

/// `herd_retention(target_bucket, return_bucket, target_time)`: per group, the set of periods
/// with a target event, the set with a returning event (as one little-endian bitset blob,
/// targets then returns) and the earliest target time.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct RetentionUdaf {
    signature: Signature,
}

impl RetentionUdaf {
    /// The aggregate over `[target bucket: Int32, return bucket: Int32, target time: Int64]`.
    pub fn expr(periods: usize, mut args: Vec<Expr>) -> Expr {
        args.push(crate::params::arg(&periods));
        Self::udaf().call(args)
    }

    /// The aggregate: `herd_retention(target, return, time, breakdown, periods)`, the
    /// periods a text literal ([`crate::params`]).
    pub(crate) fn udaf() -> AggregateUDF {
        AggregateUDF::new_from_impl(Self {
            signature: Signature::exact(
                vec![
                    DataType::Int32,
                    DataType::Int32,
                    DataType::Int64,
                    DataType::Utf8,
                    DataType::Utf8,
                ],
                Volatility::Immutable,
            ),
        })
    }

    fn fields() -> Fields {
        Fields::from(vec![
            Field::new("bits", DataType::Binary, false),
            Field::new("first", DataType::Int64, true),
            Field::new("bd", DataType::Utf8, true),
        ])
    }

    fn state(args: &AccumulatorArgs) -> datafusion::common::Result<RetentionState> {
        let periods: usize = crate::params::of_expr("herd_retention", args.exprs.get(4))?;
        Ok(RetentionState::new(periods))
    }
}

impl AggregateUDFImpl for RetentionUdaf {
    fn name(&self) -> &str {
        "herd_retention"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::common::Result<DataType> {
        Ok(DataType::Struct(Self::fields()))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> datafusion::common::Result<Vec<FieldRef>> {
        Ok(vec![
            Arc::new(Field::new(
                format!("{}[bits]", args.name),
                DataType::Binary,
                true,
            )),
            Arc::new(Field::new(
                format!("{}[first]", args.name),
                DataType::Int64,
                true,
            )),
            Arc::new(Field::new(
                format!("{}[bd_time]", args.name),
                DataType::Int64,
                true,
            )),
            Arc::new(Field::new(
                format!("{}[bd]", args.name),
                DataType::Utf8,
                true,
            )),
        ])
    }

    fn accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> datafusion::common::Result<Box<dyn Accumulator>> {
        Ok(Box::new(SingleRetention(Self::state(&args)?)))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> datafusion::common::Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(Self::state(&args)?))
    }
}

/// Flat state: `2 · words` bitset words per group (targets, then returns), the first target
/// time per group (`i64::MAX` for none), and the time and value of the earliest target event
/// with a breakdown value.
#[derive(Debug)]
struct RetentionState {
    words: usize,
    periods: usize,
    bits: Vec<u64>,
    first: Vec<i64>,
    bd_time: Vec<i64>,
    bd: Vec<Option<String>>,
}

fn internal(message: &str) -> DataFusionError {
    DataFusionError::Internal(format!("herd_retention: {message}"))
}

impl RetentionState {
    fn new(periods: usize) -> Self {
        Self {
            words: periods.div_ceil(64),
            periods,
            bits: Vec::new(),
            first: Vec::new(),
            bd_time: Vec::new(),
            bd: Vec::new(),
        }
    }

    fn resize(&mut self, groups: usize) {
        if self.first.len() < groups {
            self.bits.resize(groups * 2 * self.words, 0);
            self.first.resize(groups, i64::MAX);
            self.bd_time.resize(groups, i64::MAX);
            self.bd.resize(groups, None);
        }
    }

    fn set(&mut self, group: usize, set: usize, bucket: i32) {
        if let Ok(b) = usize::try_from(bucket)
            && b < self.periods
        {
            self.bits[group * 2 * self.words + set * self.words + b / 64] |= 1 << (b % 64);
        }
    }

    /// Keeps the value of the earliest event (the smaller value on a tie).
    fn offer(&mut self, group: usize, time: i64, value: &str) {
        let better = match &self.bd[group] {
            None => true,
            Some(v) => (time, value) < (self.bd_time[group], v.as_str()),
        };
        if better {
            self.bd_time[group] = time;
            self.bd[group] = Some(value.to_string());
        }
    }

    #[allow(clippy::type_complexity)]
    fn take(&mut self, emit_to: EmitTo) -> (Vec<u64>, Vec<i64>, Vec<i64>, Vec<Option<String>>) {
        let n = match emit_to {
            EmitTo::All => self.first.len(),
            EmitTo::First(n) => n.min(self.first.len()),
        };
        let first: Vec<i64> = self.first.drain(..n).collect();
        let bits: Vec<u64> = self.bits.drain(..n * 2 * self.words).collect();
        let bd_time: Vec<i64> = self.bd_time.drain(..n).collect();
        let bd: Vec<Option<String>> = self.bd.drain(..n).collect();
        (bits, first, bd_time, bd)
    }

    /// `[bits, first, bd_time, bd]` for the state; the output is `[bits, first, bd]`.
    fn arrays(&mut self, emit_to: EmitTo) -> datafusion::common::Result<Vec<ArrayRef>> {
        let (bits, first, bd_time, bd) = self.take(emit_to);
        let stride = 2 * self.words;
        let mut blobs = BinaryBuilder::with_capacity(first.len(), bits.len() * 8);
        let mut firsts = Int64Builder::with_capacity(first.len());
        let mut times = Int64Builder::with_capacity(first.len());
        let mut values = StringBuilder::new();
        for (g, f) in first.iter().enumerate() {
            let bytes: Vec<u8> = bits[g * stride..(g + 1) * stride]
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect();
            blobs.append_value(bytes);
            firsts.append_option((*f != i64::MAX).then_some(*f));
            times.append_option(bd[g].as_ref().map(|_| bd_time[g]));
            values.append_option(bd[g].as_deref());
        }
        Ok(vec![
            Arc::new(blobs.finish()),
            Arc::new(firsts.finish()),
            Arc::new(times.finish()),
            Arc::new(values.finish()),
        ])
    }

    fn output(&mut self, emit_to: EmitTo) -> datafusion::common::Result<StructArray> {
        let mut a = self.arrays(emit_to)?;
        a.remove(2);
        Ok(StructArray::try_new(RetentionUdaf::fields(), a, None)?)
    }

    fn merge(
        &mut self,
        values: &[ArrayRef],
        group_of: &dyn Fn(usize) -> datafusion::common::Result<usize>,
    ) -> datafusion::common::Result<()> {
        let [blobs, firsts, times, bds] = values else {
            return Err(internal("state has 4 columns"));
        };
        let blobs = blobs
            .as_binary_opt::<i32>()
            .ok_or_else(|| internal("bits"))?;
        let firsts = firsts
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| internal("first"))?;
        let times = times
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| internal("bd_time"))?;
        let bds = bds.as_string_opt::<i32>().ok_or_else(|| internal("bd"))?;
        let stride = 2 * self.words;
        for r in 0..blobs.len() {
            let g = group_of(r)?;
            if !blobs.is_null(r) {
                for (w, chunk) in blobs.value(r).chunks_exact(8).take(stride).enumerate() {
                    let word = u64::from_le_bytes(chunk.try_into().map_err(|_| internal("word"))?);
                    self.bits[g * stride + w] |= word;
                }
            }
            if !firsts.is_null(r) {
                self.first[g] = self.first[g].min(firsts.value(r));
            }
            if !bds.is_null(r) && !times.is_null(r) {
                self.offer(g, times.value(r), bds.value(r));
            }
        }
        Ok(())
    }

    fn update(
        &mut self,
        values: &[ArrayRef],
        group_of: &dyn Fn(usize) -> Option<usize>,
    ) -> datafusion::common::Result<()> {
        let [target, returning, first, bd, ..] = values else {
            return Err(internal("takes 4 arguments"));
        };
        let target = target
            .as_primitive_opt::<Int32Type>()
            .ok_or_else(|| internal("target"))?;
        let returning = returning
            .as_primitive_opt::<Int32Type>()
            .ok_or_else(|| internal("return"))?;
        let first = first
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| internal("first"))?;
        let bd = bd.as_string_opt::<i32>().ok_or_else(|| internal("bd"))?;
        for r in 0..target.len() {
            let Some(g) = group_of(r) else { continue };
            if !target.is_null(r) {
                self.set(g, 0, target.value(r));
            }
            if !returning.is_null(r) {
                self.set(g, 1, returning.value(r));
            }
            if !first.is_null(r) {
                let t = first.value(r);
                self.first[g] = self.first[g].min(t);
                if !bd.is_null(r) {
                    self.offer(g, t, bd.value(r));
                }
            }
        }
        Ok(())
    }
}

impl GroupsAccumulator for RetentionState {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> datafusion::common::Result<()> {
        self.resize(total_num_groups);
        self.update(values, &|r| {
            let keep = opt_filter.is_none_or(|f| f.is_valid(r) && f.value(r));
            keep.then(|| group_indices[r])
        })
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> datafusion::common::Result<ArrayRef> {
        Ok(Arc::new(self.output(emit_to)?))
    }

    fn state(&mut self, emit_to: EmitTo) -> datafusion::common::Result<Vec<ArrayRef>> {
        self.arrays(emit_to)
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> datafusion::common::Result<()> {
        self.resize(total_num_groups);
        self.merge(values, &|r| {
            group_indices
                .get(r)
                .copied()
                .ok_or_else(|| internal("state row without a group"))
        })
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> datafusion::common::Result<Vec<ArrayRef>> {
        let n = values.first().map_or(0, |v| v.len());
        let mut one = RetentionState::new(self.periods);
        one.resize(n);
        one.update(values, &|r| {
            opt_filter
                .is_none_or(|f| f.is_valid(r) && f.value(r))
                .then_some(r)
        })?;
        one.arrays(EmitTo::All)
    }

    fn size(&self) -> usize {
        self.bits.capacity() * 8
            + self.first.capacity() * 16
            + self.bd.capacity() * 24
            + self
                .bd
                .iter()
                .flatten()
                .map(String::capacity)
                .sum::<usize>()
    }
}

/// The row accumulator: one group.
#[derive(Debug)]
struct SingleRetention(RetentionState);

impl Accumulator for SingleRetention {
    fn update_batch(&mut self, values: &[ArrayRef]) -> datafusion::common::Result<()> {
        self.0.resize(1);
        self.0.update(values, &|_| Some(0))
    }

    fn evaluate(&mut self) -> datafusion::common::Result<ScalarValue> {
        self.0.resize(1);
        let s = self.0.output(EmitTo::All)?;
        ScalarValue::try_from_array(&s, 0)
    }

    fn size(&self) -> usize {
        self.0.size() + std::mem::size_of::<Self>()
    }

    fn state(&mut self) -> datafusion::common::Result<Vec<ScalarValue>> {
        self.0.resize(1);
        self.0
            .arrays(EmitTo::All)?
            .iter()
            .map(|a| ScalarValue::try_from_array(a, 0))
            .collect()
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> datafusion::common::Result<()> {
        self.0.resize(1);
        self.0.merge(states, &|_| Ok(0))
    }
}
