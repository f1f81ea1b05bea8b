//! `grainstore probe FILE.gsf`: what mediagrains' `gsf_probe` shows, in Rust — the
//! file's head, and for every segment the timerange of its grains and the header of its
//! first grain (or of all of them with `-g`, and all their timestamps with `-a`), as
//! JSON in the same layout. The file is read as a stream; it never needs to fit in
//! memory.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use bytes::Bytes;
use clap::Args;
use grainstore::grain::{Grain, GrainKind};
use grainstore::gsf::{GsfDecoder, GsfEvent, GsfHead, GsfSegment};
use grainstore::time::{Bound, Rational, TimeRange, Timestamp};
use serde::Serialize;
use serde_json::Value;

use super::{CliError, CliResult, Exit};

/// `grainstore probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The GSF file (`-` for stdin).
    #[arg(value_name = "FILE.gsf")]
    file: PathBuf,
    /// List every grain's timestamps.
    #[arg(short = 'a', long)]
    all_timestamps: bool,
    /// List every grain's header, not only the first of each segment.
    #[arg(short = 'g', long)]
    all_grains: bool,
}

#[derive(Serialize)]
struct FileOut {
    id: String,
    created: String,
    segments: BTreeMap<String, SegmentOut>,
    tags: Vec<(String, String)>,
}

#[derive(Serialize)]
struct SegmentOut {
    local_id: u16,
    id: String,
    count: i64,
    tags: Vec<(String, String)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    flow: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timerange: Option<TimeRange>,
    #[serde(skip_serializing_if = "Option::is_none")]
    grain_data: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    grain_timestamps: Option<Vec<Value>>,
}

impl SegmentOut {
    fn new(segment: &GsfSegment) -> SegmentOut {
        SegmentOut {
            local_id: segment.local_id,
            id: segment.id.to_string(),
            count: segment.count,
            tags: segment
                .tags
                .iter()
                .map(|t| (t.key.clone(), t.value.clone()))
                .collect(),
            flow: segment.flow.as_ref().map(|f| {
                serde_json::json!({
                    "source_id": f.source_id,
                    "flow_id": f.flow_id,
                    "format": f.format,
                    "data": f.data,
                })
            }),
            timerange: None,
            grain_data: None,
            grain_timestamps: None,
        }
    }
}

/// Runs `grainstore probe`.
pub fn run(args: ProbeArgs) -> CliResult {
    let name = args.file.display().to_string();
    let mut input: Box<dyn Read> = if args.file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(
            std::fs::File::open(&args.file)
                .map_err(|e| CliError::new(Exit::BadInput, format!("cannot open {name}: {e}")))?,
        )
    };
    let bad = |e: grainstore::gsf::GsfError| {
        CliError::new(
            Exit::BadInput,
            format!("{name} is not a valid GSF file: {e}"),
        )
    };
    let mut decoder = GsfDecoder::new().with_max_grain_size(u32::MAX as usize);
    let mut out: Option<FileOut> = None;
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = input
            .read(&mut buffer)
            .map_err(|e| CliError::io(&format!("cannot read {name}"), e))?;
        if n > 0 {
            decoder.push(Bytes::copy_from_slice(&buffer[..n]));
        }
        while let Some(event) = decoder.next_event().map_err(bad)? {
            match event {
                // A concatenated file's later heads are not shown (nor by gsf_probe).
                GsfEvent::Head(head) => {
                    if out.is_none() {
                        out = Some(file_out(&head));
                    }
                }
                GsfEvent::Grain { local_id, grain } => {
                    let Some(file) = out.as_mut() else { continue };
                    let Some(segment) = file.segments.get_mut(&local_id.to_string()) else {
                        return Err(CliError::new(
                            Exit::BadInput,
                            format!(
                                "{name}: a grain refers to segment {local_id}, which the head does not declare"
                            ),
                        ));
                    };
                    add_grain(segment, &grain, &args);
                }
                GsfEvent::End => {}
            }
        }
        if n == 0 {
            break;
        }
    }
    decoder.finish().map_err(bad)?;
    let Some(file) = out else {
        return Err(CliError::new(
            Exit::BadInput,
            format!("{name} holds no GSF file"),
        ));
    };
    // gsf_probe prints with one space of indentation.
    let mut text = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b" ");
    let mut serializer = serde_json::Serializer::with_formatter(&mut text, formatter);
    file.serialize(&mut serializer)
        .map_err(|e| CliError::new(Exit::Failure, e.to_string()))?;
    println!("{}", String::from_utf8_lossy(&text));
    Ok(())
}

fn file_out(head: &GsfHead) -> FileOut {
    let c = head.created;
    FileOut {
        id: head.id.to_string(),
        // Python's str(datetime) with a UTC offset, as gsf_probe prints it.
        created: format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}+00:00",
            c.year, c.month, c.day, c.hour, c.minute, c.second
        ),
        segments: head
            .segments
            .iter()
            .map(|s| (s.local_id.to_string(), SegmentOut::new(s)))
            .collect(),
        tags: head
            .tags
            .iter()
            .map(|t| (t.key.clone(), t.value.clone()))
            .collect(),
    }
}

fn add_grain(segment: &mut SegmentOut, grain: &Grain, args: &ProbeArgs) {
    let meta = grain.meta_json();
    let header = meta.get("grain").cloned().unwrap_or_default();
    if args.all_grains {
        match &mut segment.grain_data {
            Some(Value::Array(all)) => all.push(header.clone()),
            _ => segment.grain_data = Some(Value::Array(vec![header.clone()])),
        }
    }
    let span = TimeRange::new(
        Bound::Inclusive(grain.origin_timestamp()),
        Bound::Inclusive(final_origin_timestamp(grain)),
    );
    segment.timerange = Some(match &segment.timerange {
        Some(range) => range.extend_to_encompass(&span),
        None => {
            if !args.all_grains {
                segment.grain_data = Some(header);
            }
            span
        }
    });
    if args.all_timestamps {
        segment
            .grain_timestamps
            .get_or_insert_with(Vec::new)
            .push(serde_json::json!({
                "origin_timestamp": grain.origin_timestamp().to_string(),
                "sync_timestamp": grain.sync_timestamp().to_string(),
                "creation_timestamp": grain.creation_timestamp().map(|t| t.to_string()),
            }));
    }
}

/// The timestamp of a grain's last sample, as mediagrains' `final_origin_timestamp`:
/// for audio the origin plus `samples - 1` sample periods, otherwise the origin.
fn final_origin_timestamp(grain: &Grain) -> Timestamp {
    let (samples, sample_rate) = match grain.kind() {
        GrainKind::Audio(a) => (a.samples, a.sample_rate),
        GrainKind::CodedAudio(a) => (a.samples, a.sample_rate),
        _ => return grain.origin_timestamp(),
    };
    let origin = grain.origin_timestamp();
    if samples == 0 || sample_rate == 0 {
        return origin;
    }
    Timestamp::from_count(
        i128::from(samples - 1),
        Rational::new(i64::from(sample_rate), 1),
    )
    .ok()
    .and_then(|offset| origin.checked_add(offset))
    .unwrap_or(origin)
}
