//! The conformance suite every [`Store`] backend must pass, written against the trait and
//! its sessions only.
//!
//! [`store_conformance!`] instantiates it for one backend: `$make` is an async
//! constructor taking a [`StoreSetup`] and returning `(impl Store, guard)`, the guard
//! keeping the backend's resources (a temporary directory, a database schema) alive for
//! the test.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use grainstore::grain::Grain;
use grainstore::store::{
    BatchOutcome, FlowFilter, FlowId, Format, GrainQuery, Order, PageKey, PageLimit, PageRequest,
    PutOutcome, SourceFilter, Store, StoreError,
};
use grainstore::time::{Rational, TimeRange, Timestamp};
use uuid::Uuid;

use crate::helpers::*;

/// Instantiates the conformance suite for one backend as a module of `#[tokio::test]`s.
#[macro_export]
macro_rules! store_conformance {
    ($name:ident, $make:expr) => {
        $crate::store_conformance!(@list $name, $make, #[doc = "A conformance test."]);
    };
    // For a backend that needs servers the environment may not have.
    ($name:ident, $make:expr, ignore = $reason:literal) => {
        $crate::store_conformance!(@list $name, $make, #[ignore = $reason]);
    };
    (@list $name:ident, $make:expr, #[$attr:meta]) => {
        $crate::store_conformance!(@tests $name, $make, #[$attr], [
            put_flow_creates_and_updates,
            list_flows_filters,
            list_flows_pages,
            list_flows_pages_while_inserting,
            list_sources_filters_and_pages,
            timerange_queries,
            reads_page_across_boundaries,
            pages_say_when_the_range_ended,
            flow_timerange,
            conflict_stops_the_batch,
            identical_resend_is_unchanged,
            duplicate_timestamps_in_one_batch,
            delete_grains_by_range,
            delete_flow_removes_its_grains,
            read_only_flow_refuses_changes,
            unknown_flow,
            grain_of_another_flow_is_refused,
            dropped_write_session_rolls_back,
            sessions_released_on_drop,
            full_pool_is_busy,
            read_session_is_a_snapshot,
            small_grain_gets_follow_the_snapshot,
            commits_notify_watchers,
            one_writer_many_readers,
            payloads_round_trip,
            creation_timestamp_set_when_absent,
            flows_do_not_share_grains,
            gsf_pages_are_the_grains_encoded,
            random_writes_and_deletes_match_a_model,
        ]);
    };
    (@tests $name:ident, $make:expr, #[$attr:meta], [$($test:ident),* $(,)?]) => {
        mod $name {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[$attr]
                async fn $test() {
                    $crate::conformance::$test($make).await;
                }
            )*
        }
    };
}

/// A constructor of a store for one test.
pub trait MakeStore {
    /// The store.
    type Store: Store;
    /// What keeps the store's resources alive.
    type Guard;
    /// Builds a fresh, empty store.
    fn make(
        &self,
        setup: StoreSetup,
    ) -> impl std::future::Future<Output = (Self::Store, Self::Guard)> + Send;
}

impl<F, Fut, S, G> MakeStore for F
where
    F: Fn(StoreSetup) -> Fut,
    Fut: std::future::Future<Output = (S, G)> + Send,
    S: Store,
{
    type Store = S;
    type Guard = G;

    fn make(&self, setup: StoreSetup) -> impl std::future::Future<Output = (S, G)> + Send {
        self(setup)
    }
}

async fn fresh<M: MakeStore>(make: M) -> (M::Store, M::Guard) {
    make.make(StoreSetup::default()).await
}

fn all_flows() -> PageRequest {
    PageRequest {
        limit: 1000,
        after: None,
    }
}

async fn listed(store: &impl Store, filter: FlowFilter) -> BTreeSet<FlowId> {
    let page = store
        .list_flows(&filter, &all_flows())
        .await
        .expect("list flows");
    assert!(page.next.is_none());
    page.items.iter().map(|info| info.flow.id).collect()
}

fn ids(flows: &[&grainstore::store::Flow]) -> BTreeSet<FlowId> {
    flows.iter().map(|f| f.id).collect()
}

/// Ten frames at 0:0 .. 9:0 plus one at -1:0 (a timestamp before the epoch).
fn eleven_frames(flow: &grainstore::store::Flow) -> Vec<Grain> {
    (-1..10).map(|s| frame(flow, secs(s), 64, 1)).collect()
}

pub async fn put_flow_creates_and_updates(make: impl MakeStore) {
    let (store, _guard) = fresh(make).await;
    let mut flow = video_flow();
    flow.label = Some("camera 1".into());
    flow.extra
        .insert("generation".into(), serde_json::json!({"pass": 1}));
    assert_eq!(store.get_flow(flow.id).await.unwrap(), None);
    assert_eq!(store.get_source(flow.source_id).await.unwrap(), None);

    assert_eq!(
        store.put_flow(flow.clone()).await.unwrap(),
        PutOutcome::Created
    );
    let first = store.get_flow(flow.id).await.unwrap().expect("created");
    assert_eq!(first.timerange, TimeRange::empty());
    assert_eq!(first.flow.label.as_deref(), Some("camera 1"));
    assert_eq!(
        first.flow.extra.get("generation"),
        Some(&serde_json::json!({"pass": 1}))
    );
    let created = first.flow.created.clone().expect("created is set");
    let updated = first.flow.metadata_updated.clone().expect("updated is set");

    let source = store
        .get_source(flow.source_id)
        .await
        .unwrap()
        .expect("the source is created with the flow");
    assert_eq!(source.id, flow.source_id);
    assert_eq!(source.format, Format::Video);

    // Timestamps have millisecond precision: let one pass.
    tokio::time::sleep(Duration::from_millis(20)).await;
    flow.label = Some("camera 1, renamed".into());
    flow.created = Some("1999-01-01T00:00:00.000Z".into());
    assert_eq!(
        store.put_flow(flow.clone()).await.unwrap(),
        PutOutcome::Updated
    );
    let second = store.get_flow(flow.id).await.unwrap().unwrap();
    assert_eq!(second.flow.label.as_deref(), Some("camera 1, renamed"));
    assert_eq!(
        second.flow.created.as_deref(),
        Some(created.as_str()),
        "created is kept"
    );
    assert_ne!(
        second.flow.metadata_updated.as_deref(),
        Some(updated.as_str())
    );

    // A second flow of the same source does not create another source.
    let mut sibling = flow_of(Format::Audio);
    sibling.source_id = flow.source_id;
    assert_eq!(store.put_flow(sibling).await.unwrap(), PutOutcome::Created);
    let sources = store
        .list_sources(&SourceFilter::default(), &all_flows())
        .await
        .unwrap();
    assert_eq!(sources.items.len(), 1);
    assert_eq!(sources.items[0].format, Format::Video);
}

