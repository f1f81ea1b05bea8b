//! `grainstore import FILE.gsf [--flow ID]`: a GSF file's grains into the store.
//!
//! The file is read as a stream and every grain goes to the flow named by its own
//! `flow_id` (a file from mediagrains' `wrap_video_in_gsf` names one; other files may
//! hold several, one segment each). A flow that does not exist is created, with the
//! format its grains imply (or the one the segment's `flow` block gives), the grains'
//! source, and the file's name as label.
//!
//! `--flow ID` remaps: the grains of a single-flow file go into flow ID instead (their
//! `flow_id`, and with `--source-id` their `source_id`, rewritten). A file of several
//! flows cannot be remapped into one: flows hold grains of one kind, and their
//! timestamps would collide.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::PathBuf;

use bytes::Bytes;
use clap::Args;
use grainstore::client::{Flow, FlowProvider, FlowWriter, Format, WriteConfig, WriteSummary};
use grainstore::grain::{Grain, GrainType};
use grainstore::gsf::{GsfDecoder, GsfEvent, GsfHead};
use tokio::io::AsyncReadExt;
use uuid::Uuid;

use super::progress::Progress;
use super::{CliError, CliResult, Exit, ServiceArgs, parse_uuid};

/// `grainstore import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    service: ServiceArgs,
    /// The GSF file (`-` for stdin).
    #[arg(value_name = "FILE.gsf")]
    file: PathBuf,
    /// Import a single-flow file into this flow instead of the one its grains name.
    #[arg(long, value_name = "ID", value_parser = parse_uuid)]
    flow: Option<Uuid>,
    /// With --flow: the source the grains (and a created flow) get.
    #[arg(long, value_name = "ID", value_parser = parse_uuid, requires = "flow")]
    source_id: Option<Uuid>,
    /// The label of flows created (default: the file's name).
    #[arg(long)]
    label: Option<String>,
    /// Fail instead of creating a flow that does not exist.
    #[arg(long)]
    no_create: bool,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

/// One flow being imported.
struct Target {
    writer: FlowWriter,
    grains: u64,
}

/// Runs `grainstore import`.
pub async fn run(args: ImportArgs) -> CliResult {
    let service = args.service.clone();
    let provider = service.connect()?;
    let result = import(&provider, &args).await;
    provider.close().await;
    result
}

async fn import(provider: &FlowProvider, args: &ImportArgs) -> CliResult {
    let service = &args.service;
    let (mut input, total) = open(&args.file).await?;
    let mut progress = Progress::bytes(total, args.quiet);
    let mut decoder = GsfDecoder::new().with_max_grain_size(u32::MAX as usize);
    let mut head: Option<GsfHead> = None;
    let mut targets: HashMap<Uuid, Target> = HashMap::new();
    // The first flow of the file, which --flow remaps.
    let mut remapped_from: Option<Uuid> = None;
    let mut buffer = vec![0u8; 1 << 20];
    let name = args.file.display().to_string();
    let fed = async {
        loop {
            let n = input
                .read(&mut buffer)
                .await
                .map_err(|e| CliError::io(&format!("cannot read {name}"), e))?;
            if n > 0 {
                decoder.push(Bytes::copy_from_slice(&buffer[..n]));
                progress.add_bytes(n as u64);
            }
            loop {
                let event = decoder.next_event().map_err(|e| bad_gsf(&name, &e))?;
                match event {
                    None => break,
                    Some(GsfEvent::Head(h)) => {
                        if args.flow.is_some() && h.segments.len() > 1 {
                            return Err(several_flows(&name, h.segments.len()));
                        }
                        head = Some(h);
                    }
                    Some(GsfEvent::End) => {}
                    Some(GsfEvent::Grain { local_id, grain }) => {
                        let grain = match args.flow {
                            None => grain,
                            Some(flow) => {
                                let from = *remapped_from.get_or_insert(grain.flow_id());
                                if grain.flow_id() != from {
                                    return Err(several_flows(&name, 2));
                                }
                                remap(grain, flow, args.source_id)?
                            }
                        };
                        let target = match targets.entry(grain.flow_id()) {
                            Entry::Occupied(entry) => entry.into_mut(),
                            Entry::Vacant(entry) => {
                                let segment_format = head
                                    .as_ref()
                                    .and_then(|h| {
                                        h.segments.iter().find(|s| s.local_id == local_id)
                                    })
                                    .and_then(|s| s.flow.as_ref())
                                    .and_then(|f| Format::from_urn(&f.format));
                                ensure_flow(provider, args, &grain, segment_format).await?;
                                let writer = provider
                                    .open_write(grain.flow_id(), WriteConfig::default())
                                    .map_err(|e| service.fail(e))?;
                                entry.insert(Target { writer, grains: 0 })
                            }
                        };
                        target
                            .writer
                            .write(&grain)
                            .await
                            .map_err(|e| service.fail(e))?;
                        target.grains += 1;
                        progress.add_grain(None);
                    }
                }
            }
            if n == 0 {
                break;
            }
        }
        decoder.finish().map_err(|e| bad_gsf(&name, &e))
    }
    .await;
    let mut summaries: Vec<(Uuid, WriteSummary)> = Vec::new();
    let mut failure = None;
    for (flow, target) in targets {
        match target.writer.close().await {
            Ok(summary) => summaries.push((flow, summary)),
            Err(e) => failure = failure.or(Some(service.fail(e))),
        }
    }
    progress.finish();
    summaries.sort_by_key(|(flow, _)| *flow);
    for (flow, summary) in &summaries {
        println!(
            "flow {flow}: {} grains written, {} unchanged, timerange {}",
            summary.written, summary.unchanged, summary.timerange
        );
    }
    if let Err(mut e) = fed {
        // The complete grains before the fault are committed (the writers were closed).
        let committed: u64 = summaries.iter().map(|(_, s)| s.committed()).sum();
        e.message = format!(
            "{}; the {committed} grains before it were imported",
            e.message
        );
        return Err(e);
    }
    if let Some(failure) = failure {
        return Err(failure);
    }
    if summaries.is_empty() {
        eprintln!("{name} holds no grains; nothing imported");
    }
    Ok(())
}

