//! Projects and their keys: `projects/<id>/project.json`.
//!
//! A project has a public token (`phc_…`, what SDKs send with events) and a secret key
//! (`phs_…`, what gRPC clients and local flag evaluation authenticate with). Projects never see
//! each other's data: every path herd writes is below `projects/<id>/` or `catalog/<id>/`.

use bytes::Bytes;
use herd_core::ProjectId;
use rand::Rng;
use rand::distr::Alphanumeric;
use serde::{Deserialize, Serialize};

use crate::layout;
use crate::store::Storage;
use crate::{Error, Result};

/// A project and its keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    /// Numeric id.
    pub id: ProjectId,
    /// Display name.
    pub name: String,
    /// Public token SDKs send (`phc_…`).
    pub token: String,
    /// Secret key for gRPC and flag definitions (`phs_…`).
    pub secret_key: String,
}

/// What `herd project create` asks for; every field optional.
#[derive(Debug, Clone, Default)]
pub struct NewProject {
    /// Display name (default "Default project").
    pub name: Option<String>,
    /// Explicit token, e.g. the one already baked into apps migrating from PostHog.
    pub token: Option<String>,
    /// Explicit secret key.
    pub secret_key: Option<String>,
}

fn random_key(prefix: &str) -> String {
    let body: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(40)
        .map(char::from)
        .collect();
    format!("{prefix}{body}")
}

/// Loads every project in the store, ordered by id.
pub async fn load_all(storage: &Storage) -> Result<Vec<Project>> {
    let mut out = Vec::new();
    for meta in storage.list(&layout::projects_dir()).await? {
        if meta.location.filename() != Some("project.json") {
            continue;
        }
        let bytes = storage.get(&meta.location).await?;
        let project: Project = serde_json::from_slice(&bytes)
            .map_err(|e| Error::corrupt(meta.location.to_string(), e.to_string()))?;
        out.push(project);
    }
    out.sort_by_key(|p| p.id);
    Ok(out)
}

/// Validates a user-chosen key: printable ASCII without spaces, 8..=200 characters.
fn check_key(what: &str, key: &str) -> Result<()> {
    let ok = (8..=200).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(Error::ProjectExists(format!(
            "{what} must be 8 to 200 printable ASCII characters without spaces"
        )))
    }
}

/// Creates a project with the next free id. Fails when the token or secret key is taken.
pub async fn create(storage: &Storage, new: NewProject) -> Result<Project> {
    if let Some(t) = &new.token {
        check_key("token", t)?;
        if t.starts_with("phx_") {
            return Err(Error::ProjectExists(
                "token must not start with phx_ (that prefix is for personal API keys)".into(),
            ));
        }
    }
    if let Some(k) = &new.secret_key {
        check_key("secret key", k)?;
    }
    loop {
        let existing = load_all(storage).await?;
        for p in &existing {
            if new.token.as_deref() == Some(&p.token) || new.token.as_deref() == Some(&p.secret_key)
            {
                return Err(Error::ProjectExists(format!(
                    "token is already used by project {}",
                    p.id
                )));
            }
            if new.secret_key.as_deref() == Some(&p.secret_key)
                || new.secret_key.as_deref() == Some(&p.token)
            {
                return Err(Error::ProjectExists(format!(
                    "secret key is already used by project {}",
                    p.id
                )));
            }
        }
        let id = existing.last().map_or(1, |p| p.id + 1);
        let project = Project {
            id,
            name: new.name.clone().unwrap_or_else(|| "Default project".into()),
            token: new.token.clone().unwrap_or_else(|| random_key("phc_")),
            secret_key: new.secret_key.clone().unwrap_or_else(|| random_key("phs_")),
        };
        let bytes = serde_json::to_vec_pretty(&project)
            .map_err(|e| Error::corrupt("project.json", e.to_string()))?;
        // Create-only: a concurrent creator that took this id makes us try the next one.
        if storage
            .put_new_durable(&layout::project_file(id), Bytes::from(bytes))
            .await?
        {
            return Ok(project);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ids_increase_and_tokens_are_unique() {
        let s = Storage::open("memory://").expect("memory");
        let a = create(&s, NewProject::default()).await.expect("a");
        assert_eq!(a.id, 1);
        assert!(a.token.starts_with("phc_") && a.secret_key.starts_with("phs_"));
        let b = create(
            &s,
            NewProject {
                name: Some("Migrated".into()),
                token: Some("phc_from_posthog".into()),
                secret_key: None,
            },
        )
        .await
        .expect("b");
        assert_eq!((b.id, b.token.as_str()), (2, "phc_from_posthog"));
        let dup = create(
            &s,
            NewProject {
                token: Some("phc_from_posthog".into()),
                ..Default::default()
            },
        )
        .await;
        assert!(dup.is_err());
        assert!(
            create(
                &s,
                NewProject {
                    token: Some("phx_personal1".into()),
                    ..Default::default()
                }
            )
            .await
            .is_err()
        );
        assert_eq!(load_all(&s).await.expect("load"), vec![a, b]);
    }
}