pub async fn list_flows_filters(make: impl MakeStore) {
    let (store, _guard) = fresh(make).await;
    let mut a = video_flow();
    a.label = Some("cam1".into());
    a.tags.insert("genre".into(), tag("news"));
    a.tags.insert("langs".into(), tags(&["en", "fr"]));
    let mut b = flow_of(Format::Audio);
    b.source_id = a.source_id;
    b.label = Some("cam1 audio".into());
    b.tags.insert("genre".into(), tag("sport"));
    let mut c = flow_of(Format::Data);
    c.label = Some("cam1".into());
    c.tags.insert("langs".into(), tag("fr"));
    let mut d = video_flow();
    d.source_id = c.source_id;
    for flow in [&a, &b, &c, &d] {
        create(&store, flow.clone()).await;
    }
    write(&store, a.id, (10..13).map(|s| frame(&a, secs(s), 16, 0)))
        .await
        .unwrap();
    write(&store, c.id, [event(&c, secs(100), "c")])
        .await
        .unwrap();

    let filter = |f: fn(&mut FlowFilter)| {
        let mut filter = FlowFilter::default();
        f(&mut filter);
        filter
    };
    assert_eq!(
        listed(&store, FlowFilter::default()).await,
        ids(&[&a, &b, &c, &d])
    );
    let by_source = FlowFilter {
        source_id: Some(a.source_id),
        ..Default::default()
    };
    assert_eq!(listed(&store, by_source).await, ids(&[&a, &b]));
    assert_eq!(
        listed(&store, filter(|f| f.format = Some(Format::Video))).await,
        ids(&[&a, &d])
    );
    assert_eq!(
        listed(&store, filter(|f| f.label = Some("cam1".into()))).await,
        ids(&[&a, &c]),
        "labels match exactly"
    );
    assert_eq!(
        listed(
            &store,
            filter(|f| f.tags = vec![("genre".into(), "news".into())])
        )
        .await,
        ids(&[&a])
    );
    assert_eq!(
        listed(
            &store,
            filter(|f| f.tags = vec![("langs".into(), "fr".into())])
        )
        .await,
        ids(&[&a, &c]),
        "a list tag matches any of its items, a string tag its value"
    );
    assert_eq!(
        listed(
            &store,
            filter(|f| f.tags = vec![("langs".into(), "en".into())])
        )
        .await,
        ids(&[&a])
    );
    assert_eq!(
        listed(
            &store,
            filter(|f| f.tags = vec![
                ("langs".into(), "fr".into()),
                ("genre".into(), "news".into())
            ])
        )
        .await,
        ids(&[&a]),
        "every tag must match"
    );
    assert!(
        listed(
            &store,
            filter(|f| f.tags = vec![("nope".into(), "x".into())])
        )
        .await
        .is_empty()
    );
    let video_of_c = FlowFilter {
        source_id: Some(c.source_id),
        format: Some(Format::Video),
        ..Default::default()
    };
    assert_eq!(listed(&store, video_of_c).await, ids(&[&d]));

    let overlapping = |range: &str| FlowFilter {
        timerange: Some(tr(range)),
        ..Default::default()
    };
    assert_eq!(listed(&store, overlapping("[11:0_50:0)")).await, ids(&[&a]));
    assert_eq!(
        listed(&store, overlapping("[12:40000000_")).await,
        ids(&[&c]),
        "a's range ends exclusively at 12:40000000"
    );
    assert_eq!(
        listed(&store, overlapping("[12:39999999_")).await,
        ids(&[&a, &c])
    );
    assert!(listed(&store, overlapping("[0:0_5:0)")).await.is_empty());
    assert_eq!(
        listed(&store, overlapping("_")).await,
        ids(&[&a, &c]),
        "a flow without grains overlaps nothing"
    );
    assert_eq!(listed(&store, overlapping("[100:0]")).await, ids(&[&c]));

    let infos = store
        .list_flows(&FlowFilter::default(), &all_flows())
        .await
        .unwrap();
    let listed_ids: Vec<_> = infos.items.iter().map(|i| i.flow.id).collect();
    let mut sorted = listed_ids.clone();
    sorted.sort();
    assert_eq!(listed_ids, sorted, "flows are listed in id order");
    for info in &infos.items {
        let expected = if info.flow.id == a.id {
            tr("[10:0_12:40000000)")
        } else if info.flow.id == c.id {
            tr("[100:0]")
        } else {
            TimeRange::empty()
        };
        assert_eq!(info.timerange, expected, "timerange of a listed flow");
    }
}

/// Pages through `filter` with `limit`, passing the key through its text form.
async fn page_through(store: &impl Store, filter: &FlowFilter, limit: usize) -> Vec<Vec<FlowId>> {
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_flows(filter, &PageRequest { limit, after })
            .await
            .unwrap();
        assert!(page.items.len() <= limit);
        pages.push(page.items.iter().map(|i| i.flow.id).collect());
        match page.next {
            None => return pages,
            Some(key) => {
                assert!(!page.items.is_empty(), "a page with a next key has items");
                after = Some(PageKey::decode(&key.encode()).expect("the key parses back"));
            }
        }
        assert!(pages.len() < 1000, "paging does not end");
    }
}

pub async fn list_flows_pages(make: impl MakeStore) {
    let (store, _guard) = fresh(make).await;
    let mut all = BTreeSet::new();
    let mut videos = BTreeSet::new();
    for i in 0..23 {
        let flow = flow_of(if i % 3 == 0 {
            Format::Video
        } else {
            Format::Data
        });
        if flow.format == Format::Video {
            videos.insert(flow.id);
        }
        all.insert(create(&store, flow).await.id);
    }
    for limit in [1, 5, 7, 23, 100] {
        let pages = page_through(&store, &FlowFilter::default(), limit).await;
        assert_eq!(pages.len(), 23usize.div_ceil(limit), "pages of {limit}");
        let flat: Vec<FlowId> = pages.concat();
        assert_eq!(flat.len(), 23, "no duplicates");
        assert!(flat.windows(2).all(|w| w[0] < w[1]), "id order");
        assert_eq!(flat.into_iter().collect::<BTreeSet<_>>(), all);
    }
    let video_filter = FlowFilter {
        format: Some(Format::Video),
        ..Default::default()
    };
    let pages = page_through(&store, &video_filter, 2).await;
    assert_eq!(pages.len(), videos.len().div_ceil(2));
    assert_eq!(pages.concat().into_iter().collect::<BTreeSet<_>>(), videos);

    // The same key gives the same page again.
    let first = store
        .list_flows(
            &FlowFilter::default(),
            &PageRequest {
                limit: 4,
                after: None,
            },
        )
        .await
        .unwrap();
    let again = |after| {
        let store = &store;
        async move {
            store
                .list_flows(&FlowFilter::default(), &PageRequest { limit: 4, after })
                .await
                .unwrap()
        }
    };
    assert_eq!(again(first.next).await, again(first.next).await);
    assert!(PageKey::decode("not a key").is_none());
}

pub async fn list_flows_pages_while_inserting(make: impl MakeStore) {
    let (store, _guard) = fresh(make).await;
    let mut originals = BTreeSet::new();
    for _ in 0..12 {
        originals.insert(create(&store, video_flow()).await.id);
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_flows(&FlowFilter::default(), &PageRequest { limit: 3, after })
            .await
            .unwrap();
        seen.extend(page.items.iter().map(|i| i.flow.id));
        // New flows land anywhere in id order, before and after the position.
        for _ in 0..3 {
            create(&store, video_flow()).await;
        }
        match page.next {
            Some(key) => after = Some(key),
            None => break,
        }
    }
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "no duplicates, in order"
    );
    let seen: BTreeSet<_> = seen.into_iter().collect();
    assert!(
        originals.is_subset(&seen),
        "every flow present from the start is listed"
    );
}

pub async fn list_sources_filters_and_pages(make: impl MakeStore) {
    let (store, _guard) = fresh(make).await;
    let mut by_format = std::collections::BTreeMap::<&str, BTreeSet<Uuid>>::new();
    for i in 0..9 {
        let format = [Format::Video, Format::Audio, Format::Data][i % 3];
        let flow = create(&store, flow_of(format)).await;
        by_format
            .entry(format.as_urn())
            .or_default()
            .insert(flow.source_id);
    }
    let mut after = None;
    let mut seen = Vec::new();
    loop {
        let page = store
            .list_sources(&SourceFilter::default(), &PageRequest { limit: 2, after })
            .await
            .unwrap();
        assert!(page.items.len() <= 2);
        seen.extend(page.items.iter().map(|s| s.id));
        match page.next {
            Some(key) => after = Some(key),
            None => break,
        }
    }
    assert_eq!(seen.len(), 9);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    let audio = store
        .list_sources(
            &SourceFilter {
                format: Some(Format::Audio),
                ..Default::default()
            },
            &all_flows(),
        )
        .await
        .unwrap();
    let audio: BTreeSet<_> = audio.items.iter().map(|s| s.id).collect();
    assert_eq!(&audio, &by_format[Format::Audio.as_urn()]);

    // A source is named as the flow that made it, and keeps that name when later flows
    // of it, or that flow itself, are named otherwise.
    let mut named = flow_of(Format::Video);
    named.label = Some("camera 3".into());
    named.description = Some("studio TC1, wide".into());
    named.tags.insert("studio".into(), tag("tc1"));
    let named = create(&store, named).await;
    let mut sibling = flow_of(Format::Video);
    sibling.source_id = named.source_id;
    sibling.label = Some("camera 3, proxy".into());
    create(&store, sibling).await;
    let mut renamed = named.clone();
    renamed.label = Some("camera 4".into());
    store.put_flow(renamed).await.unwrap();
    let source = store.get_source(named.source_id).await.unwrap().unwrap();
    assert_eq!(source.label.as_deref(), Some("camera 3"));
    assert_eq!(source.description.as_deref(), Some("studio TC1, wide"));
    assert_eq!(source.tags.get("studio"), Some(&tag("tc1")));
    for filter in [
        SourceFilter {
            label: Some("camera 3".into()),
            ..Default::default()
        },
        SourceFilter {
            tags: vec![("studio".into(), "tc1".into())],
            ..Default::default()
        },
    ] {
        let found = store.list_sources(&filter, &all_flows()).await.unwrap();
        let ids: Vec<_> = found.items.iter().map(|s| s.id).collect();
        assert_eq!(ids, [named.source_id], "{filter:?}");
    }
}

