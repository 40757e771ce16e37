//! [`HerdCodec`]: how herd's plan nodes travel from the coordinator to a worker, with
//! everything they carry (a scan's files and row selections, a funnel's parameters, a
//! breakdown's ranking and limit). herd's functions need no codec: they are stateless and
//! registered by name on every worker ([`super::functions`]), their parameters travel as
//! literal arguments ([`crate::params`]).
//!
//! Payloads are JSON of [`NodeWire`]; DataFusion's own parts inside them (a scan's
//! `DataSourceExec`, a ranking aggregate's arguments) are in DataFusion's protobuf form,
//! base64-encoded.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::FunctionRegistry;
use datafusion::execution::TaskContext;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::physical_expr::aggregate::AggregateExprBuilder;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::physical_plan::from_proto::{parse_physical_expr, parse_physical_sort_exprs};
use datafusion_proto::physical_plan::to_proto::{
    serialize_physical_expr, serialize_physical_sort_exprs,
};
use datafusion_proto::physical_plan::{
    PhysicalExtensionCodec, PhysicalPlanDecodeContext, PhysicalProtoConverterExtension,
};
use datafusion_proto::protobuf::{PhysicalExprNode, PhysicalPlanNode, PhysicalSortExprNode};
use prost::Message;
use serde::{Deserialize, Serialize};

use super::scan::{self, EventsScanExec, Selection};
use crate::files::{FileIndexes, WorkerReaderFactory};
use crate::funnel::{FunnelExec, FunnelFoldExec, FunnelWire};
use crate::trends::breakdown::{BreakdownExec, Limit};
use crate::{STORE_URL, query_events_schema};

/// Encodes herd's nodes and functions on the coordinator and decodes them on a worker,
/// where scans read footers through the worker's file index.
#[derive(Debug, Default)]
pub struct HerdCodec {
    indexes: Arc<FileIndexes>,
}

impl HerdCodec {
    /// A codec whose decoded scans share `indexes`.
    pub(crate) fn new(indexes: Arc<FileIndexes>) -> Self {
        Self { indexes }
    }
}

/// A herd plan node besides its inputs.
#[derive(Debug, Serialize, Deserialize)]
enum NodeWire {
    EventsScan {
        /// The `DataSourceExec`, protobuf, base64.
        scan: String,
        /// Each file's row selection, by file group then file.
        selections: Vec<Vec<Option<Selection>>>,
    },
    Funnel(FunnelWire),
    FunnelFold {
        stage: crate::funnel::FoldStage,
        kind: crate::funnel::FoldKind,
    },
    Breakdown {
        rank: AggregateWire,
        limit: Limit,
    },
}

/// An aggregate function call (a breakdown's ranking).
#[derive(Debug, Serialize, Deserialize)]
struct AggregateWire {
    udaf: String,
    /// Arguments, each a protobuf `PhysicalExprNode`, base64.
    args: Vec<String>,
    distinct: bool,
    ignore_nulls: bool,
    reversed: bool,
    /// Its ordering (`WITHIN GROUP (ORDER BY …)`), each a protobuf `PhysicalSortExprNode`.
    order_by: Vec<String>,
    alias: String,
}

fn codec_error(what: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Internal(format!("herd codec: {what}"))
}

fn to_json<T: Serialize>(value: &T, buf: &mut Vec<u8>) -> Result<()> {
    serde_json::to_writer(buf, value).map_err(codec_error)
}

fn from_json<'a, T: Deserialize<'a>>(buf: &'a [u8]) -> Result<T> {
    serde_json::from_slice(buf).map_err(codec_error)
}

fn encode_b64<M: Message>(message: &M) -> String {
    B64.encode(message.encode_to_vec())
}

fn decode_b64<M: Message + Default>(text: &str) -> Result<M> {
    let bytes = B64.decode(text).map_err(codec_error)?;
    M::decode(bytes.as_slice()).map_err(codec_error)
}

