//! `grainstore flows ls|show|put|rm`.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use futures::StreamExt;
use grainstore::client::{Flow, FlowInfo, FlowQuery, Format, PutOutcome};
use grainstore::store::TagValue;
use uuid::Uuid;

use super::{CliError, CliResult, Exit, ServiceArgs, parse_uuid};

/// `grainstore flows`.
#[derive(Debug, Args)]
pub struct FlowsArgs {
    #[command(flatten)]
    service: ServiceArgs,
    #[command(subcommand)]
    command: FlowsCommand,
}

#[derive(Debug, Subcommand)]
enum FlowsCommand {
    /// List flows (all pages), one per line: id, format, timerange, label.
    Ls(LsArgs),
    /// Show one flow as JSON, with the timerange of its grains.
    Show {
        /// The flow's id.
        #[arg(value_parser = parse_uuid)]
        id: Uuid,
    },
    /// Create a flow, or replace its resource.
    Put(PutArgs),
    /// Delete a flow and all its grains.
    Rm {
        /// The flow's id.
        #[arg(value_parser = parse_uuid)]
        id: Uuid,
    },
}

#[derive(Debug, Args)]
struct LsArgs {
    /// Only flows of this source.
    #[arg(long, value_parser = parse_uuid)]
    source_id: Option<Uuid>,
    /// Only flows of this format.
    #[arg(long, value_enum)]
    format: Option<FormatArg>,
    /// Only flows with this label.
    #[arg(long)]
    label: Option<String>,
    /// Only flows with this tag value (repeatable).
    #[arg(long, value_name = "NAME=VALUE", value_parser = parse_tag)]
    tag: Vec<(String, String)>,
    /// Print JSON (one flow per line) instead of columns.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct PutArgs {
    /// The flow's id.
    #[arg(value_parser = parse_uuid)]
    id: Uuid,
    /// The flow as a JSON file (`-` for stdin), TAMS vocabulary; flags below override it.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Its source (default: the flow's current source, or a new one).
    #[arg(long, value_parser = parse_uuid)]
    source_id: Option<Uuid>,
    /// Its format (required for a new flow without --file).
    #[arg(long, value_enum)]
    format: Option<FormatArg>,
    /// A short name.
    #[arg(long)]
    label: Option<String>,
    /// A longer description.
    #[arg(long)]
    description: Option<String>,
    /// A tag (repeatable).
    #[arg(long, value_name = "NAME=VALUE", value_parser = parse_tag)]
    tag: Vec<(String, String)>,
    /// Refuse grain writes and deletes.
    #[arg(long)]
    read_only: bool,
}

/// A flow format on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// urn:x-nmos:format:video
    Video,
    /// urn:x-nmos:format:audio
    Audio,
    /// urn:x-nmos:format:data
    Data,
    /// urn:x-nmos:format:multi
    Multi,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Format {
        match f {
            FormatArg::Video => Format::Video,
            FormatArg::Audio => Format::Audio,
            FormatArg::Data => Format::Data,
            FormatArg::Multi => Format::Multi,
        }
    }
}

fn parse_tag(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?} is not NAME=VALUE"))
}

/// Runs `grainstore flows ...`.
pub async fn run(args: FlowsArgs) -> CliResult {
    let service = &args.service;
    let provider = service.connect()?;
    let result = match args.command {
        FlowsCommand::Ls(ls) => list(&provider, service, ls).await,
        FlowsCommand::Show { id } => {
            let info = provider.flow(id).await.map_err(|e| service.fail(e))?;
            println!("{}", pretty(&info));
            Ok(())
        }
        FlowsCommand::Put(put) => put_flow(&provider, service, put).await,
        FlowsCommand::Rm { id } => {
            provider
                .delete_flow(id)
                .await
                .map_err(|e| service.fail(e))?;
            eprintln!("deleted flow {id}");
            Ok(())
        }
    };
    provider.close().await;
    result
}