/// Every bracket form of the timerange grammar, with the seconds it selects among
/// grains at -1:0, 0:0 .. 9:0.
const RANGES: &[(&str, &[i64])] = &[
    ("_", &[-1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
    ("()", &[]),
    ("[2:0_5:0)", &[2, 3, 4]),
    ("(2:0_5:0]", &[3, 4, 5]),
    ("[2:0_5:0]", &[2, 3, 4, 5]),
    ("(2:0_5:0)", &[3, 4]),
    ("2:0_5:0", &[2, 3, 4, 5]),
    ("[3:0]", &[3]),
    ("3:0", &[3]),
    ("[3:500000000]", &[]),
    ("(7:0_", &[8, 9]),
    ("[7:0_", &[7, 8, 9]),
    ("7:0_", &[7, 8, 9]),
    ("_0:0)", &[-1]),
    ("_0:0]", &[-1, 0]),
    ("_0:0", &[-1, 0]),
    ("[-1:0_0:0]", &[-1, 0]),
    ("(-1:0_1:0)", &[0]),
    ("[2:500000000_4:500000000)", &[3, 4]),
    ("(8:999999999_", &[9]),
    ("[5:0_2:0)", &[]),
    ("[3:0_3:0)", &[]),
    ("[100:0_", &[]),
    ("_-5:0]", &[]),
];

pub async fn timerange_queries(make: impl MakeStore) {
    let (store, _guard) = fresh(make).await;
    let flow = create(&store, video_flow()).await;
    let sent = eleven_frames(&flow);
    write(&store, flow.id, sent.clone()).await.unwrap();
    let session = store.open_read(flow.id).await.unwrap();
    for &(text, want) in RANGES {
        let range = tr(text);
        let want: Vec<Timestamp> = want.iter().map(|&s| secs(s)).collect();
        let mut want_rev = want.clone();
        want_rev.reverse();
        let got = collect(&session, query(range, Order::Ascending, None))
            .await
            .unwrap();
        assert_eq!(stamps(&got), want, "{text} ascending");
        for grain in &got {
            let index = usize::try_from(grain.origin_timestamp().to_nanos() / 1_000_000_000 + 1)
                .expect("a stored second");
            assert_stored(grain, &sent[index]);
        }
        let got = collect(&session, query(range, Order::Descending, None))
            .await
            .unwrap();
        assert_eq!(stamps(&got), want_rev, "{text} descending");
        for count in [0, 1, 2, 20] {
            let n = want.len().min(count as usize);
            let got = collect(&session, query(range, Order::Ascending, Some(count)))
                .await
                .unwrap();
            assert_eq!(stamps(&got), want[..n], "{text} count {count}");
            let got = collect(&session, query(range, Order::Descending, Some(count)))
                .await
                .unwrap();
            assert_eq!(
                stamps(&got),
                want_rev[..n],
                "{text} count {count} descending"
            );
        }
        // A reader continues after the last grain it received with `(LAST_`.
        if let Some(&last) = want.first() {
            let rest = collect(
                &session,
                query(
                    range.intersect(&TimeRange::after(last)),
                    Order::Ascending,
                    None,
                ),
            )
            .await
            .unwrap();
            assert_eq!(stamps(&rest), want[1..], "{text} continued");
        }
    }
    for s in [-1, 0, 5, 9] {
        let grain = session.get(secs(s), true).await.unwrap().expect("stored");
        assert_stored(&grain, &sent[(s + 1) as usize]);
    }
    assert!(session.get(ts("5:1"), true).await.unwrap().is_none());
}

pub async fn reads_page_across_boundaries(make: impl MakeStore) {
    let (store, _guard) = fresh(make).await;
    let flow = create(&store, video_flow()).await;
    let sent: Vec<Grain> = (0..10).map(|s| frame(&flow, secs(s), 100, 2)).collect();
    write(&store, flow.id, sent.clone()).await.unwrap();
    let base = store.open_read(flow.id).await.unwrap();
    let limits = [
        page_of(1),
        page_of(2),
        page_of(3),
        page_of(9),
        page_of(10),
        page_of(11),
        // Bytes bound the page too, and a page always holds one grain.
        PageLimit {
            grains: 1000,
            bytes: 150,
        },
        PageLimit {
            grains: 1000,
            bytes: 1,
        },
    ];
    for limit in limits {
        let session = base.clone().with_page_limit(limit);
        for &(text, want) in RANGES {
            let range = tr(text);
            let want: Vec<Timestamp> = want.iter().filter(|&&s| s >= 0).map(|&s| secs(s)).collect();
            let got = collect(&session, query(range, Order::Ascending, None))
                .await
                .unwrap();
            assert_eq!(stamps(&got), want, "{text} with {limit:?}");
            let mut rev = want.clone();
            rev.reverse();
            let got = collect(&session, query(range, Order::Descending, None))
                .await
                .unwrap();
            assert_eq!(stamps(&got), rev, "{text} descending with {limit:?}");
            for count in [1, 3, 5] {
                let n = want.len().min(count as usize);
                let got = collect(&session, query(range, Order::Ascending, Some(count)))
                    .await
                    .unwrap();
                assert_eq!(stamps(&got), want[..n], "{text} count {count} {limit:?}");
                let got = collect(&session, query(range, Order::Descending, Some(count)))
                    .await
                    .unwrap();
                assert_eq!(stamps(&got), rev[..n], "{text} rev count {count} {limit:?}");
            }
        }
        let all = collect(&session, GrainQuery::all()).await.unwrap();
        for (got, sent) in all.iter().zip(&sent) {
            assert_stored(got, sent);
        }
        // Without payloads the headers are the same and the payloads empty.
        let bare = collect(
            &session,
            GrainQuery {
                with_payload: false,
                ..GrainQuery::all()
            },
        )
        .await
        .unwrap();
        assert_eq!(bare.len(), 10);
        for (got, full) in bare.iter().zip(&all) {
            assert!(got.payload().is_empty());
            assert_eq!(got.header(), full.header());
        }
    }
}

/// A page that stops short because the range ran out says that it ended, so a reader
/// asks for no empty page after it; a page the limit (count or bytes) cuts says no such
/// thing. Grains stored by one commit and by many, both orders, with and without
/// payloads, grain pages and GSF pages.
pub async fn pages_say_when_the_range_ended(make: impl MakeStore) {
    let (store, _guard) = fresh(make).await;
    let flow = create(&store, video_flow()).await;
    write(
        &store,
        flow.id,
        (0..5).map(|s| frame(&flow, secs(s), 100, 4)),
    )
    .await
    .unwrap();
    for s in 5..10 {
        write(&store, flow.id, [frame(&flow, secs(s), 100, 4)])
            .await
            .unwrap();
    }
    let base = store.open_read(flow.id).await.unwrap();
    for order in [Order::Ascending, Order::Descending] {
        for with_payload in [true, false] {
            let what = format!("{order:?}, payloads {with_payload}");
            let q = |text: &str, count: Option<u64>| GrainQuery {
                range: tr(text),
                order,
                count,
                with_payload,
            };
            // Pages of four through ten grains: 4, 4, then the 2 left, which end it.
            let session = base.clone().with_page_limit(page_of(4));
            let (mut resume, mut pages) = (None, Vec::new());
            loop {
                let page = session.page(&q("_", None), resume).await.unwrap();
                pages.push((page.grains.len(), page.ended));
                resume = page.grains.last().map(Grain::origin_timestamp);
                if page.ended || page.grains.is_empty() {
                    break;
                }
            }
            assert_eq!(pages, [(4, false), (4, false), (2, true)], "{what}");
            // A range shorter than the page, inside one commit and across commits.
            for (text, n) in [("[1:0_4:0)", 3), ("[3:0_7:0)", 4), ("[8:0_", 2)] {
                let session = base.clone().with_page_limit(page_of(10));
                let page = session.page(&q(text, None), None).await.unwrap();
                assert_eq!((page.grains.len(), page.ended), (n, true), "{text}, {what}");
            }
            // Nothing in range: an empty page that ends it.
            for text in ["()", "[3:500000000]", "[20:0_"] {
                let page = base.page(&q(text, None), None).await.unwrap();
                assert_eq!((page.grains.len(), page.ended), (0, true), "{text}, {what}");
            }
            // Cut by the query's count: more follow.
            let page = base.page(&q("_", Some(3)), None).await.unwrap();
            assert_eq!((page.grains.len(), page.ended), (3, false), "count, {what}");
            let page = base.page(&q("_", Some(0)), None).await.unwrap();
            assert!(page.grains.is_empty(), "count 0, {what}");
        }
        // Cut by bytes (100-byte payloads, 250 bytes a page): more follow.
        let session = base.clone().with_page_limit(PageLimit {
            grains: 1000,
            bytes: 250,
        });
        let page = session
            .page(&query(tr("_"), order, None), None)
            .await
            .unwrap();
        assert_eq!(
            (page.grains.len(), page.ended),
            (3, false),
            "bytes, {order:?}"
        );
        // GSF pages: the last one, short of the limit, ends the stream.
        let session = base.clone().with_page_limit(page_of(4));
        let pages: Vec<_> = session
            .gsf_pages(query(tr("_"), order, None), 1)
            .map(|page| page.map(|p| (p.grains, p.ended)))
            .try_collect()
            .await
            .unwrap();
        assert_eq!(pages, [(4, false), (4, false), (2, true)], "gsf, {order:?}");
    }
}

pub async fn flow_timerange(make: impl MakeStore) {
    let (store, _guard) = fresh(make).await;
    let flow = create(&store, video_flow()).await;
    let check = |want: &'static str| {
        let store = &store;
        let id = flow.id;
        async move {
            let info = store.get_flow(id).await.unwrap().unwrap();
            assert_eq!(info.timerange, tr(want), "flow timerange");
            let session = store.open_read(id).await.unwrap();
            assert_eq!(
                session.timerange().await.unwrap(),
                tr(want),
                "session timerange"
            );
        }
    };
    check("()").await;
    write(&store, flow.id, [frame(&flow, secs(10), 8, 0)])
        .await
        .unwrap();
    check("[10:0_10:40000000)").await;
    write(&store, flow.id, [frame(&flow, secs(11), 8, 0)])
        .await
        .unwrap();
    check("[10:0_11:40000000)").await;
    // The last grain has no duration: the range ends inclusively at it.
    let no_duration = with_duration(frame(&flow, secs(12), 8, 0), Rational::new(0, 1));
    write(&store, flow.id, [no_duration]).await.unwrap();
    check("[10:0_12:0]").await;
    write(&store, flow.id, [event(&flow, secs(9), "early")])
        .await
        .unwrap();
    check("[9:0_12:0]").await;
    store.delete_grains(flow.id, &tr("[12:0]")).await.unwrap();
    check("[9:0_11:40000000)").await;
    // A duration that is not a whole number of nanoseconds.
    let third = with_duration(frame(&flow, secs(13), 8, 0), Rational::new(1, 3));
    write(&store, flow.id, [third]).await.unwrap();
    check("[9:0_13:333333333)").await;
    // A single grain without duration is an instant.
    store.delete_grains(flow.id, &tr("(9:0_")).await.unwrap();
    check("[9:0]").await;
    store.delete_grains(flow.id, &tr("_")).await.unwrap();
    check("()").await;
}

pub async fn conflict_stops_the_batch(make: impl MakeStore) {
    let (store, _guard) = fresh(make).await;
    let flow = create(&store, video_flow()).await;
    let original: Vec<Grain> = (0..5).map(|s| frame(&flow, secs(s), 200, 3)).collect();
    write(&store, flow.id, original.clone()).await.unwrap();

    let mut session = store.open_write(flow.id).await.unwrap();
    session.stage(frame(&flow, secs(10), 200, 3)).unwrap();
    session.stage(frame(&flow, secs(11), 200, 3)).unwrap();
    let first = session.commit().await.unwrap();
    assert_eq!((first.written, first.unchanged), (2, 0));

    session.stage(frame(&flow, secs(12), 200, 3)).unwrap();
    session.stage(original[0].clone()).unwrap();
    session.stage(frame(&flow, secs(13), 200, 3)).unwrap();
    // Same timestamp, another payload.
    session.stage(frame(&flow, secs(2), 200, 99)).unwrap();
    session.stage(frame(&flow, secs(14), 200, 3)).unwrap();
    session.stage(frame(&flow, secs(15), 200, 3)).unwrap();
    match session.commit().await {
        Err(StoreError::Conflict {
            timestamp,
            committed,
        }) => {
            assert_eq!(timestamp, secs(2));
            assert_eq!(
                committed, 5,
                "two of the first commit, three (one unchanged) before the conflict"
            );
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(session.staged(), 0);
    assert_eq!(
        session.totals(),
        BatchOutcome {
            written: 4,
            unchanged: 1,
            first: Some(secs(10)),
            last: Some(secs(13)),
        }
    );
    // The session stays usable.
    session.stage(frame(&flow, secs(14), 200, 3)).unwrap();
    assert_eq!(session.commit().await.unwrap().written, 1);
    drop(session);

    let stored = read_all(&store, flow.id).await;
    let want: Vec<_> = [0, 1, 2, 3, 4, 10, 11, 12, 13, 14]
        .into_iter()
        .map(secs)
        .collect();
    assert_eq!(
        stamps(&stored),
        want,
        "nothing after the conflict is stored"
    );
    assert_stored(&stored[2], &original[2]);

    // A header difference is a conflict too.
    let other_rate = {
        let (mut header, payload) = original[3].clone().into_parts();
        header.rate = Rational::new(50, 1);
        Grain::new(header, payload).unwrap()
    };
    match write(&store, flow.id, [other_rate]).await {
        Err(StoreError::Conflict {
            timestamp,
            committed: 0,
        }) => assert_eq!(timestamp, secs(3)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_stored(&read_all(&store, flow.id).await[3], &original[3]);
}

pub async fn identical_resend_is_unchanged(make: impl MakeStore) {
    let (store, _guard) = fresh(make).await;
    let flow = create(&store, video_flow()).await;
    let sent: Vec<Grain> = (0..4)
        .map(|s| frame(&flow, secs(s), 20_000 * s as usize, 4))
        .chain([event(&flow, secs(4), "e")])
        .collect();
    let outcome = write(&store, flow.id, sent.clone()).await.unwrap();
    assert_eq!(
        outcome,
        BatchOutcome {
            written: 5,
            unchanged: 0,
            first: Some(secs(0)),
            last: Some(secs(4)),
        }
    );
    let before = read_all(&store, flow.id).await;
    let info = store.get_flow(flow.id).await.unwrap().unwrap();
    let mut watch = store.watch(flow.id);
    watch.borrow_and_update();

    tokio::time::sleep(Duration::from_millis(5)).await;
    let outcome = write(&store, flow.id, sent.clone()).await.unwrap();
    assert_eq!(
        outcome,
        BatchOutcome {
            written: 0,
            unchanged: 5,
            first: None,
            last: None,
        }
    );
    // Another creation timestamp does not make another grain.
    let restamped: Vec<Grain> = sent
        .iter()
        .map(|g| with_creation(g.clone(), Some(secs(1_000_000))))
        .collect();
    let outcome = write(&store, flow.id, restamped).await.unwrap();
    assert_eq!((outcome.written, outcome.unchanged), (0, 5));

    let after = read_all(&store, flow.id).await;
    assert_eq!(after, before, "nothing changed, creation timestamps kept");
    assert_eq!(store.get_flow(flow.id).await.unwrap().unwrap(), info);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!watch.has_changed().unwrap(), "a no-op does not notify");
}

pub async fn duplicate_timestamps_in_one_batch(make: impl MakeStore) {
    let (store, _guard) = fresh(make).await;
    let flow = create(&store, video_flow()).await;
    for len in [10, 40_000] {
        let at = secs(len as i64);
        let a = frame(&flow, at, len, 5);
        let outcome = write(&store, flow.id, [a.clone(), a.clone()])
            .await
            .unwrap();
        assert_eq!((outcome.written, outcome.unchanged), (1, 1), "{len} bytes");

        let next = at.checked_add(secs(1)).unwrap();
        let b = frame(&flow, next, len, 5);
        let b2 = frame(&flow, next, len, 6);
        let after = next.checked_add(secs(1)).unwrap();
        let c = frame(&flow, after, len, 5);
        match write(&store, flow.id, [b.clone(), b2, c]).await {
            Err(StoreError::Conflict {
                timestamp,
                committed: 1,
            }) => assert_eq!(timestamp, next),
            other => panic!("expected a conflict, got {other:?}"),
        }
        let session = store.open_read(flow.id).await.unwrap();
        assert_stored(&session.get(at, true).await.unwrap().unwrap(), &a);
        assert_stored(&session.get(next, true).await.unwrap().unwrap(), &b);
        assert!(session.get(after, true).await.unwrap().is_none());
    }
}

pub async fn delete_grains_by_range(make: impl MakeStore) {
    let (store, _guard) = fresh(make).await;
    let flow = create(&store, video_flow()).await;
    let sent: Vec<Grain> = (0..10).map(|s| frame(&flow, secs(s), 30_000, 6)).collect();
    write(&store, flow.id, sent.clone()).await.unwrap();

    assert_eq!(
        store
            .delete_grains(flow.id, &tr("[2:0_5:0)"))
            .await
            .unwrap(),
        3
    );
    let left = read_all(&store, flow.id).await;
    assert_eq!(stamps(&left), [0, 1, 5, 6, 7, 8, 9].map(secs));
    for grain in &left {
        let s = grain.origin_timestamp().to_nanos() / 1_000_000_000;
        assert_stored(grain, &sent[s as usize]);
    }
    assert_eq!(
        store.get_flow(flow.id).await.unwrap().unwrap().timerange,
        tr("[0:0_9:40000000)")
    );
    assert_eq!(
        store
            .delete_grains(flow.id, &tr("[2:0_5:0)"))
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.delete_grains(flow.id, &tr("()")).await.unwrap(), 0);
    assert_eq!(store.delete_grains(flow.id, &tr("(7:0_")).await.unwrap(), 2);
    assert_eq!(
        store.get_flow(flow.id).await.unwrap().unwrap().timerange,
        tr("[0:0_7:40000000)")
    );
    assert_eq!(store.delete_grains(flow.id, &tr("[0:0]")).await.unwrap(), 1);
    assert_eq!(
        stamps(&read_all(&store, flow.id).await),
        [1, 5, 6, 7].map(secs)
    );
    // A deleted timestamp takes another grain without a conflict.
    let other = frame(&flow, secs(3), 10, 7);
    write(&store, flow.id, [other.clone()]).await.unwrap();
    assert_eq!(store.delete_grains(flow.id, &tr("_")).await.unwrap(), 5);
    assert!(read_all(&store, flow.id).await.is_empty());
    assert_eq!(
        store.get_flow(flow.id).await.unwrap().unwrap().timerange,
        TimeRange::empty()
    );
}

pub async fn delete_flow_removes_its_grains(make: impl MakeStore) {
    let (store, _guard) = fresh(make).await;
    let flow = create(&store, video_flow()).await;
    let keep = create(&store, video_flow()).await;
    write(
        &store,
        flow.id,
        (0..5).map(|s| frame(&flow, secs(s), 25_000, 8)),
    )
    .await
    .unwrap();
    write(
        &store,
        keep.id,
        (0..5).map(|s| frame(&keep, secs(s), 25_000, 8)),
    )
    .await
    .unwrap();

    assert!(store.delete_flow(flow.id).await.unwrap());
    assert!(!store.delete_flow(flow.id).await.unwrap());
    assert_eq!(store.get_flow(flow.id).await.unwrap(), None);
    assert!(matches!(
        store.open_read(flow.id).await,
        Err(StoreError::FlowNotFound(id)) if id == flow.id
    ));
    assert!(matches!(
        store.open_write(flow.id).await,
        Err(StoreError::FlowNotFound(_))
    ));
    assert!(
        !listed(&store, FlowFilter::default())
            .await
            .contains(&flow.id)
    );

    assert_eq!(
        store.put_flow(flow.clone()).await.unwrap(),
        PutOutcome::Created
    );
    assert!(read_all(&store, flow.id).await.is_empty(), "no old grains");
    assert_eq!(
        store.get_flow(flow.id).await.unwrap().unwrap().timerange,
        TimeRange::empty()
    );
    let fresh_grain = frame(&flow, secs(2), 10, 9);
    let outcome = write(&store, flow.id, [fresh_grain.clone()]).await.unwrap();
    assert_eq!(outcome.written, 1);
    assert_stored(&read_all(&store, flow.id).await[0], &fresh_grain);
    assert_eq!(read_all(&store, keep.id).await.len(), 5, "other flows stay");
}

pub async fn read_only_flow_refuses_changes(make: impl MakeStore) {
    let (store, _guard) = fresh(make).await;
    let mut flow = create(&store, video_flow()).await;
    write(
        &store,
        flow.id,
        (0..3).map(|s| frame(&flow, secs(s), 10, 10)),
    )
    .await
    .unwrap();

    // A session opened before the flow became read-only cannot commit either.
    let mut late = store.open_write(flow.id).await.unwrap();
    flow.read_only = true;
    store.put_flow(flow.clone()).await.unwrap();
    late.stage(frame(&flow, secs(7), 10, 10)).unwrap();
    assert!(matches!(
        late.commit().await,
        Err(StoreError::ReadOnly(id)) if id == flow.id
    ));
    drop(late);

    assert!(matches!(
        store.open_write(flow.id).await,
        Err(StoreError::ReadOnly(id)) if id == flow.id
    ));
    assert!(matches!(
        store.delete_grains(flow.id, &tr("_")).await,
        Err(StoreError::ReadOnly(_))
    ));
    assert_eq!(
        stamps(&read_all(&store, flow.id).await),
        [0, 1, 2].map(secs),
        "reads work and nothing changed"
    );
    assert_eq!(store.sessions().active(), 0);

    flow.read_only = false;
    store.put_flow(flow.clone()).await.unwrap();
    write(&store, flow.id, [frame(&flow, secs(7), 10, 10)])
        .await
        .unwrap();
    assert_eq!(store.delete_grains(flow.id, &tr("_")).await.unwrap(), 4);
}

pub async fn unknown_flow(make: impl MakeStore) {
    let (store, _guard) = fresh(make).await;
    let id = Uuid::new_v4();
    assert!(matches!(
        store.open_read(id).await,
        Err(StoreError::FlowNotFound(x)) if x == id
    ));
    assert!(matches!(
        store.open_write(id).await,
        Err(StoreError::FlowNotFound(x)) if x == id
    ));
    assert!(matches!(
        store.delete_grains(id, &tr("_")).await,
        Err(StoreError::FlowNotFound(x)) if x == id
    ));
    assert_eq!(store.get_flow(id).await.unwrap(), None);
    assert!(!store.delete_flow(id).await.unwrap());
    assert_eq!(store.sessions().active(), 0, "failed opens hold no session");

    // A flow deleted while a write session is open.
    let flow = create(&store, video_flow()).await;
    let mut session = store.open_write(flow.id).await.unwrap();
    store.delete_flow(flow.id).await.unwrap();
    session.stage(frame(&flow, secs(1), 10, 0)).unwrap();
    assert!(matches!(
        session.commit().await,
        Err(StoreError::FlowNotFound(x)) if x == flow.id
    ));
}

pub async fn grain_of_another_flow_is_refused(make: impl MakeStore) {
    let (store, _guard) = fresh(make).await;
    let flow = create(&store, video_flow()).await;
    let other = create(&store, video_flow()).await;
    let mut session = store.open_write(flow.id).await.unwrap();
    assert_eq!(session.flow_id(), flow.id);
    match session.stage(frame(&other, secs(1), 10, 0)) {
        Err(StoreError::WrongFlow { expected, found }) => {
            assert_eq!((expected, found), (flow.id, other.id));
        }
        other => panic!("expected WrongFlow, got {other:?}"),
    }
    assert_eq!(session.staged(), 0);
    session.stage(frame(&flow, secs(1), 10, 0)).unwrap();
    assert_eq!(session.commit().await.unwrap().written, 1);
    drop(session);
    assert!(read_all(&store, other.id).await.is_empty());
    assert_eq!(read_all(&store, flow.id).await.len(), 1);
}

pub async fn dropped_write_session_rolls_back(make: impl MakeStore) {
    let (store, _guard) = fresh(make).await;
    let flow = create(&store, video_flow()).await;
    let mut watch = store.watch(flow.id);
    let mut session = store.open_write(flow.id).await.unwrap();
    for s in 0..3 {
        session.stage(frame(&flow, secs(s), 50_000, 11)).unwrap();
    }
    assert_eq!(session.staged(), 3);
    drop(session);
    assert!(read_all(&store, flow.id).await.is_empty());
    assert_eq!(
        store.get_flow(flow.id).await.unwrap().unwrap().timerange,
        TimeRange::empty()
    );

    let mut session = store.open_write(flow.id).await.unwrap();
    session.stage(frame(&flow, secs(0), 50_000, 11)).unwrap();
    session.commit().await.unwrap();
    watch.borrow_and_update();
    session.stage(frame(&flow, secs(1), 50_000, 11)).unwrap();
    drop(session);
    assert_eq!(stamps(&read_all(&store, flow.id).await), [secs(0)]);
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(!watch.has_changed().unwrap());
    assert_eq!(store.sessions().active(), 0);
}

pub async fn sessions_released_on_drop(make: impl MakeStore) {
    let (store, _guard) = fresh(make).await;
    let store = Arc::new(store);
    let flow = create(&*store, video_flow()).await;
    write(
        &*store,
        flow.id,
        (0..8).map(|s| frame(&flow, secs(s), 100, 12)),
    )
    .await
    .unwrap();
    assert_eq!(store.sessions().active(), 0);

    let session = store
        .open_read(flow.id)
        .await
        .unwrap()
        .with_page_limit(page_of(2));
    assert_eq!(store.sessions().active(), 1);
    let mut stream = session.grains(GrainQuery::all());
    let clone = session.clone();
    for _ in 0..3 {
        stream.next().await.unwrap().unwrap();
    }
    drop(session);
    drop(clone);
    assert_eq!(store.sessions().active(), 1, "the stream holds the session");
    stream.next().await.unwrap().unwrap();
    drop(stream);
    assert_eq!(store.sessions().active(), 0, "a stream dropped half-way");

    // Streams read to the end, then dropped.
    let session = store.open_read(flow.id).await.unwrap();
    let streams: Vec<_> = (0..3).map(|_| session.grains(GrainQuery::all())).collect();
    drop(session);
    for stream in streams {
        assert_eq!(stream.count().await, 8);
    }
    assert_eq!(store.sessions().active(), 0);

    let write_session = store.open_write(flow.id).await.unwrap();
    let read_session = store.open_read(flow.id).await.unwrap();
    assert_eq!(store.sessions().active(), 2);
    drop(write_session);
    drop(read_session);
    assert_eq!(store.sessions().active(), 0);

    // A task reading a stream is cancelled half-way.
    let task = {
        let store = store.clone();
        let id = flow.id;
        tokio::spawn(async move {
            let session = store
                .open_read(id)
                .await
                .unwrap()
                .with_page_limit(page_of(1));
            let mut stream = session.grains(GrainQuery::all());
            stream.next().await;
            std::future::pending::<()>().await;
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(store.sessions().active(), 1);
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_eq!(store.sessions().active(), 0);
}

pub async fn full_pool_is_busy(make: impl MakeStore) {
    let setup = StoreSetup {
        max_sessions: 2,
        session_wait: Duration::from_millis(200),
    };
    let (store, _guard) = make.make(setup).await;
    let store = Arc::new(store);
    let flow = create(&*store, video_flow()).await;
    assert_eq!(store.sessions().capacity(), 2);

    let reader = store.open_read(flow.id).await.unwrap();
    let stream = reader.grains(GrainQuery::all());
    drop(reader);
    let writer = store.open_write(flow.id).await.unwrap();
    let started = Instant::now();
    match store.open_read(flow.id).await {
        Err(StoreError::Busy { capacity, waited }) => {
            assert_eq!(capacity, 2);
            assert!(waited >= Duration::from_millis(200));
        }
        other => panic!("expected Busy, got {:?}", other.map(|_| ())),
    }
    assert!(started.elapsed() >= Duration::from_millis(190), "it waited");
    assert!(matches!(
        store.open_write(flow.id).await,
        Err(StoreError::Busy { .. })
    ));
    assert_eq!(store.sessions().active(), 2);

    // A waiting open gets the place freed while it waits.
    let waiter = {
        let store = store.clone();
        let id = flow.id;
        tokio::spawn(async move { store.open_read(id).await.map(|_| ()) })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(stream);
    waiter.await.unwrap().expect("the freed place is taken");
    drop(writer);
    assert_eq!(store.sessions().active(), 0);
    let a = store.open_read(flow.id).await.unwrap();
    let b = store.open_read(flow.id).await.unwrap();
    drop((a, b));
    assert_eq!(store.sessions().active(), 0);
}

/// Single-grain reads of small grains (payloads kept with the index, which a backend
/// may also keep in memory) see exactly what their session's snapshot holds, through
/// writes, deletes and a rewrite at the same timestamp, and read back as a range read
/// does (creation timestamp included).
pub async fn small_grain_gets_follow_the_snapshot(make: impl MakeStore) {
    let (store, _guard) = fresh(make).await;
    let flow = create(&store, video_flow()).await;
    // No creation timestamps: the store sets them at the write.
    let sent: Vec<Grain> = (0..6)
        .map(|s| with_creation(frame(&flow, secs(s), 200, 3), None))
        .collect();
    write(&store, flow.id, sent[..3].to_vec()).await.unwrap();
    let early = store.open_read(flow.id).await.unwrap();
    write(&store, flow.id, sent[3..].to_vec()).await.unwrap();
    let late = store.open_read(flow.id).await.unwrap();

    assert!(early.get(secs(4), true).await.unwrap().is_none());
    let ranged = collect(&late, GrainQuery::all()).await.unwrap();
    assert_eq!(ranged.len(), 6);
    for (s, from_range) in ranged.iter().enumerate() {
        let got = late.get(secs(s as i64), true).await.unwrap().unwrap();
        assert_stored(&got, &sent[s]);
        assert!(got.creation_timestamp().is_some());
        assert_eq!(got.header(), from_range.header(), "grain {s}");
        assert_eq!(got.payload(), from_range.payload());
        let bare = late.get(secs(s as i64), false).await.unwrap().unwrap();
        assert_eq!(bare.header(), from_range.header());
        assert!(bare.payload().is_empty());
    }

    store.delete_grains(flow.id, &tr("[1:0]")).await.unwrap();
    let after_delete = store.open_read(flow.id).await.unwrap();
    assert!(after_delete.get(secs(1), true).await.unwrap().is_none());
    // Sessions begun before the delete still hold the grain.
    assert_stored(&early.get(secs(1), true).await.unwrap().unwrap(), &sent[1]);
    assert_stored(&late.get(secs(1), true).await.unwrap().unwrap(), &sent[1]);

    // Another grain at the freed timestamp: only sessions begun after it see it.
    let rewritten = frame(&flow, secs(1), 200, 99);
    write(&store, flow.id, vec![rewritten.clone()])
        .await
        .unwrap();
    let after_rewrite = store.open_read(flow.id).await.unwrap();
    assert_stored(
        &after_rewrite.get(secs(1), true).await.unwrap().unwrap(),
        &rewritten,
    );
    assert!(after_delete.get(secs(1), true).await.unwrap().is_none());
    assert_stored(&late.get(secs(1), true).await.unwrap().unwrap(), &sent[1]);

    // Deleting the flow: no session begun afterwards reads its grains.
    store.delete_flow(flow.id).await.unwrap();
    assert!(matches!(
        store.open_read(flow.id).await,
        Err(StoreError::FlowNotFound(_))
    ));
    create(&store, flow.clone()).await;
    let recreated = store.open_read(flow.id).await.unwrap();
    assert!(recreated.get(secs(2), true).await.unwrap().is_none());
}

pub async fn read_session_is_a_snapshot(make: impl MakeStore) {
    let (store, _guard) = fresh(make).await;
    let flow = create(&store, video_flow()).await;
    let sent: Vec<Grain> = (0..6).map(|s| frame(&flow, secs(s), 40_000, 13)).collect();
    write(&store, flow.id, sent[..3].to_vec()).await.unwrap();

    let early = store.open_read(flow.id).await.unwrap();
    write(&store, flow.id, sent[3..].to_vec()).await.unwrap();
    let late = store.open_read(flow.id).await.unwrap();

    let seen = collect(&early, GrainQuery::all()).await.unwrap();
    assert_eq!(stamps(&seen), [0, 1, 2].map(secs));
    assert_eq!(early.timerange().await.unwrap(), tr("[0:0_2:40000000)"));
    assert!(early.get(secs(4), true).await.unwrap().is_none());
    assert_eq!(collect(&late, GrainQuery::all()).await.unwrap().len(), 6);

    store
        .delete_grains(flow.id, &tr("[0:0_2:0]"))
        .await
        .unwrap();
    let after = store.open_read(flow.id).await.unwrap();
    // The sessions opened before the delete still see every grain, payloads whole.
    let seen = collect(&late, GrainQuery::all()).await.unwrap();
    assert_eq!(seen.len(), 6);
    for (got, sent) in seen.iter().zip(&sent) {
        assert_stored(got, sent);
    }
    let seen = collect(&early, GrainQuery::all()).await.unwrap();
    for (got, sent) in seen.iter().zip(&sent) {
        assert_stored(got, sent);
    }
    assert_eq!(late.timerange().await.unwrap(), tr("[0:0_5:40000000)"));
    assert_eq!(
        stamps(&collect(&after, GrainQuery::all()).await.unwrap()),
        [3, 4, 5].map(secs)
    );
    assert_eq!(after.timerange().await.unwrap(), tr("[3:0_5:40000000)"));
}

pub async fn commits_notify_watchers(make: impl MakeStore) {
    let (store, _guard) = fresh(make).await;
    let flow = create(&store, video_flow()).await;
    let other = create(&store, video_flow()).await;
    let mut watch = store.watch(flow.id);
    let mut other_watch = store.watch(other.id);
    assert!(!watch.has_changed().unwrap());

    let grain = frame(&flow, secs(1), 100, 14);
    write(&store, flow.id, [grain.clone()]).await.unwrap();
    // Watchers are woken by the time the commit returns.
    assert!(
        watch.has_changed().unwrap(),
        "notified when the commit returns"
    );
    tokio::time::timeout(Duration::from_secs(5), watch.changed())
        .await
        .expect("notified")
        .unwrap();
    let seq = *watch.borrow_and_update();

    write(&store, flow.id, [grain]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!watch.has_changed().unwrap(), "not after a no-op rewrite");

    store.delete_grains(flow.id, &tr("_")).await.unwrap();
    assert!(watch.has_changed().unwrap(), "a delete is a change");
    assert!(*watch.borrow_and_update() > seq);
    assert!(!other_watch.has_changed().unwrap(), "other flows are quiet");
    write(&store, other.id, [frame(&other, secs(1), 100, 14)])
        .await
        .unwrap();
    assert!(other_watch.has_changed().unwrap());
    assert!(!watch.has_changed().unwrap());
    other_watch.borrow_and_update();

    // A watcher subscribed after a commit sees the next one.
    let mut late = store.watch(flow.id);
    write(&store, flow.id, [frame(&flow, secs(2), 100, 14)])
        .await
        .unwrap();
    assert!(late.has_changed().unwrap());
    late.borrow_and_update();
}

pub async fn one_writer_many_readers(make: impl MakeStore) {
    const GRAINS: usize = 40;
    let (store, _guard) = fresh(make).await;
    let store = Arc::new(store);
    let flow = create(&*store, video_flow()).await;
    let id = flow.id;
    let sent: Arc<Vec<Grain>> = Arc::new(
        (0..GRAINS)
            .map(|i| frame(&flow, secs(i as i64), [0, 300, 33_000][i % 3], 15))
            .collect(),
    );
    let writer = {
        let store = store.clone();
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut session = store.open_write(id).await.unwrap();
            for chunk in sent.chunks(2) {
                for grain in chunk {
                    session.stage(grain.clone()).unwrap();
                }
                session.commit().await.unwrap();
            }
        })
    };
    let readers: Vec<_> = (0..4)
        .map(|r| {
            let store = store.clone();
            let sent = sent.clone();
            tokio::spawn(async move {
                let mut seen = 0;
                let mut rounds = 0;
                let deadline = Instant::now() + Duration::from_secs(60);
                while seen < GRAINS {
                    assert!(
                        Instant::now() < deadline,
                        "reader {r} never saw every grain"
                    );
                    let session = store
                        .open_read(id)
                        .await
                        .unwrap()
                        .with_page_limit(page_of(1 + r));
                    let order = if r % 2 == 0 {
                        Order::Ascending
                    } else {
                        Order::Descending
                    };
                    let mut got = collect(&session, query(TimeRange::eternity(), order, None))
                        .await
                        .unwrap();
                    if order == Order::Descending {
                        got.reverse();
                    }
                    assert!(got.len() >= seen, "a later snapshot never has less");
                    assert_eq!(got.len() % 2, 0, "commits are atomic");
                    for (got, sent) in got.iter().zip(sent.iter()) {
                        assert_stored(got, sent);
                    }
                    let want = match got.last() {
                        None => TimeRange::empty(),
                        Some(last) => TimeRange::half_open(
                            secs(0),
                            last.origin_timestamp()
                                .checked_add(ts("0:40000000"))
                                .unwrap(),
                        ),
                    };
                    assert_eq!(session.timerange().await.unwrap(), want);
                    seen = got.len();
                    rounds += 1;
                    tokio::task::yield_now().await;
                }
                rounds
            })
        })
        .collect();
    writer.await.unwrap();
    for reader in readers {
        assert!(reader.await.unwrap() >= 1);
    }
    assert_eq!(store.sessions().active(), 0);
}

pub async fn payloads_round_trip(make: impl MakeStore) {
    let (store, _guard) = fresh(make).await;
    let flow = create(&store, video_flow()).await;
    let mut sent = vec![
        frame(&flow, secs(0), 3 << 20, 16),
        video(&flow, secs(1), bytes::Bytes::new()),
        frame(&flow, secs(2), 1, 16),
        event(&flow, secs(3), "topic"),
        {
            let header = grainstore::grain::GrainHeader::new(
                flow.source_id,
                flow.id,
                secs(4),
                grainstore::grain::GrainKind::Event,
            );
            Grain::new(header, bytes::Bytes::new()).unwrap()
        },
        {
            let header = grainstore::grain::GrainHeader::new(
                flow.source_id,
                flow.id,
                secs(5),
                grainstore::grain::GrainKind::Empty,
            );
            Grain::new(header, bytes::Bytes::new()).unwrap()
        },
    ];
    for (i, len) in [16_383, 16_384, 16_385, 1 << 20].into_iter().enumerate() {
        sent.push(frame(&flow, secs(6 + i as i64), len, 16));
    }
    write(&store, flow.id, sent.clone()).await.unwrap();
    // Read twice: with a fresh session and after the payloads had a chance to be cached.
    for _ in 0..2 {
        let session = store.open_read(flow.id).await.unwrap();
        let got = collect(&session, GrainQuery::all()).await.unwrap();
        assert_eq!(got.len(), sent.len());
        for (got, sent) in got.iter().zip(&sent) {
            assert_stored(got, sent);
            assert_eq!(got.grain_type(), sent.grain_type());
            let single = session
                .get(sent.origin_timestamp(), true)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&single, got);
            let bare = session
                .get(sent.origin_timestamp(), false)
                .await
                .unwrap()
                .unwrap();
            assert!(bare.payload().is_empty());
            assert_eq!(bare.header(), got.header());
        }
        assert!(got[3].event_payload().unwrap().is_ok());
    }
}

pub async fn creation_timestamp_set_when_absent(make: impl MakeStore) {
    let (store, _guard) = fresh(make).await;
    let flow = create(&store, video_flow()).await;
    let given = with_creation(frame(&flow, secs(2), 10, 17), Some(ts("1234:5")));
    let absent = frame(&flow, secs(1), 10, 17);
    assert_eq!(absent.creation_timestamp(), None);
    let before = Timestamp::now();
    write(&store, flow.id, [absent, given]).await.unwrap();
    let after = Timestamp::now();
    let got = read_all(&store, flow.id).await;
    let set = got[0].creation_timestamp().expect("the store sets it");
    assert!(
        before <= set && set <= after,
        "{before} <= {set} <= {after}"
    );
    assert_eq!(got[1].creation_timestamp(), Some(ts("1234:5")));
}

pub async fn flows_do_not_share_grains(make: impl MakeStore) {
    let (store, _guard) = fresh(make).await;
    // Ids adjacent in the key space, to catch a range that spills into the next flow.
    let mut a = video_flow();
    a.id = Uuid::from_u128(0x10);
    let mut b = video_flow();
    b.id = Uuid::from_u128(0x11);
    let a = create(&store, a).await;
    let b = create(&store, b).await;
    let ga: Vec<Grain> = (-3..3).map(|s| frame(&a, secs(s), 20_000, 18)).collect();
    let gb: Vec<Grain> = (-3..3).map(|s| frame(&b, secs(s), 20_000, 19)).collect();
    write(&store, a.id, ga.clone()).await.unwrap();
    write(&store, b.id, gb.clone()).await.unwrap();
    for (flow, sent) in [(&a, &ga), (&b, &gb)] {
        let session = store.open_read(flow.id).await.unwrap();
        for order in [Order::Ascending, Order::Descending] {
            let mut got = collect(&session, query(TimeRange::eternity(), order, None))
                .await
                .unwrap();
            if order == Order::Descending {
                got.reverse();
            }
            assert_eq!(got.len(), 6);
            for (got, sent) in got.iter().zip(sent.iter()) {
                assert_stored(got, sent);
            }
        }
        assert_eq!(session.timerange().await.unwrap(), tr("[-3:0_2:40000000)"));
    }
    assert_eq!(store.delete_grains(a.id, &tr("_")).await.unwrap(), 6);
    assert_eq!(read_all(&store, b.id).await.len(), 6);
}

/// `ReadSession::gsf_pages` gives, byte for byte, what encoding the grains of the same
/// query one by one gives: every grain kind and payload size around the inline and
/// copy limits, page limits by count and by bytes, both orders, counts.
pub async fn gsf_pages_are_the_grains_encoded(make: impl MakeStore) {
    let (store, _guard) = fresh(make).await;
    let flow = create(&store, video_flow()).await;
    let mut sent = vec![
        frame(&flow, secs(0), 3 << 20, 16),
        video(&flow, secs(1), bytes::Bytes::new()),
        event(&flow, secs(2), "topic"),
        {
            let mut header = grainstore::grain::GrainHeader::new(
                flow.source_id,
                flow.id,
                secs(3),
                grainstore::grain::GrainKind::Empty,
            );
            header.timelabels = vec![grainstore::grain::Timelabel {
                tag: "timecode".into(),
                count: 90_000,
                rate: Rational::new(25, 1),
                drop_frame: false,
            }];
            Grain::new(header, bytes::Bytes::new()).unwrap()
        },
    ];
    for (i, len) in [1, 16_383, 16_384, 16_385, 70_000].into_iter().enumerate() {
        sent.push(frame(&flow, secs(4 + i as i64), len, 16));
    }
    write(&store, flow.id, sent.clone()).await.unwrap();
    let local_id = 1;
    let base = store.open_read(flow.id).await.unwrap();
    let limits = [
        page_of(1),
        page_of(3),
        page_of(100),
        PageLimit {
            grains: 1000,
            bytes: 20_000,
        },
    ];
    for limit in limits {
        let session = base.clone().with_page_limit(limit);
        for (range, order, count) in [
            (TimeRange::eternity(), Order::Ascending, None),
            (TimeRange::eternity(), Order::Descending, None),
            (tr("(1:0_7:0]"), Order::Ascending, Some(4)),
            (tr("(1:0_7:0]"), Order::Descending, Some(2)),
            (tr("[20:0_"), Order::Ascending, None),
        ] {
            let q = query(range, order, count);
            let grains = collect(&session, q.clone()).await.unwrap();
            let mut want = Vec::new();
            for grain in &grains {
                for chunk in grainstore::gsf::encode_grain(local_id, grain) {
                    want.extend_from_slice(&chunk);
                }
            }
            let mut got = Vec::new();
            let mut counted = 0;
            let mut pages = session.gsf_pages(q, local_id);
            while let Some(page) = pages.next().await {
                let page = page.unwrap();
                assert!(page.grains > 0 && page.grains <= limit.grains);
                counted += page.grains;
                for piece in page.pieces {
                    got.extend_from_slice(&piece);
                }
            }
            assert_eq!(
                counted,
                grains.len(),
                "{range} {order:?} {count:?} {limit:?}"
            );
            assert!(
                got == want,
                "{range} {order:?} {count:?} {limit:?}: {} bytes of GSF, {} expected",
                got.len(),
                want.len()
            );
        }
    }
}

/// A grain of the model test at `tick` (40 ms apart): small payloads kept in the index
/// mostly, one in 25 large enough for a segment file.
fn model_grain(flow: &grainstore::store::Flow, tick: u64, salt: u64) -> Grain {
    let at = Timestamp::from_nanos(1_700_000_000_000_000_000 + tick as i128 * 40_000_000).unwrap();
    let len = if (tick ^ salt).is_multiple_of(25) {
        20_000
    } else {
        (tick % 7) as usize * 40 + 10
    };
    frame(flow, at, len, salt)
}

/// A bound of the model test's ranges, over its ticks.
fn model_bound(rng: &mut SplitMix, ticks: u64) -> grainstore::time::Bound {
    use grainstore::time::Bound;
    let at = |t: u64| Timestamp::from_nanos(1_700_000_000_000_000_000 + t as i128 * 40_000_000);
    match rng.below(0, 8) {
        0 => Bound::Unbounded,
        1..=3 => Bound::Inclusive(at(rng.below(0, ticks)).unwrap()),
        _ => Bound::Exclusive(at(rng.below(0, ticks)).unwrap()),
    }
}

/// Batches in time order, out of order, overlapping what is stored (identical and
/// conflicting), range deletes cutting through what earlier batches stored, all checked
/// against a model after every step: full reads, ranges in both orders with counts and
/// small pages, single gets and the flow's timerange. (The embedded store keeps a batch's
/// small grains together, and splits and rewrites those groups as later writes and
/// deletes land among them.)
pub async fn random_writes_and_deletes_match_a_model(make: impl MakeStore) {
    use std::collections::BTreeMap;
    // Few enough that a long batch wraps around onto its own timestamps.
    const TICKS: u64 = 300;
    let (store, _guard) = fresh(make).await;
    let flow = create(&store, video_flow()).await;
    let mut model: BTreeMap<u64, Grain> = BTreeMap::new();
    let mut rng = SplitMix(0x6d6f_64656c);
    for step in 0..60 {
        if rng.below(0, 4) > 0 {
            // A batch: a run of ticks with a stride, sometimes shuffled, sometimes with a
            // stored grain re-sent or changed.
            let n = rng.below(1, 150);
            let stride = rng.below(1, 4);
            let start = rng.below(0, TICKS);
            let mut ticks: Vec<u64> = (0..n).map(|i| (start + i * stride) % TICKS).collect();
            if rng.below(0, 4) == 0 {
                for i in (1..ticks.len()).rev() {
                    ticks.swap(i, rng.below(0, i as u64 + 1) as usize);
                }
            }
            let mut batch: Vec<Grain> = ticks.iter().map(|&t| model_grain(&flow, t, 1)).collect();
            if rng.below(0, 5) == 0 && !model.is_empty() {
                let stored: Vec<u64> = model.keys().copied().collect();
                let tick = stored[rng.below(0, stored.len() as u64) as usize];
                let at = rng.below(0, batch.len() as u64 + 1) as usize;
                batch.insert(at, model_grain(&flow, tick, 2));
            }
            // What the store must do: grains in order until the first conflict.
            let mut want = model.clone();
            let (mut written, mut unchanged, mut conflict) = (0u64, 0u64, None);
            for grain in &batch {
                let tick = ((grain.origin_timestamp().to_nanos() - 1_700_000_000_000_000_000)
                    / 40_000_000) as u64;
                match want.get(&tick) {
                    Some(stored) if stored.same_identity(grain) => unchanged += 1,
                    Some(_) => {
                        conflict = Some(grain.origin_timestamp());
                        break;
                    }
                    None => {
                        want.insert(tick, grain.clone());
                        written += 1;
                    }
                }
            }
            match (write(&store, flow.id, batch).await, conflict) {
                (Ok(outcome), None) => {
                    assert_eq!(
                        (outcome.written, outcome.unchanged),
                        (written, unchanged),
                        "step {step}"
                    )
                }
                (Err(StoreError::Conflict { timestamp, .. }), Some(at)) => {
                    assert_eq!(timestamp, at, "step {step}")
                }
                (got, want) => panic!("step {step}: {got:?}, expected a conflict at {want:?}"),
            }
            model = want;
        } else {
            let range = TimeRange::new(model_bound(&mut rng, TICKS), model_bound(&mut rng, TICKS));
            let doomed: Vec<u64> = model
                .iter()
                .filter(|(_, g)| range.contains(g.origin_timestamp()))
                .map(|(t, _)| *t)
                .collect();
            let deleted = store.delete_grains(flow.id, &range).await.unwrap();
            assert_eq!(deleted, doomed.len() as u64, "step {step}: delete {range}");
            for tick in doomed {
                model.remove(&tick);
            }
        }

        let all = read_all(&store, flow.id).await;
        let want: Vec<&Grain> = model.values().collect();
        assert_eq!(all.len(), want.len(), "step {step}");
        for (got, sent) in all.iter().zip(&want) {
            assert_stored(got, sent);
        }
        let session = store
            .open_read(flow.id)
            .await
            .unwrap()
            .with_page_limit(PageLimit {
                grains: rng.below(1, 20) as usize,
                bytes: [usize::MAX, 1, 500, 20_000][rng.below(0, 4) as usize],
            });
        for _ in 0..4 {
            let range = TimeRange::new(model_bound(&mut rng, TICKS), model_bound(&mut rng, TICKS));
            let order = if rng.below(0, 2) == 0 {
                Order::Ascending
            } else {
                Order::Descending
            };
            let count = (rng.below(0, 3) == 0).then(|| rng.below(1, 30));
            let mut want: Vec<Timestamp> = model
                .values()
                .map(Grain::origin_timestamp)
                .filter(|t| range.contains(*t))
                .collect();
            if order == Order::Descending {
                want.reverse();
            }
            want.truncate(count.map_or(usize::MAX, |c| c as usize));
            let got = collect(&session, query(range, order, count)).await.unwrap();
            assert_eq!(
                stamps(&got),
                want,
                "step {step}: {range} {order:?} {count:?}"
            );
        }
        for _ in 0..6 {
            let tick = rng.below(0, TICKS);
            let at = model_grain(&flow, tick, 1).origin_timestamp();
            let got = session.get(at, true).await.unwrap();
            match (got, model.get(&tick)) {
                (Some(got), Some(sent)) => assert_stored(&got, sent),
                (None, None) => {}
                (got, sent) => panic!(
                    "step {step}: get at {at} gave {:?}, stored {:?}",
                    got.map(|g| g.origin_timestamp()),
                    sent.map(|g| g.origin_timestamp())
                ),
            }
        }
        let timerange = store.get_flow(flow.id).await.unwrap().unwrap().timerange;
        let want = match (model.values().next(), model.values().next_back()) {
            (Some(first), Some(last)) => TimeRange::new(
                grainstore::time::Bound::Inclusive(first.origin_timestamp()),
                grainstore::time::Bound::Exclusive(
                    Timestamp::from_nanos(last.origin_timestamp().to_nanos() + 40_000_000).unwrap(),
                ),
            ),
            _ => TimeRange::empty(),
        };
        assert_eq!(timerange, want, "step {step}");
    }
}
