//! The file-level metadata of a GSF file: the `head` block with its segments and tags.
//!
//! ```text
//! "SSBB" "grsg" u16 major u16 minor                       file header, 12 bytes
//! "head" u32 size | id 16 | created 7 | children:          the head block
//!     "segm" u32 size | u16 local_id | id 16 | i64 count (-1: unknown) | children:
//!         "flow" u32 size | source_id 16 | flow_id 16 | format 64 (NUL padded)
//!                         | u32 n | n bytes of JSON
//!         "tag " u32 size | u16 n | key | u16 n | value
//!     "tag " ...
//! created = i16 year | u8 month | u8 day | u8 hour | u8 minute | u8 second (UTC)
//! ```

use std::time::{SystemTime, UNIX_EPOCH};

use uuid::Uuid;

use super::GsfError;
use crate::grain::wire::{Reader, WireError};

/// A UTC date and time with one-second resolution, as GSF stores `created`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GsfDateTime {
    /// Year (signed, as GSF stores it).
    pub year: i16,
    /// Month, 1 to 12.
    pub month: u8,
    /// Day of the month, from 1.
    pub day: u8,
    /// Hour, 0 to 23.
    pub hour: u8,
    /// Minute, 0 to 59.
    pub minute: u8,
    /// Second, 0 to 59.
    pub second: u8,
}

impl GsfDateTime {
    /// The date and time `secs` seconds after the Unix epoch (UTC).
    pub fn from_unix_seconds(secs: i64) -> GsfDateTime {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        // Howard Hinnant's days-to-civil algorithm.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        GsfDateTime {
            year: year.clamp(i64::from(i16::MIN), i64::from(i16::MAX)) as i16,
            month: month as u8,
            day: day as u8,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
        }
    }

    /// The current time.
    pub fn now() -> GsfDateTime {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        GsfDateTime::from_unix_seconds(secs)
    }

    fn is_valid(&self) -> bool {
        let leap = (self.year % 4 == 0 && self.year % 100 != 0) || self.year % 400 == 0;
        let days_in_month = match self.month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if leap => 29,
            2 => 28,
            _ => return false,
        };
        (1..=days_in_month).contains(&self.day)
            && self.hour < 24
            && self.minute < 60
            && self.second < 60
    }
}

/// A key/value tag of a file or segment.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GsfTag {
    /// The key; at most 65535 bytes of UTF-8.
    pub key: String,
    /// The value; at most 65535 bytes of UTF-8.
    pub value: String,
}

impl GsfTag {
    /// A tag from anything string-like.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        GsfTag {
            key: key.into(),
            value: value.into(),
        }
    }
}

/// The optional `flow` block of a segment: which flow its grains belong to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GsfFlow {
    /// The flow's source.
    pub source_id: Uuid,
    /// The flow.
    pub flow_id: Uuid,
    /// The flow's format URN; at most 64 bytes of UTF-8 without NUL.
    pub format: String,
    /// The flow's metadata, a JSON document.
    pub data: String,
}

/// A segment: the grains of one `local_id`, usually one flow.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GsfSegment {
    /// The number grains refer to their segment by.
    pub local_id: u16,
    /// The segment's identity.
    pub id: Uuid,
    /// Number of grains, or -1 when unknown (a streamed file).
    pub count: i64,
    /// Tags of the segment.
    pub tags: Vec<GsfTag>,
    /// The segment's flow, when the writer gave one.
    pub flow: Option<GsfFlow>,
}

/// The `head` of a GSF file.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GsfHead {
    /// Major version of the file (7, 8 or 9; the encoder writes 9).
    pub major: u16,
    /// Minor version of the file.
    pub minor: u16,
    /// The file's identity.
    pub id: Uuid,
    /// When the file was created.
    pub created: GsfDateTime,
    /// The segments, in file order.
    pub segments: Vec<GsfSegment>,
    /// Tags of the file.
    pub tags: Vec<GsfTag>,
}

impl GsfHead {
    /// A version 9.0 head without segments or tags.
    pub fn new(id: Uuid, created: GsfDateTime) -> Self {
        GsfHead {
            major: 9,
            minor: 0,
            id,
            created,
            segments: Vec::new(),
            tags: Vec::new(),
        }
    }

    /// Checks that the head can be written: unique local ids, field sizes within GSF's.
    pub(crate) fn validate(&self) -> Result<(), GsfError> {
        let bad = |what: String| Err(GsfError::Encode(what));
        let check_tags = |tags: &[GsfTag]| {
            tags.iter().all(|t| {
                t.key.len() <= usize::from(u16::MAX) && t.value.len() <= usize::from(u16::MAX)
            })
        };
        if !check_tags(&self.tags) {
            return bad("a tag key or value is longer than 65535 bytes".into());
        }
        for (i, seg) in self.segments.iter().enumerate() {
            if self.segments[..i]
                .iter()
                .any(|s| s.local_id == seg.local_id)
            {
                return bad(format!("segment local id {} is used twice", seg.local_id));
            }
            if !check_tags(&seg.tags) {
                return bad("a tag key or value is longer than 65535 bytes".into());
            }
            if let Some(flow) = &seg.flow {
                if flow.format.len() > 64 || flow.format.contains('\0') {
                    return bad("a flow format is at most 64 bytes without NUL".into());
                }
                if flow.data.len() > u32::MAX as usize / 2 {
                    return bad("flow metadata too large".into());
                }
            }
        }
        if self.size() > u32::MAX as usize {
            return bad("head block larger than 4 GiB".into());
        }
        Ok(())
    }

    fn size(&self) -> usize {
        31 + self.segments.iter().map(segment_size).sum::<usize>()
            + self.tags.iter().map(tag_size).sum::<usize>()
    }

