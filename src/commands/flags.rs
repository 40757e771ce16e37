//! `herd flags create|update|list|get|delete`: a gRPC client of a running `herd serve` that
//! manages a project's feature flags. A definition comes from a JSON file in PostHog's flag
//! format (`--file`), or is built from flags (`--rollout`, `--property`, `--variant`, …).
//! Every command prints the flag(s) as JSON lines: `{"id", "key", "version", "active",
//! "group_type", "definition"}`.

use anyhow::{Context, bail};
use herd_server::grpc::proto;
use proto::flags_service_client::FlagsServiceClient;
use serde_json::{Map, Value, json};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

/// Where the server is and how to authenticate.
#[derive(Debug, clap::Args)]
pub(crate) struct FlagsClientArgs {
    /// gRPC address of `herd serve`.
    #[arg(long, env = "HERD_GRPC_URL", default_value = "http://127.0.0.1:50051")]
    server: String,
    /// The project's secret key (`herd project list` shows it).
    #[arg(long, env = "HERD_SECRET_KEY")]
    key: String,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum FlagsCommand {
    /// Define a new flag.
    Create(CreateArgs),
    /// Replace a flag's definition (by id or key).
    Update(UpdateArgs),
    /// The project's flags, one JSON line each.
    List(FlagsClientArgs),
    /// One flag (by id or key).
    Get(RefArgs),
    /// Remove a flag (by id or key).
    Delete(RefArgs),
}

/// A definition, from a file or from flags.
#[derive(Debug, clap::Args)]
pub(crate) struct DefinitionArgs {
    /// The flag as JSON in PostHog's format (`{"key", "filters": {"groups": [...], ...}}`);
    /// `-` reads standard input. The other targeting flags then may not be given.
    #[arg(long)]
    file: Option<std::path::PathBuf>,
    /// Flag key (overrides the file's).
    #[arg(long = "flag-key")]
    flag_key: Option<String>,
    /// Display name.
    #[arg(long)]
    name: Option<String>,
    /// Make it a group flag: bucket on the key of this group type (e.g. `company`); the
    /// project gets a slot for the type if it has none yet.
    #[arg(long)]
    group_type: Option<String>,
    /// Percentage of matching actors that get the flag (default 100).
    #[arg(long)]
    rollout: Option<f64>,
    /// A condition `KEY OPERATOR [VALUE[,VALUE…]]`, e.g. `plan exact enterprise` or
    /// `email icontains @acme.com`; repeat to AND several. Group flags read group
    /// properties, person flags person properties.
    #[arg(long)]
    property: Vec<String>,
    /// A variant `KEY=PERCENT` of a multivariate flag; repeat (they must sum to 100).
    #[arg(long)]
    variant: Vec<String>,
    /// Payload (JSON) of the `true` value.
    #[arg(long)]
    payload: Option<String>,
    /// Define it switched off.
    #[arg(long)]
    inactive: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct CreateArgs {
    #[command(flatten)]
    client: FlagsClientArgs,
    #[command(flatten)]
    definition: DefinitionArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct UpdateArgs {
    #[command(flatten)]
    client: FlagsClientArgs,
    /// The flag's id or key.
    flag: String,
    #[command(flatten)]
    definition: DefinitionArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RefArgs {
    #[command(flatten)]
    client: FlagsClientArgs,
    /// The flag's id or key.
    flag: String,
}

pub(crate) async fn run(command: FlagsCommand) -> anyhow::Result<()> {
    match command {
        FlagsCommand::Create(args) => {
            let (json, group_type) = args.definition.build(None)?;
            let mut client = client(&args.client).await?;
            let flag = client
                .create_flag(authorized(
                    &args.client,
                    proto::CreateFlagRequest {
                        definition_json: json,
                        group_type,
                    },
                )?)
                .await
                .map_err(status_error)?
                .into_inner();
            print_flag(&flag)
        }
        FlagsCommand::Update(args) => {
            let (json, group_type) = args.definition.build(Some(&args.flag))?;
            let mut client = client(&args.client).await?;
            let flag = client
                .update_flag(authorized(
                    &args.client,
                    proto::UpdateFlagRequest {
                        flag: Some(flag_ref(&args.flag)),
                        definition_json: json,
                        group_type,
                    },
                )?)
                .await
                .map_err(status_error)?
                .into_inner();
            print_flag(&flag)
        }
        FlagsCommand::List(args) => {
            let mut client = client(&args).await?;
            let list = client
                .list_flags(authorized(&args, proto::ListFlagsRequest {})?)
                .await
                .map_err(status_error)?
                .into_inner();
            for flag in &list.flags {
                print_flag(flag)?;
            }
            Ok(())
        }
        FlagsCommand::Get(args) => {
            let mut client = client(&args.client).await?;
            let flag = client
                .get_flag(authorized(&args.client, flag_ref(&args.flag))?)
                .await
                .map_err(status_error)?
                .into_inner();
            print_flag(&flag)
        }
        FlagsCommand::Delete(args) => {
            let mut client = client(&args.client).await?;
            let flag = client
                .delete_flag(authorized(&args.client, flag_ref(&args.flag))?)
                .await
                .map_err(status_error)?
                .into_inner();
            print_flag(&flag)
        }
    }
}

/// A numeric argument is an id, anything else a key.
fn flag_ref(text: &str) -> proto::FlagRef {
    match text.parse::<u64>() {
        Ok(id) if id > 0 => proto::FlagRef {
            id,
            key: String::new(),
        },
        _ => proto::FlagRef {
            id: 0,
            key: text.to_owned(),
        },
    }
}

impl DefinitionArgs {
    /// The definition JSON and the group type to send. `existing` is the flag being
    /// updated (its key is kept when neither the file nor `--flag-key` names one).
    fn build(&self, existing: Option<&str>) -> anyhow::Result<(String, String)> {
        let group_type = self.group_type.clone().unwrap_or_default();
        let mut flag: Map<String, Value> = match &self.file {
            Some(path) => {
                if self.rollout.is_some()
                    || !self.property.is_empty()
                    || !self.variant.is_empty()
                    || self.payload.is_some()
                {
                    bail!(
                        "--file gives the whole definition: leave out --rollout, --property, \
                         --variant and --payload"
                    );
                }
                let text = if path.as_os_str() == "-" {
                    std::io::read_to_string(std::io::stdin()).context("read standard input")?
                } else {
                    std::fs::read_to_string(path)
                        .with_context(|| format!("read {}", path.display()))?
                };
                match serde_json::from_str(&text)
                    .with_context(|| format!("{} is not JSON", path.display()))?
                {
                    Value::Object(map) => map,
                    _ => bail!("{}: the flag must be a JSON object", path.display()),
                }
            }
            None => self.built_from_flags(!group_type.is_empty())?,
        };
        if let Some(key) = &self.flag_key {
            flag.insert("key".into(), Value::String(key.clone()));
        }
        if !flag.contains_key("key")
            && let Some(existing) = existing.filter(|e| e.parse::<u64>().is_err())
        {
            flag.insert("key".into(), Value::String(existing.to_owned()));
        }
        if !flag.contains_key("key") {
            bail!("the flag needs a key: --flag-key KEY (or \"key\" in the file)");
        }
        if let Some(name) = &self.name {
            flag.insert("name".into(), Value::String(name.clone()));
        }
        if self.inactive {
            flag.insert("active".into(), Value::Bool(false));
        }
        Ok((Value::Object(flag).to_string(), group_type))
    }

    fn built_from_flags(&self, group: bool) -> anyhow::Result<Map<String, Value>> {
        let properties = self
            .property
            .iter()
            .map(|p| parse_property(p, group))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut filters = json!({
            "groups": [{
                "properties": properties,
                "rollout_percentage": self.rollout.unwrap_or(100.0),
            }],
        });
        if !self.variant.is_empty() {
            let variants = self
                .variant
                .iter()
                .map(|v| {
                    let (key, pct) = v
                        .split_once('=')
                        .with_context(|| format!("--variant {v:?}: expected KEY=PERCENT"))?;
                    let pct: f64 = pct
                        .trim()
                        .parse()
                        .with_context(|| format!("--variant {v:?}: {pct:?} is not a number"))?;
                    Ok(json!({"key": key.trim(), "name": "", "rollout_percentage": pct}))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            filters["multivariate"] = json!({ "variants": variants });
        }
        if let Some(payload) = &self.payload {
            serde_json::from_str::<Value>(payload)
                .with_context(|| format!("--payload {payload:?} is not JSON"))?;
            filters["payloads"] = json!({ "true": payload });
        }
        let mut flag = Map::new();
        flag.insert("filters".into(), filters);
        Ok(flag)
    }
}

/// `KEY OPERATOR [VALUE[,VALUE…]]` → a PostHog property filter.
fn parse_property(text: &str, group: bool) -> anyhow::Result<Value> {
    let mut parts = text.trim().splitn(3, char::is_whitespace);
    let (Some(key), Some(operator)) = (parts.next(), parts.next()) else {
        bail!("--property {text:?}: expected `KEY OPERATOR [VALUE[,VALUE…]]`");
    };
    let raw = parts.next().unwrap_or("").trim();
    let value = match operator {
        "is_set" | "is_not_set" => Value::String(operator.to_owned()),
        _ if raw.is_empty() => bail!("--property {text:?}: operator {operator} needs a value"),
        "exact" | "is_not" => Value::Array(
            raw.split(',')
                .map(|v| Value::String(v.trim().to_owned()))
                .collect(),
        ),
        _ => Value::String(raw.to_owned()),
    };
    Ok(json!({
        "key": key,
        "operator": operator,
        "value": value,
        "type": if group { "group" } else { "person" },
    }))
}

async fn client(args: &FlagsClientArgs) -> anyhow::Result<FlagsServiceClient<Channel>> {
    let channel = Channel::from_shared(args.server.clone())
        .context("--server must be a URL like http://127.0.0.1:50051")?
        .connect()
        .await
        .with_context(|| format!("connect to {}", args.server))?;
    Ok(FlagsServiceClient::new(channel))
}

fn authorized<T>(args: &FlagsClientArgs, message: T) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    let value: MetadataValue<_> = format!("Bearer {}", args.key)
        .parse()
        .context("--key is not valid in a header")?;
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

fn print_flag(flag: &proto::Flag) -> anyhow::Result<()> {
    let definition: Value =
        serde_json::from_str(&flag.definition_json).context("the server sent invalid JSON")?;
    println!(
        "{}",
        json!({
            "id": flag.id,
            "key": flag.key,
            "version": flag.version,
            "active": flag.active,
            "group_type": flag.group_type,
            "definition": definition,
        })
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn properties_from_the_command_line() {
        assert_eq!(
            parse_property("plan exact enterprise, pro", true).unwrap(),
            json!({"key": "plan", "operator": "exact", "value": ["enterprise", "pro"],
                   "type": "group"})
        );
        assert_eq!(
            parse_property("email is_set", false).unwrap()["value"],
            "is_set"
        );
        assert!(parse_property("email", false).is_err());
        assert!(parse_property("email icontains", false).is_err());
    }
}
