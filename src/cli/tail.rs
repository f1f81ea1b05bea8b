//! `grainstore tail --flow ID [--from TS] [--json]`: follows a flow live, one line per
//! grain, resuming by itself across disconnects and server restarts.

use std::io::Write;

use clap::Args;
use futures::StreamExt;
use grainstore::client::{ReadConfig, ReadStart};
use grainstore::grain::Grain;
use grainstore::time::Timestamp;
use uuid::Uuid;

use super::{CliError, CliResult, ServiceArgs, parse_uuid};

/// `grainstore tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    #[command(flatten)]
    service: ServiceArgs,
    /// The flow to follow.
    #[arg(long, value_name = "ID", value_parser = parse_uuid)]
    flow: Uuid,
    /// Start at this timestamp (`sec:nsec`), replaying stored grains from there
    /// (default: only grains written from now on).
    #[arg(long, value_name = "TS", value_parser = parse_timestamp, allow_hyphen_values = true, conflicts_with_all = ["after", "beginning"])]
    from: Option<Timestamp>,
    /// Start just after this timestamp (resume after the last grain a previous run printed).
    #[arg(long, value_name = "TS", value_parser = parse_timestamp, allow_hyphen_values = true, conflicts_with = "beginning")]
    after: Option<Timestamp>,
    /// Start at the flow's first grain.
    #[arg(long)]
    beginning: bool,
    /// Print each grain's JSON form (`{"meta": .., "data": base64}`), one per line.
    #[arg(long)]
    json: bool,
    /// Leave payloads out (headers only).
    #[arg(long)]
    no_payload: bool,
    /// Stop after this many grains.
    #[arg(long, short = 'n', value_name = "N")]
    count: Option<u64>,
}

fn parse_timestamp(text: &str) -> Result<Timestamp, String> {
    text.parse::<Timestamp>()
        .map_err(|e| format!("{e}; a timestamp looks like 1420102800:40000000"))
}

/// Runs `grainstore tail` until the count is reached, Ctrl-C, or a failure it cannot get
/// past (the flow deleted).
pub async fn run(args: TailArgs) -> CliResult {
    let service = &args.service;
    let provider = service.connect()?;
    let start = match (args.from, args.after, args.beginning) {
        (Some(ts), _, _) => ReadStart::At(ts),
        (_, Some(ts), _) => ReadStart::After(ts),
        (_, _, true) => ReadStart::Beginning,
        _ => ReadStart::Now,
    };
    let config = ReadConfig {
        start,
        payload: !args.no_payload,
        ..ReadConfig::default()
    };
    let reader = provider
        .open_read(args.flow, config)
        .await
        .map_err(|e| service.fail(e))?;
    let mut grains = reader.grains();
    let mut printed = 0u64;
    let mut stdout = std::io::stdout().lock();
    let result = loop {
        if args.count.is_some_and(|n| printed >= n) {
            break Ok(());
        }
        let next = tokio::select! {
            next = grains.next() => next,
            _ = tokio::signal::ctrl_c() => break Ok(()),
        };
        let grain = match next {
            Some(Ok(grain)) => grain,
            Some(Err(e)) => break Err(service.fail(e)),
            None => break Ok(()),
        };
        let line = if args.json {
            String::from_utf8_lossy(&grain.to_json(!args.no_payload)).into_owned()
        } else {
            summary(&grain)
        };
        // A closed pipe (`| head`) ends the command quietly.
        if writeln!(stdout, "{line}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            break Ok(());
        }
        printed += 1;
    };
    drop(grains);
    provider.close().await;
    result.map_err(|e: CliError| e)
}

/// One line for a person: timestamp, type, payload size.
fn summary(grain: &Grain) -> String {
    format!(
        "{}  {:<11}  {} bytes",
        grain.origin_timestamp(),
        grain.grain_type().as_str(),
        grain.payload().len()
    )
}