impl HerdCodec {
    fn node_wire(
        &self,
        node: &Arc<dyn ExecutionPlan>,
        converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<NodeWire> {
        if let Some(scan) = node.downcast_ref::<EventsScanExec>() {
            let proto = converter.execution_plan_to_proto(scan.scan(), self)?;
            return Ok(NodeWire::EventsScan {
                scan: encode_b64(&proto),
                selections: scan::selections(scan)?,
            });
        }
        if let Some(funnel) = node.downcast_ref::<FunnelExec>() {
            return Ok(NodeWire::Funnel(funnel.wire()));
        }
        if let Some(fold) = node.downcast_ref::<FunnelFoldExec>() {
            let (stage, kind) = fold.parts();
            return Ok(NodeWire::FunnelFold { stage, kind });
        }
        if let Some(breakdown) = node.downcast_ref::<BreakdownExec>() {
            let (rank, limit) = breakdown.parts();
            let args = rank
                .expressions()
                .iter()
                .map(|e| serialize_physical_expr(e, self).map(|p| encode_b64(&p)))
                .collect::<Result<Vec<_>>>()?;
            let rank = AggregateWire {
                udaf: rank.fun().name().to_string(),
                args,
                distinct: rank.is_distinct(),
                ignore_nulls: rank.ignore_nulls(),
                reversed: rank.is_reversed(),
                order_by: serialize_physical_sort_exprs(
                    rank.order_bys().iter().cloned(),
                    self,
                    converter,
                )?
                .iter()
                .map(encode_b64)
                .collect(),
                alias: rank.name().to_string(),
            };
            return Ok(NodeWire::Breakdown {
                rank,
                limit: limit.clone(),
            });
        }
        Err(codec_error(format!("no codec for {}", node.name())))
    }

    fn decode_node(
        &self,
        wire: NodeWire,
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let one_input = || match inputs {
            [input] => Ok(input.clone()),
            _ => Err(codec_error("expected one input")),
        };
        Ok(match wire {
            NodeWire::EventsScan { scan, selections } => {
                let proto: PhysicalPlanNode = decode_b64(&scan)?;
                let decode_ctx = PhysicalPlanDecodeContext::new(ctx, self);
                let plan = converter.proto_to_execution_plan(&proto, &decode_ctx)?;
                let store = ctx
                    .runtime_env()
                    .object_store(ObjectStoreUrl::parse(STORE_URL)?)?;
                let reader = Arc::new(WorkerReaderFactory {
                    store,
                    indexes: self.indexes.clone(),
                    schema: query_events_schema(),
                });
                Arc::new(scan::restore(plan, &selections, reader)?)
            }
            NodeWire::Funnel(wire) => Arc::new(FunnelExec::from_wire(wire, inputs)?),
            NodeWire::FunnelFold { stage, kind } => {
                Arc::new(FunnelFoldExec::new(one_input()?, stage, kind))
            }
            NodeWire::Breakdown { rank, limit } => {
                let input = one_input()?;
                let schema = input.schema();
                let udaf = ctx.udaf(&rank.udaf)?;
                let args = rank
                    .args
                    .iter()
                    .map(|a| {
                        let proto: PhysicalExprNode = decode_b64(a)?;
                        parse_physical_expr(&proto, ctx, &schema, self)
                    })
                    .collect::<Result<Vec<_>>>()?;
                let decode_ctx = PhysicalPlanDecodeContext::new(ctx, self);
                let order_by = rank
                    .order_by
                    .iter()
                    .map(|o| decode_b64::<PhysicalSortExprNode>(o))
                    .collect::<Result<Vec<_>>>()?;
                let order_by =
                    parse_physical_sort_exprs(&order_by, &decode_ctx, &schema, converter)?;
                let rank = AggregateExprBuilder::new(udaf, args)
                    .schema(schema.clone())
                    .alias(rank.alias)
                    .with_distinct(rank.distinct)
                    .with_ignore_nulls(rank.ignore_nulls)
                    .with_reversed(rank.reversed)
                    .order_by(order_by)
                    .build()?;
                Arc::new(BreakdownExec::try_new(input, Arc::new(rank), limit)?)
            }
        })
    }
}

impl PhysicalExtensionCodec for HerdCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.decode_node(from_json(buf)?, inputs, ctx, converter)
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        to_json(&self.node_wire(&node, converter)?, buf)
    }
}
