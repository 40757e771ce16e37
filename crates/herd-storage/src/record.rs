//! The payload of one WAL record: what one acknowledged request added to one project.
//!
//! ```text
//! u32 LE format (1) | u64 LE project | u32 LE meta length | meta JSON | Arrow IPC stream
//! meta = {"groups": [GroupRow…], "warnings": [IngestWarning…]}
//! ```
//! The events are the final rows (timestamps corrected, groups mapped), so replay re-applies
//! them without re-deciding anything; group rows carry their versions, so replay is idempotent.

use std::io::Cursor;

use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use herd_core::schema::events_schema;
use herd_core::{GroupRow, IngestWarning, ProjectId};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

const FORMAT: u32 = 1;

/// One decoded WAL record.
#[derive(Debug, Clone, PartialEq)]
pub struct WalRecord {
    /// The project the rows belong to.
    pub project: ProjectId,
    /// New events (events schema), if any.
    pub events: Option<RecordBatch>,
    /// Groups-table rows written by this request.
    pub groups: Vec<GroupRow>,
    /// Ingestion warnings raised by this request.
    pub warnings: Vec<IngestWarning>,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    #[serde(default)]
    groups: Vec<GroupRow>,
    #[serde(default)]
    warnings: Vec<IngestWarning>,
}

impl WalRecord {
    /// Encodes the record.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let meta = serde_json::to_vec(&Meta {
            groups: self.groups.clone(),
            warnings: self.warnings.clone(),
        })
        .map_err(|e| Error::corrupt("WAL record", e.to_string()))?;
        let mut out = Vec::with_capacity(16 + meta.len() + 1024);
        out.extend_from_slice(&FORMAT.to_le_bytes());
        out.extend_from_slice(&self.project.to_le_bytes());
        out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        out.extend_from_slice(&meta);
        if let Some(batch) = &self.events {
            let mut writer = StreamWriter::try_new(&mut out, &events_schema())?;
            writer.write(batch)?;
            writer.finish()?;
        }
        Ok(out)
    }

    /// Decodes a record written by [`WalRecord::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let corrupt = |reason: &str| Error::corrupt("WAL record", reason);
        if bytes.len() < 16 {
            return Err(corrupt("shorter than its header"));
        }
        let u32_at =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        if u32_at(0) != FORMAT {
            return Err(corrupt("unknown format version"));
        }
        let mut project = [0u8; 8];
        project.copy_from_slice(&bytes[4..12]);
        let project = u64::from_le_bytes(project);
        let meta_len = u32_at(12) as usize;
        let meta_end = 16 + meta_len;
        if bytes.len() < meta_end {
            return Err(corrupt("meta runs past the record"));
        }
        let meta: Meta = serde_json::from_slice(&bytes[16..meta_end])
            .map_err(|e| Error::corrupt("WAL record meta", e.to_string()))?;
        let events = if bytes.len() > meta_end {
            let reader = StreamReader::try_new(Cursor::new(&bytes[meta_end..]), None)?;
            let mut batches = Vec::new();
            for b in reader {
                batches.push(b?);
            }
            let batch = arrow::compute::concat_batches(&events_schema(), &batches)?;
            // Re-attach the canonical schema (extension metadata included).
            Some(RecordBatch::try_new(
                events_schema(),
                batch.columns().to_vec(),
            )?)
        } else {
            None
        };
        Ok(Self {
            project,
            events,
            groups: meta.groups,
            warnings: meta.warnings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_core::{Event, EventBatchBuilder};

    #[test]
    fn round_trips() {
        let mut b = EventBatchBuilder::with_capacity(1);
        b.push(&Event {
            uuid: uuid::Uuid::from_u128(9),
            event: "$pageview".into(),
            distinct_id: "u".into(),
            timestamp: 1,
            properties: "{}".into(),
            groups: [
                "a".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ],
            created_at: 2,
        });
        let rec = WalRecord {
            project: 7,
            events: Some(b.finish()),
            groups: vec![GroupRow {
                group_type_index: 0,
                group_key: "a".into(),
                group_properties: "{}".into(),
                created_at: 1,
                version: 1,
                updated_at: 2,
            }],
            warnings: vec![],
        };
        let back = WalRecord::decode(&rec.encode().expect("encode")).expect("decode");
        assert_eq!(back, rec);
        let empty = WalRecord {
            project: 1,
            events: None,
            groups: vec![],
            warnings: vec![],
        };
        assert_eq!(
            WalRecord::decode(&empty.encode().expect("encode")).expect("decode"),
            empty
        );
        assert!(WalRecord::decode(b"junk").is_err());
    }
}
