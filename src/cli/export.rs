//! `grainstore export --flow ID [--timerange R] > out.gsf`: a flow's grains as a GSF
//! file, written as they arrive.
//!
//! The file has one segment whose id is the flow's id (as mediagrains'
//! `wrap_video_in_gsf` writes) and whose `flow` block carries the flow's source, format
//! and resource, so that `grainstore import` can recreate the flow elsewhere.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use clap::Args;
use futures::StreamExt;
use grainstore::client::{FlowProvider, ReadConfig};
use grainstore::gsf::{GsfDateTime, GsfEncoder, GsfFlow, GsfSegment};
use grainstore::time::{Bound, TimeRange};
use uuid::Uuid;

use super::progress::Progress;
use super::{CliError, CliResult, Exit, ServiceArgs, parse_uuid};

/// `grainstore export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    service: ServiceArgs,
    /// The flow to export.
    #[arg(long, value_name = "ID", value_parser = parse_uuid)]
    flow: Uuid,
    /// Only the grains of this range, e.g. `[1420102800:0_1420102810:0)` (default: all).
    #[arg(long, value_name = "RANGE", value_parser = parse_range, allow_hyphen_values = true)]
    timerange: Option<TimeRange>,
    /// Write to this file instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

fn parse_range(text: &str) -> Result<TimeRange, String> {
    text.parse::<TimeRange>().map_err(|e| {
        format!("{e}; a timerange looks like [1420102800:0_1420102810:0) or 1420102800:0_")
    })
}

/// Runs `grainstore export`.
pub async fn run(args: ExportArgs) -> CliResult {
    let service = args.service.clone();
    let provider = service.connect()?;
    let result = export(&provider, &args).await;
    provider.close().await;
    if let (Err(_), Some(path)) = (&result, &args.output) {
        // Not leave a truncated file that looks like an export.
        let _ = std::fs::remove_file(path);
    }
    result
}

async fn export(provider: &FlowProvider, args: &ExportArgs) -> CliResult {
    let service = &args.service;
    let out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::fs::File::create(path).map_err(|e| {
            CliError::new(
                Exit::Failure,
                format!("cannot create {}: {e}", path.display()),
            )
        })?),
        None if std::io::stdout().is_terminal() => {
            return Err(CliError::new(
                Exit::Usage,
                "refusing to write binary GSF to a terminal; redirect stdout (> out.gsf) or give --output FILE",
            ));
        }
        None => Box::new(std::io::stdout().lock()),
    };
    let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
    let info = provider
        .flow(args.flow)
        .await
        .map_err(|e| service.fail(e))?;
    let range = args.timerange.unwrap_or_else(TimeRange::eternity);
    // The media time the export covers, for a bar that moves with the grains' timestamps.
    let covered = info.timerange.intersect(&range);
    let span = covered.bounds().and_then(|(start, end)| {
        let start = start.timestamp()?;
        let end = end.timestamp()?;
        let ms = (end.to_nanos() - start.to_nanos()) / 1_000_000;
        Some((start, u64::try_from(ms).ok()?))
    });
    let mut progress = Progress::media_time(span.map(|(_, ms)| ms), args.quiet);

    let mut encoder = GsfEncoder::new(Uuid::new_v4(), GsfDateTime::now());
    let flow_json = serde_json::to_string(&info.flow).unwrap_or_default();
    encoder
        .add_segment(GsfSegment {
            local_id: 1,
            id: info.flow.id,
            count: -1,
            tags: Vec::new(),
            flow: Some(GsfFlow {
                source_id: info.flow.source_id,
                flow_id: info.flow.id,
                format: info.flow.format.as_urn().into(),
                data: flow_json,
            }),
        })
        .map_err(|e| CliError::new(Exit::Failure, e.to_string()))?;
    let head = encoder
        .start()
        .map_err(|e| CliError::new(Exit::Failure, e.to_string()))?;
    let write_error = |e: std::io::Error| CliError::io("cannot write the output", e);
    out.write_all(&head).map_err(write_error)?;
    progress.add_bytes(head.len() as u64);

    let reader = provider
        .open_read(args.flow, ReadConfig::default())
        .await
        .map_err(|e| service.fail(e))?;
    let mut grains = reader
        .read_range(&range)
        .await
        .map_err(|e| service.fail(e))?;
    while let Some(grain) = grains.next().await {
        let grain = grain.map_err(|e| service.fail(e))?;
        let chunks = encoder
            .encode_grain_in(1, &grain)
            .map_err(|e| CliError::new(Exit::Failure, e.to_string()))?;
        for chunk in chunks {
            out.write_all(&chunk).map_err(write_error)?;
            progress.add_bytes(chunk.len() as u64);
        }
        let position = span.and_then(|(start, _)| {
            u64::try_from((grain.origin_timestamp().to_nanos() - start.to_nanos()) / 1_000_000).ok()
        });
        progress.add_grain(position);
    }
    out.write_all(&encoder.finish()).map_err(write_error)?;
    out.flush().map_err(write_error)?;
    progress.finish();
    let what = match (range.is_eternity(), range.bounds()) {
        (true, _) | (_, None) => String::new(),
        (false, Some((Bound::Unbounded, Bound::Unbounded))) => String::new(),
        (false, Some(_)) => format!(" in {range}"),
    };
    eprintln!(
        "exported {} grains ({} bytes) of flow {}{what}",
        progress.grains(),
        progress.bytes_moved(),
        args.flow
    );
    Ok(())
}