async fn list(
    provider: &grainstore::client::FlowProvider,
    service: &ServiceArgs,
    args: LsArgs,
) -> CliResult {
    let query = FlowQuery {
        source_id: args.source_id,
        format: args.format.map(Format::from),
        label: args.label,
        tags: args.tag,
        ..FlowQuery::default()
    };
    let mut flows = provider.flows(query);
    while let Some(info) = flows.next().await {
        let info = info.map_err(|e| service.fail(e))?;
        if args.json {
            println!("{}", json(&info));
        } else {
            println!(
                "{}  {:<5}  {:<40}  {}",
                info.flow.id,
                info.flow.format.as_urn().rsplit(':').next().unwrap_or(""),
                info.timerange.to_string(),
                info.flow.label.as_deref().unwrap_or("-"),
            );
        }
    }
    Ok(())
}

async fn put_flow(
    provider: &grainstore::client::FlowProvider,
    service: &ServiceArgs,
    args: PutArgs,
) -> CliResult {
    let mut value = match &args.file {
        Some(path) => read_json(path)?,
        None => serde_json::json!({}),
    };
    let Some(map) = value.as_object_mut() else {
        return Err(CliError::new(
            Exit::BadInput,
            "the flow file must hold a JSON object",
        ));
    };
    map.insert("id".into(), args.id.to_string().into());
    if let Some(source) = args.source_id {
        map.insert("source_id".into(), source.to_string().into());
    }
    if let Some(format) = args.format {
        map.insert("format".into(), Format::from(format).as_urn().into());
    }
    if let Some(label) = args.label {
        map.insert("label".into(), label.into());
    }
    if let Some(description) = args.description {
        map.insert("description".into(), description.into());
    }
    if args.read_only {
        map.insert("read_only".into(), true.into());
    }
    if !args.tag.is_empty() {
        let tags = map.entry("tags").or_insert_with(|| serde_json::json!({}));
        if let Some(tags) = tags.as_object_mut() {
            for (name, tag) in args.tag {
                tags.insert(
                    name,
                    serde_json::to_value(TagValue::One(tag)).unwrap_or_default(),
                );
            }
        }
    }
    // Fill what a new flow needs from the flow as it is, when there is one.
    if !map.contains_key("source_id") || !map.contains_key("format") {
        let current = provider
            .find_flow(args.id)
            .await
            .map_err(|e| service.fail(e))?;
        match current {
            Some(current) => {
                map.entry("source_id")
                    .or_insert_with(|| current.flow.source_id.to_string().into());
                map.entry("format")
                    .or_insert_with(|| current.flow.format.as_urn().into());
            }
            None => {
                map.entry("source_id")
                    .or_insert_with(|| Uuid::new_v4().to_string().into());
            }
        }
    }
    if !map.contains_key("format") {
        return Err(CliError::new(
            Exit::Usage,
            format!(
                "flow {} does not exist; give its --format (video, audio, data or multi) to create it",
                args.id
            ),
        ));
    }
    let flow: Flow = serde_json::from_value(value)
        .map_err(|e| CliError::new(Exit::BadInput, format!("invalid flow: {e}")))?;
    let outcome = provider
        .put_flow(&flow)
        .await
        .map_err(|e| service.fail(e))?;
    match outcome {
        PutOutcome::Created => eprintln!("created flow {}", flow.id),
        PutOutcome::Updated => eprintln!("updated flow {}", flow.id),
    }
    Ok(())
}

fn read_json(path: &std::path::Path) -> CliResult<serde_json::Value> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| CliError::io("stdin", e))?
    } else {
        std::fs::read_to_string(path).map_err(|e| {
            CliError::new(
                Exit::BadInput,
                format!("cannot read {}: {e}", path.display()),
            )
        })?
    };
    serde_json::from_str(&text).map_err(|e| {
        CliError::new(
            Exit::BadInput,
            format!("{} is not valid JSON: {e}", path.display()),
        )
    })
}

/// The flow as the service serves it.
fn json_value(info: &FlowInfo) -> serde_json::Value {
    let mut value = serde_json::to_value(&info.flow).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.insert("timerange".into(), info.timerange.to_string().into());
    }
    value
}

fn json(info: &FlowInfo) -> String {
    json_value(info).to_string()
}

fn pretty(info: &FlowInfo) -> String {
    serde_json::to_string_pretty(&json_value(info)).unwrap_or_default()
}
