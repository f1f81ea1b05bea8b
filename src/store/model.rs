//! The resources a store keeps besides grains: flows and sources, in TAMS vocabulary,
//! and the filters and pages used to list them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::time::TimeRange;

/// The identifier of a flow.
pub type FlowId = Uuid;
/// The identifier of a source.
pub type SourceId = Uuid;

/// The kind of content of a flow or source (TAMS `format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Format {
    /// `urn:x-nmos:format:video`
    #[serde(rename = "urn:x-nmos:format:video")]
    Video,
    /// `urn:x-nmos:format:audio`
    #[serde(rename = "urn:x-nmos:format:audio")]
    Audio,
    /// `urn:x-nmos:format:data`
    #[serde(rename = "urn:x-nmos:format:data")]
    Data,
    /// `urn:x-nmos:format:multi`
    #[serde(rename = "urn:x-nmos:format:multi")]
    Multi,
}

impl Format {
    /// The URN form.
    pub fn as_urn(self) -> &'static str {
        match self {
            Format::Video => "urn:x-nmos:format:video",
            Format::Audio => "urn:x-nmos:format:audio",
            Format::Data => "urn:x-nmos:format:data",
            Format::Multi => "urn:x-nmos:format:multi",
        }
    }

    /// Parses the URN form.
    pub fn from_urn(urn: &str) -> Option<Format> {
        [Format::Video, Format::Audio, Format::Data, Format::Multi]
            .into_iter()
            .find(|f| f.as_urn() == urn)
    }
}

/// A tag value: TAMS allows a string or a list of strings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TagValue {
    /// One string.
    One(String),
    /// Several strings.
    Many(Vec<String>),
}

impl TagValue {
    /// Whether the tag has the value `wanted` (for a list: among its items).
    pub fn matches(&self, wanted: &str) -> bool {
        match self {
            TagValue::One(v) => v == wanted,
            TagValue::Many(vs) => vs.iter().any(|v| v == wanted),
        }
    }
}

/// Tags: names to values.
pub type Tags = BTreeMap<String, TagValue>;

/// A flow: an ordered, time-addressable sequence of grains of one kind.
///
/// What a client PUTs; the store sets `created` and `metadata_updated`, and reports the
/// grains' extent in [`FlowInfo::timerange`]. Fields of the TAMS vocabulary that the
/// service does not interpret are kept verbatim in `extra`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Flow {
    /// The flow's id.
    pub id: FlowId,
    /// The source it belongs to; created implicitly if unknown.
    pub source_id: SourceId,
    /// The kind of content.
    pub format: Format,
    /// A short name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// A longer description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Free-form tags.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: Tags,
    /// The codec, as a MIME type (TAMS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codec: Option<String>,
    /// The container, as a MIME type (TAMS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Format-specific parameters (frame size, sample rate, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub essence_parameters: Option<serde_json::Map<String, serde_json::Value>>,
    /// A read-only flow refuses grain writes and deletes.
    #[serde(default)]
    pub read_only: bool,
    /// When the flow was created (RFC 3339, set by the store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// When the flow's metadata last changed (RFC 3339, set by the store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_updated: Option<String>,
    /// Other TAMS fields, kept as given.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// A flow as read back: its resource and the extent of its grains.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowInfo {
    /// The stored resource.
    pub flow: Flow,
    /// From the first grain's origin timestamp to the end of the last grain; empty when
    /// the flow has no grains.
    pub timerange: TimeRange,
}

/// A source: groups the flows that represent the same content.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Source {
    /// The source's id.
    pub id: SourceId,
    /// The kind of content (that of the flow that created it).
    pub format: Format,
    /// A short name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// A longer description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Free-form tags.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: Tags,
    /// When the source was created (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// When the source last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<String>,
}

/// Whether a PUT created a resource or replaced one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// There was none with that id.
    Created,
    /// One existed and was replaced.
    Updated,
}

/// Filters for listing flows; every given filter must match.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FlowFilter {
    /// Only flows of this source.
    pub source_id: Option<SourceId>,
    /// Only flows of this format.
    pub format: Option<Format>,
    /// Only flows with exactly this label.
    pub label: Option<String>,
    /// Only flows having each tag with the value (for list tags: among the items).
    pub tags: Vec<(String, String)>,
    /// Only flows whose grains' timerange overlaps this one.
    pub timerange: Option<TimeRange>,
}

/// Filters for listing sources; every given filter must match.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SourceFilter {
    /// Only sources of this format.
    pub format: Option<Format>,
    /// Only sources with exactly this label.
    pub label: Option<String>,
    /// Only sources having each tag with the value.
    pub tags: Vec<(String, String)>,
}

/// Which page of a listing to return.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageRequest {
    /// The most items to return (at least 1).
    pub limit: usize,
    /// Where to continue: the `next` key of the previous page.
    pub after: Option<PageKey>,
}

/// An opaque, stable position in a listing (items are listed in id order, so the key is
/// the last id returned; new items never shift pages already handed out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageKey(pub Uuid);

impl PageKey {
    /// The opaque text form given to clients.
    pub fn encode(self) -> String {
        self.0.simple().to_string()
    }

    /// Parses the text form; `None` when it is not one this service produced.
    pub fn decode(text: &str) -> Option<PageKey> {
        if text.len() != 32 {
            return None;
        }
        Uuid::try_parse(text).ok().map(PageKey)
    }
}

/// One page of a listing.
#[derive(Clone, Debug, PartialEq)]
pub struct Page<T> {
    /// The items, in id order.
    pub items: Vec<T>,
    /// Where the next page starts, when there may be one.
    pub next: Option<PageKey>,
}

impl Flow {
    /// Whether the flow matches a filter (all but the timerange, which needs the grains).
    pub fn matches(&self, filter: &FlowFilter) -> bool {
        filter.source_id.is_none_or(|s| s == self.source_id)
            && filter.format.is_none_or(|f| f == self.format)
            && filter
                .label
                .as_deref()
                .is_none_or(|l| self.label.as_deref() == Some(l))
            && tags_match(&self.tags, &filter.tags)
    }
}

impl Source {
    /// Whether the source matches a filter.
    pub fn matches(&self, filter: &SourceFilter) -> bool {
        filter.format.is_none_or(|f| f == self.format)
            && filter
                .label
                .as_deref()
                .is_none_or(|l| self.label.as_deref() == Some(l))
            && tags_match(&self.tags, &filter.tags)
    }
}

fn tags_match(tags: &Tags, wanted: &[(String, String)]) -> bool {
    wanted
        .iter()
        .all(|(name, value)| tags.get(name).is_some_and(|v| v.matches(value)))
}

/// The current time as RFC 3339 UTC with millisecond precision, for `created` fields.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