    /// Appends the 12-byte file header and the `head` block (version from `self`).
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"SSBBgrsg");
        out.extend_from_slice(&self.major.to_le_bytes());
        out.extend_from_slice(&self.minor.to_le_bytes());
        out.extend_from_slice(b"head");
        put_size(out, self.size());
        out.extend_from_slice(self.id.as_bytes());
        let c = self.created;
        out.extend_from_slice(&c.year.to_le_bytes());
        out.extend_from_slice(&[c.month, c.day, c.hour, c.minute, c.second]);
        for seg in &self.segments {
            out.extend_from_slice(b"segm");
            put_size(out, segment_size(seg));
            out.extend_from_slice(&seg.local_id.to_le_bytes());
            out.extend_from_slice(seg.id.as_bytes());
            out.extend_from_slice(&seg.count.to_le_bytes());
            if let Some(flow) = &seg.flow {
                out.extend_from_slice(b"flow");
                put_size(out, 108 + flow.data.len());
                out.extend_from_slice(flow.source_id.as_bytes());
                out.extend_from_slice(flow.flow_id.as_bytes());
                let mut format = [0u8; 64];
                let n = flow.format.len().min(64);
                format[..n].copy_from_slice(&flow.format.as_bytes()[..n]);
                out.extend_from_slice(&format);
                put_size(out, flow.data.len());
                out.extend_from_slice(flow.data.as_bytes());
            }
            for tag in &seg.tags {
                write_tag(tag, out);
            }
        }
        for tag in &self.tags {
            write_tag(tag, out);
        }
    }

    /// Reads the body of a `head` block (after its 8-byte header).
    pub(crate) fn read(r: &mut Reader<'_>, major: u16, minor: u16) -> Result<GsfHead, WireError> {
        let id = r.uuid("file id")?;
        let created_at = r.offset();
        let created = GsfDateTime {
            year: i16::from_le_bytes([r.u8("created year")?, r.u8("created year")?]),
            month: r.u8("created month")?,
            day: r.u8("created day")?,
            hour: r.u8("created hour")?,
            minute: r.u8("created minute")?,
            second: r.u8("created second")?,
        };
        if !created.is_valid() {
            return Err(WireError {
                offset: created_at,
                expected: "a valid 'created' date and time".into(),
            });
        }
        let mut head = GsfHead {
            major,
            minor,
            id,
            created,
            segments: Vec::new(),
            tags: Vec::new(),
        };
        while let Some((tag, mut child)) = r.child("head")? {
            match &tag {
                b"segm" => {
                    let mut seg = GsfSegment {
                        local_id: child.u16("segment local_id")?,
                        id: child.uuid("segment id")?,
                        count: child.i64("segment count")?,
                        tags: Vec::new(),
                        flow: None,
                    };
                    while let Some((tag, mut sub)) = child.child("segm")? {
                        match &tag {
                            b"tag " => seg.tags.push(read_tag(&mut sub)?),
                            b"flow" => {
                                let source_id = sub.uuid("flow source_id")?;
                                let flow_id = sub.uuid("flow flow_id")?;
                                let format = sub.string(64, "flow format")?;
                                let n = sub.u32("flow data length")? as usize;
                                let at = sub.offset();
                                let data = std::str::from_utf8(sub.bytes(n, "flow data")?)
                                    .map_err(|_| WireError {
                                        offset: at,
                                        expected: "flow data in UTF-8".into(),
                                    })?
                                    .to_owned();
                                seg.flow = Some(GsfFlow {
                                    source_id,
                                    flow_id,
                                    format,
                                    data,
                                });
                            }
                            _ => {}
                        }
                    }
                    head.segments.push(seg);
                }
                b"tag " => head.tags.push(read_tag(&mut child)?),
                _ => {}
            }
        }
        Ok(head)
    }
}

fn tag_size(tag: &GsfTag) -> usize {
    12 + tag.key.len() + tag.value.len()
}

fn segment_size(seg: &GsfSegment) -> usize {
    34 + seg.flow.as_ref().map_or(0, |f| 108 + f.data.len())
        + seg.tags.iter().map(tag_size).sum::<usize>()
}

fn put_size(out: &mut Vec<u8>, size: usize) {
    // validate() bounds every size written here.
    out.extend_from_slice(&u32::try_from(size).unwrap_or(u32::MAX).to_le_bytes());
}

fn write_tag(tag: &GsfTag, out: &mut Vec<u8>) {
    out.extend_from_slice(b"tag ");
    put_size(out, tag_size(tag));
    out.extend_from_slice(&(tag.key.len() as u16).to_le_bytes());
    out.extend_from_slice(tag.key.as_bytes());
    out.extend_from_slice(&(tag.value.len() as u16).to_le_bytes());
    out.extend_from_slice(tag.value.as_bytes());
}

fn read_tag(r: &mut Reader<'_>) -> Result<GsfTag, WireError> {
    Ok(GsfTag {
        key: r.varstring("tag key")?,
        value: r.varstring("tag value")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_seconds_to_civil() {
        let d = GsfDateTime::from_unix_seconds(1_700_000_000);
        assert_eq!(
            d,
            GsfDateTime {
                year: 2023,
                month: 11,
                day: 14,
                hour: 22,
                minute: 13,
                second: 20
            }
        );
        assert_eq!(GsfDateTime::from_unix_seconds(0).year, 1970);
        assert_eq!(GsfDateTime::from_unix_seconds(951_782_400).month, 2); // 2000-02-29
        assert_eq!(GsfDateTime::from_unix_seconds(951_782_400).day, 29);
    }
}