/// The input and its size when known.
async fn open(
    path: &std::path::Path,
) -> CliResult<(Box<dyn tokio::io::AsyncRead + Unpin + Send>, Option<u64>)> {
    if path.as_os_str() == "-" {
        return Ok((Box::new(tokio::io::stdin()), None));
    }
    let file = tokio::fs::File::open(path).await.map_err(|e| {
        CliError::new(
            Exit::BadInput,
            format!("cannot open {}: {e}", path.display()),
        )
    })?;
    let size = file.metadata().await.ok().map(|m| m.len());
    Ok((Box::new(file), size))
}

fn bad_gsf(name: &str, e: &grainstore::gsf::GsfError) -> CliError {
    CliError::new(
        Exit::BadInput,
        format!("{name} is not a valid GSF file: {e}; check it with `grainstore probe {name}`"),
    )
}

fn several_flows(name: &str, n: usize) -> CliError {
    CliError::new(
        Exit::Usage,
        format!(
            "{name} holds {n} or more flows; --flow remaps a single-flow file only: import without --flow to keep the file's flow ids"
        ),
    )
}

/// The grain moved to `flow` (and `source`).
fn remap(grain: Grain, flow: Uuid, source: Option<Uuid>) -> CliResult<Grain> {
    let (mut header, payload) = grain.into_parts();
    header.flow_id = flow;
    if let Some(source) = source {
        header.source_id = source;
    }
    Grain::new(header, payload)
        .map_err(|e| CliError::new(Exit::BadInput, format!("cannot remap a grain: {e}")))
}

/// The format of a flow of grains of this type.
fn format_of(grain_type: GrainType) -> Format {
    match grain_type {
        GrainType::Video | GrainType::CodedVideo => Format::Video,
        GrainType::Audio | GrainType::CodedAudio => Format::Audio,
        GrainType::Event | GrainType::Empty => Format::Data,
    }
}

/// Creates the grain's flow when it does not exist (unless `--no-create`).
async fn ensure_flow(
    provider: &FlowProvider,
    args: &ImportArgs,
    grain: &Grain,
    segment_format: Option<Format>,
) -> CliResult {
    let service = &args.service;
    let id = grain.flow_id();
    if provider
        .find_flow(id)
        .await
        .map_err(|e| service.fail(e))?
        .is_some()
    {
        return Ok(());
    }
    if args.no_create {
        return Err(CliError::new(
            Exit::NotFound,
            format!(
                "flow {id} does not exist; create it with `grainstore flows put {id} --format ...` or import without --no-create"
            ),
        ));
    }
    let label = args.label.clone().unwrap_or_else(|| {
        args.file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "imported".into())
    });
    let flow = Flow {
        id,
        source_id: grain.source_id(),
        format: segment_format.unwrap_or_else(|| format_of(grain.grain_type())),
        label: Some(label),
        description: None,
        tags: Default::default(),
        codec: None,
        container: None,
        essence_parameters: None,
        read_only: false,
        created: None,
        metadata_updated: None,
        extra: Default::default(),
    };
    provider
        .put_flow(&flow)
        .await
        .map_err(|e| service.fail(e))?;
    eprintln!("created flow {id} ({})", flow.format.as_urn());
    Ok(())
}
