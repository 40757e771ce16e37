//! Pages of a project's groups, as both edges list them (gRPC `ListGroups` and the console's
//! JSON): the current state of each group of one type (the merge of every `$groupidentify`),
//! filtered by a case-insensitive search of keys and property values, ordered by key, cut
//! after a cursor (the last key of the previous page).

use herd_core::GroupState;
use herd_storage::Db;

/// Groups per page when the request names no size.
pub const DEFAULT_PAGE: usize = 100;
/// The largest page.
pub const MAX_PAGE: usize = 1000;

/// One page of groups and the cursor of the next (empty on the last page).
#[derive(Debug, Default)]
pub struct Page {
    pub groups: Vec<(String, GroupState)>,
    pub next_cursor: String,
}

/// The page of groups of type `index` after `cursor` matching `search`, `size` at most
/// (0: [`DEFAULT_PAGE`]); a size over [`MAX_PAGE`] is an error naming `page_size`.
pub async fn page(
    db: &Db,
    project: u64,
    index: u8,
    search: &str,
    cursor: &str,
    size: usize,
) -> herd_query::Result<Page> {
    let size = match size {
        0 => DEFAULT_PAGE,
        n if n > MAX_PAGE => {
            return Err(herd_query::Error::invalid(
                "page_size",
                format!("at most {MAX_PAGE}"),
            ));
        }
        n => n,
    };
    let needle = search.to_lowercase();
    let groups = db
        .current_groups_of_type(project, index)
        .await
        .unwrap_or_default();
    let mut keys: Vec<(&String, &GroupState)> = groups
        .iter()
        .filter(|(key, state)| key.as_str() > cursor && matches(key, state, &needle))
        .map(|(key, state)| (key, state))
        .collect();
    keys.sort_by(|a, b| a.0.cmp(b.0));
    let more = keys.len() > size;
    keys.truncate(size);
    let next_cursor = match more {
        true => keys.last().map(|(k, _)| (*k).clone()).unwrap_or_default(),
        false => String::new(),
    };
    Ok(Page {
        groups: keys
            .into_iter()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect(),
        next_cursor,
    })
}

fn matches(key: &str, state: &GroupState, needle: &str) -> bool {
    if needle.is_empty() || key.to_lowercase().contains(needle) {
        return true;
    }
    state.properties().values().any(|v| {
        let text = match v {
            serde_json::Value::String(s) => s.to_lowercase(),
            other => other.to_string().to_lowercase(),
        };
        text.contains(needle)
    })
}
