//! Builders of flows and grains and small readers shared by the store tests.

use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use grainstore::grain::{
    CogFrameFormat, CogFrameLayout, EventDatum, EventPayload, Grain, GrainHeader, GrainKind,
    VideoComponent, VideoHeader,
};
use grainstore::store::{
    BatchOutcome, Flow, FlowId, Format, GrainQuery, Order, PageLimit, ReadSession, Store,
    StoreError, TagValue,
};
use grainstore::time::{Rational, TimeRange, Timestamp};
use uuid::Uuid;

/// What a conformance test needs to choose about the store it is given; everything else
/// is the backend's default.
#[derive(Clone, Copy, Debug)]
pub struct StoreSetup {
    /// How many sessions may be open at once.
    pub max_sessions: usize,
    /// How long opening a session waits for a free place.
    pub session_wait: Duration,
}

impl Default for StoreSetup {
    fn default() -> StoreSetup {
        StoreSetup {
            max_sessions: 64,
            session_wait: Duration::from_millis(300),
        }
    }
}

/// A timestamp from its `sec:nsec` form.
pub fn ts(text: &str) -> Timestamp {
    text.parse()
        .unwrap_or_else(|e| panic!("bad timestamp {text}: {e}"))
}

/// Whole seconds as a timestamp.
pub fn secs(n: i64) -> Timestamp {
    Timestamp::from_secs(n).expect("seconds in range")
}

/// A timerange from its text form.
pub fn tr(text: &str) -> TimeRange {
    text.parse()
        .unwrap_or_else(|e| panic!("bad timerange {text}: {e}"))
}

/// A flow of `format` with fresh ids and nothing else set.
pub fn flow_of(format: Format) -> Flow {
    Flow {
        id: Uuid::new_v4(),
        source_id: Uuid::new_v4(),
        format,
        label: None,
        description: None,
        tags: Default::default(),
        codec: None,
        container: None,
        essence_parameters: None,
        read_only: false,
        created: None,
        metadata_updated: None,
        extra: Default::default(),
    }
}

/// A video flow with fresh ids.
pub fn video_flow() -> Flow {
    flow_of(Format::Video)
}

/// A string tag value.
pub fn tag(value: &str) -> TagValue {
    TagValue::One(value.to_owned())
}

/// A list tag value.
pub fn tags(values: &[&str]) -> TagValue {
    TagValue::Many(values.iter().map(|v| (*v).to_owned()).collect())
}

/// Creates `flow` in `store` and returns it.
pub async fn create(store: &impl Store, flow: Flow) -> Flow {
    store.put_flow(flow.clone()).await.expect("put flow");
    flow
}

/// A raw video frame of `flow` at `at`, 25 frames per second (duration 1/25 s).
pub fn video(flow: &Flow, at: Timestamp, payload: impl Into<Bytes>) -> Grain {
    let payload = payload.into();
    let len = u32::try_from(payload.len()).expect("small payload");
    let kind = GrainKind::Video(VideoHeader {
        format: CogFrameFormat::UYVY,
        layout: CogFrameLayout::FULL_FRAME,
        width: 1920,
        height: 1080,
        extension: 0,
        source_aspect_ratio: Some(Rational::new(16, 9)),
        pixel_aspect_ratio: Some(Rational::new(1, 1)),
        components: vec![VideoComponent {
            stride: 3840,
            offset: 0,
            width: 1920,
            height: 1080,
            length: len,
        }],
    });
    let mut header = GrainHeader::new(flow.source_id, flow.id, at, kind);
    header.rate = Rational::new(25, 1);
    header.duration = Rational::new(1, 25);
    Grain::new(header, payload).expect("valid video grain")
}

/// A video frame whose payload is a pattern derived from its timestamp and `salt`.
pub fn frame(flow: &Flow, at: Timestamp, len: usize, salt: u64) -> Grain {
    let seed = (at.to_nanos() as u64) ^ salt.rotate_left(17);
    video(flow, at, pattern(len, seed))
}

/// An event grain of `flow` at `at` without a duration.
pub fn event(flow: &Flow, at: Timestamp, topic: &str) -> Grain {
    let header = GrainHeader::new(flow.source_id, flow.id, at, GrainKind::Event);
    let payload = EventPayload {
        event_type: "urn:x-ipstudio:format:event.param.change".into(),
        topic: topic.into(),
        data: vec![EventDatum {
            path: "gain".into(),
            pre: Some(serde_json::json!(1)),
            post: Some(serde_json::json!(2.5)),
        }],
    };
    Grain::new_event(header, &payload).expect("valid event grain")
}

/// `grain` with another duration.
pub fn with_duration(grain: Grain, duration: Rational) -> Grain {
    let (mut header, payload) = grain.into_parts();
    header.duration = duration;
    Grain::new(header, payload).expect("valid grain")
}

/// `grain` with another creation timestamp.
pub fn with_creation(mut grain: Grain, creation: Option<Timestamp>) -> Grain {
    grain.set_creation_timestamp(creation);
    grain
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Bytes {
    let mut rng = SplitMix(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

/// A small, fast, seedable generator (splitmix64).
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `lo..hi`.
    pub fn below(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

/// Writes `grains` in one session and one commit.
pub async fn write(
    store: &impl Store,
    flow: FlowId,
    grains: impl IntoIterator<Item = Grain>,
) -> Result<BatchOutcome, StoreError> {
    let mut session = store.open_write(flow).await?;
    for grain in grains {
        session.stage(grain)?;
    }
    session.commit().await
}

/// Collects what a query of `session` yields.
pub async fn collect(session: &ReadSession, query: GrainQuery) -> Result<Vec<Grain>, StoreError> {
    session.grains(query).try_collect().await
}

/// Every grain of `flow` in a fresh session, oldest first.
pub async fn read_all(store: &impl Store, flow: FlowId) -> Vec<Grain> {
    let session = store.open_read(flow).await.expect("open read");
    collect(&session, GrainQuery::all()).await.expect("read")
}

/// A query of `range` in `order` with an optional count.
pub fn query(range: TimeRange, order: Order, count: Option<u64>) -> GrainQuery {
    GrainQuery {
        range,
        order,
        count,
        with_payload: true,
    }
}

/// The origin timestamps of `grains`.
pub fn stamps(grains: &[Grain]) -> Vec<Timestamp> {
    grains.iter().map(Grain::origin_timestamp).collect()
}

/// A page limit of `grains` grains and unlimited bytes.
pub fn page_of(grains: usize) -> PageLimit {
    PageLimit {
        grains,
        bytes: usize::MAX,
    }
}

/// Asserts that `stored` is `sent` as stored: same identity, and the creation
/// timestamp kept when one was sent.
#[track_caller]
pub fn assert_stored(stored: &Grain, sent: &Grain) {
    assert!(
        stored.same_identity(sent),
        "stored grain at {} differs from the one sent",
        sent.origin_timestamp()
    );
    assert_eq!(stored.payload(), sent.payload());
    if sent.creation_timestamp().is_some() {
        assert_eq!(stored.creation_timestamp(), sent.creation_timestamp());
    }
}

/// Asserts that the first page of `range` in `order` holds the `good` grains before a
/// damaged one and does not say that the range ended, and that the page after it fails
/// as corrupt: for grain pages and for GSF pages.
pub async fn assert_pages_stop_at_damage(
    session: &ReadSession,
    range: TimeRange,
    order: Order,
    good: usize,
) {
    use futures::StreamExt;
    let query = query(range, order, None);
    let page = session.page(&query, None).await.unwrap();
    assert_eq!((page.grains.len(), page.ended), (good, false), "grain page");
    let resume = page.grains.last().map(Grain::origin_timestamp);
    let next = session.page(&query, resume).await;
    assert!(
        matches!(next, Err(StoreError::Corrupt(_))),
        "the page after: {next:?}"
    );
    let mut pages = session.gsf_pages(query, 1);
    let page = pages.next().await.unwrap().unwrap();
    assert_eq!((page.grains, page.ended), (good, false), "GSF page");
    let next = pages.next().await;
    assert!(
        matches!(next, Some(Err(StoreError::Corrupt(_)))),
        "the GSF page after: {next:?}"
    );
}
