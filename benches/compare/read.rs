//! Time-range reads: 10,000 small grains a read (grainstore GSF, Redis XRANGE, a
//! JetStream consumer replaying from a start time) and large grains (grainstore GSF
//! against nginx sending a file of the very same bytes from the page cache, Redis,
//! JetStream).

use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

use http_body_util::BodyExt;

use crate::Plan;
use crate::fixtures::{Grainstore, SMALL_BYTES, start_nginx};
use crate::http::{self, Conn};
use crate::ingest::{LargeData, Peers, READ_GRAINS, SmallData, from_query};
use crate::nats::Nats;
use crate::proc::{RssSampler, reset_peak, wait_for_port};
use crate::report::{Meter, Report, Spent, mib, verdict};
use crate::resp::Redis;

/// Large-grain reads per system (for grainstore and nginx, rounds of one read each).
const LARGE_READS: usize = 6;

/// Bytes read and what the server spent on them, summed over reads.
#[derive(Default)]
struct Total {
    bytes: u64,
    wall: f64,
    cpu: f64,
}

impl Total {
    /// Adds one read; returns its MB/s.
    fn add(&mut self, bytes: u64, spent: Spent) -> f64 {
        let wall = spent.wall.as_secs_f64();
        self.bytes += bytes;
        self.wall += wall;
        self.cpu += spent.cpu;
        bytes as f64 / 1e6 / wall
    }

    fn mbs(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.wall
    }

    fn cpu_per_gib(&self) -> f64 {
        self.cpu / (self.bytes as f64 / (1u64 << 30) as f64)
    }
}

pub async fn small(
    plan: &Plan,
    grainstore: &Grainstore,
    peers: &mut Peers,
    data: &SmallData,
    report: &mut Report,
) {
    let reads = plan.reads;
    let windows = data.count / READ_GRAINS;
    let total = reads * READ_GRAINS;
    println!("\n{reads} time-range reads of {READ_GRAINS} x {SMALL_BYTES} B grains");
    let work = format!("time-range read of {READ_GRAINS} {SMALL_BYTES} B grains");
    let per_m = |spent: &Spent| spent.cpu / (total as f64 / 1e6);
    let rate = |spent: &Spent| total as f64 / spent.wall.as_secs_f64();

    let mut conn = Conn::open(grainstore.port).await;
    let meter = Meter::start(grainstore.server.pid);
    for r in 0..reads {
        let k = (r % windows) * READ_GRAINS;
        let path = format!(
            "/flows/{}/grains?timerange={}&count={READ_GRAINS}",
            data.flow,
            from_query(k as u64, 1000)
        );
        let response = conn
            .send(
                "GET",
                &path,
                &[("accept", "application/x-gsf")],
                http::empty(),
            )
            .await;
        assert_eq!(response.status(), 200);
        let bytes = http::drain(response).await;
        assert!(
            bytes as usize > READ_GRAINS * SMALL_BYTES,
            "short read: {bytes} B"
        );
    }
    let gs = meter.stop();
    let mut peer = None;

    if let (Some((server, port)), Some((key, ids))) = (&peers.redis, &data.redis) {
        let mut redis = Redis::connect(*port).await;
        let count = READ_GRAINS.to_string();
        let meter = Meter::start(server.pid);
        for r in 0..reads {
            let id = &ids[r % windows];
            let reply = redis
                .call(&[
                    b"XRANGE",
                    key.as_bytes(),
                    id.as_bytes(),
                    b"+",
                    b"COUNT",
                    count.as_bytes(),
                ])
                .await;
            assert_eq!(reply.items().len(), READ_GRAINS);
        }
        let spent = meter.stop();
        peer = Some(("Redis XRANGE", spent));
    }
    let mut nats_row = None;
    if let (Some((pid, port)), Some((stream, times))) = (peers.nats, &data.nats) {
        let mut nats = Nats::connect(port).await;
        let meter = Meter::start(pid);
        for r in 0..reads {
            let start = times[r % windows];
            let (count, _) =
                js_replay(&mut nats, stream, Some(start), READ_GRAINS, READ_GRAINS).await;
            assert_eq!(count, READ_GRAINS);
        }
        nats_row = Some(meter.stop());
    }

    let gs_cpu = per_m(&gs);
    let vs = match &peer {
        Some((name, spent)) => format!(
            "{:.2}x {name} grains/s, {:.2}x its CPU/grain",
            rate(&gs) / rate(spent),
            gs_cpu / per_m(spent)
        ),
        None => "—".into(),
    };
    report.row(
        &work,
        "grainstore, GSF",
        format!("{:.0} grains/s", rate(&gs)),
        format!("{gs_cpu:.2} CPU-s/M"),
        vs,
        verdict(gs_cpu <= 0.5, "≤ 0.5 CPU-s/M"),
    );
    if let Some((name, spent)) = peer {
        report.row(
            &work,
            &format!("{name} (AOF-always instance)"),
            format!("{:.0} grains/s", rate(&spent)),
            format!("{:.2} CPU-s/M", per_m(&spent)),
            "peer".into(),
            String::new(),
        );
    }
    if let Some(spent) = nats_row {
        report.row(
            &work,
            "NATS JetStream consumer from a start time",
            format!("{:.0} grains/s", rate(&spent)),
            format!("{:.2} CPU-s/M", per_m(&spent)),
            format!("grainstore {:.2}x its grains/s", rate(&gs) / rate(&spent)),
            String::new(),
        );
    }
}

/// Replays `count` messages of `stream` (from `start`, or from its first) through an
/// ephemeral push consumer, then deletes it. With explicit acks and `max_ack_pending =
/// window` the server delivers exactly `count` when `window == count` and nothing is
/// acknowledged (small grains: no ack traffic at all); with a smaller window each message
/// is acknowledged as it arrives (large grains: the server's per-client buffer stays
/// bounded).
async fn js_replay(
    nats: &mut Nats,
    stream: &str,
    start: Option<SystemTime>,
    count: usize,
    window: usize,
) -> (usize, u64) {
    let deliver = nats.reply_subject().replace("_INBOX", "_GSREPLAY");
    let sid = nats.subscribe(&deliver);
    let mut config = serde_json::json!({
        "deliver_subject": deliver,
        "ack_policy": "explicit",
        "ack_wait": 120_000_000_000u64,
        "max_ack_pending": window,
        "replay_policy": "instant",
        "deliver_policy": "all",
    });
    if let Some(start) = start {
        config["deliver_policy"] = "by_start_time".into();
        config["opt_start_time"] = humantime::format_rfc3339_nanos(start).to_string().into();
    }
    let created = nats
        .js_api(
            &format!("$JS.API.CONSUMER.CREATE.{stream}"),
            serde_json::json!({ "stream_name": stream, "config": config }),
        )
        .await;
    let name = created["name"].as_str().expect("consumer name").to_string();
    let (mut got, mut bytes) = (0, 0u64);
    while got < count {
        let msg = nats.next_msg().await;
        if msg.sid == sid {
            got += 1;
            bytes += msg.payload.len() as u64;
            if window < count
                && let Some(reply) = &msg.reply
            {
                nats.publish(reply, None, b"");
                nats.flush().await;
            }
        }
    }
    nats.unsubscribe(sid);
    nats.js_api(
        &format!("$JS.API.CONSUMER.DELETE.{stream}.{name}"),
        serde_json::json!({}),
    )
    .await;
    (got, bytes)
}

pub async fn large(
    plan: &Plan,
    dir: &Path,
    grainstore: &Grainstore,
    peers: &mut Peers,
    data: &LargeData,
    report: &mut Report,
) {
    let n = data.peer_mib;
    let gib = |bytes: u64| bytes as f64 / (1u64 << 30) as f64;
    println!("\nrange reads of {n} x 1 MiB grains, {LARGE_READS} times each");
    let work = format!("range read of {n} x 1 MiB grains (warm)");
    let path = format!(
        "/flows/{}/grains?timerange={}&count={n}",
        data.flow,
        from_query(0, 25)
    );
    // The first read is kept as the file nginx serves: the very same bytes.
    let www = dir.join("www");
    std::fs::create_dir_all(&www).expect("www dir");
    let mut conn = Conn::open(grainstore.port).await;
    let response = conn
        .send(
            "GET",
            &path,
            &[("accept", "application/x-gsf")],
            http::empty(),
        )
        .await;
    assert_eq!(response.status(), 200);
    let mut file =
        std::io::BufWriter::new(std::fs::File::create(www.join("read.gsf")).expect("file"));
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        if let Ok(chunk) = frame.expect("frame").into_data() {
            file.write_all(&chunk).expect("write");
        }
    }
    drop(file);

    // nginx serves the file on a connection of its own, opened and warmed before the
    // reads start.
    let mut nginx = if plan.with("nginx") && installed("nginx") {
        let (server, port) = start_nginx(dir, &www);
        wait_for_port(port, "nginx").await;
        let mut conn = Conn::open(port).await;
        http::drain(conn.send("GET", "/read.gsf", &[], http::empty()).await).await;
        Some((server, conn))
    } else {
        None
    };

    // Rounds of one read from grainstore then one from nginx, so that both meet the same
    // machine: a shared 2-vCPU VM drifts within seconds, and a block of reads of one
    // system after a block of the other measured the drift as much as the systems.
    reset_peak(grainstore.server.pid);
    let sampler = RssSampler::start(grainstore.server.pid);
    let (mut gs, mut peer) = (Total::default(), Total::default());
    let mut ratios = Vec::new();
    for _ in 0..LARGE_READS {
        let meter = Meter::start(grainstore.server.pid);
        let response = conn
            .send(
                "GET",
                &path,
                &[("accept", "application/x-gsf")],
                http::empty(),
            )
            .await;
        assert_eq!(response.status(), 200);
        let bytes = http::drain(response).await;
        let round = gs.add(bytes, meter.stop());
        if let Some((server, conn)) = &mut nginx {
            let meter = Meter::start(server.pid);
            let response = conn.send("GET", "/read.gsf", &[], http::empty()).await;
            assert_eq!(response.status(), 200);
            let bytes = http::drain(response).await;
            ratios.push(round / peer.add(bytes, meter.stop()));
        }
    }
    let gs_peak = sampler.finish();
    let (gs_mbs, gs_cpu) = (gs.mbs(), gs.cpu_per_gib());
    let nginx = nginx.map(|_| (peer.mbs(), peer.cpu_per_gib()));
    ratios.sort_by(f64::total_cmp);

    let (vs, mut target) = match nginx {
        Some((mbs, cpu)) => (
            format!(
                "{:.2}x nginx MB/s (rounds {:.2}–{:.2}, median {:.2}), {:.2}x its CPU/GiB",
                gs_mbs / mbs,
                ratios[0],
                ratios[ratios.len() - 1],
                ratios[ratios.len() / 2],
                gs_cpu / cpu
            ),
            format!(
                "{}; {}; ",
                verdict(gs_mbs / mbs >= 0.8, "≥ 0.8x nginx"),
                verdict(gs_cpu / cpu <= 1.5, "CPU ≤ 1.5x nginx")
            ),
        ),
        None => ("—".into(), String::new()),
    };
    target.push_str(&verdict(
        gs_peak < 100_000_000,
        &format!("peak RSS {} < 100 MB", mib(gs_peak)),
    ));
    report.row(
        &work,
        "grainstore, GSF",
        format!("{gs_mbs:.0} MB/s"),
        format!("{gs_cpu:.2} CPU-s/GiB"),
        vs,
        target,
    );
    if let Some((mbs, cpu)) = nginx {
        report.row(
            &work,
            "nginx sendfile, same bytes, page cache",
            format!("{mbs:.0} MB/s"),
            format!("{cpu:.2} CPU-s/GiB"),
            "peer".into(),
            String::new(),
        );
    }
    if let (Some((server, port)), Some(key)) = (&peers.redis, &data.redis_key) {
        let mut redis = Redis::connect(*port).await;
        let meter = Meter::start(server.pid);
        let mut bytes = 0u64;
        for _ in 0..LARGE_READS {
            let mut from = "-".to_string();
            loop {
                let reply = redis
                    .call(&[
                        b"XRANGE",
                        key.as_bytes(),
                        from.as_bytes(),
                        b"+",
                        b"COUNT",
                        b"16",
                    ])
                    .await;
                let entries = reply.items();
                let Some(last) = entries.last() else { break };
                for entry in entries {
                    bytes += entry.items()[1].items()[1].bytes().len() as u64;
                }
                from = format!("({}", String::from_utf8_lossy(last.items()[0].bytes()));
            }
        }
        let spent = meter.stop();
        let mbs = bytes as f64 / 1e6 / spent.wall.as_secs_f64();
        report.row(
            &work,
            "Redis XRANGE COUNT 16 (AOF-always instance)",
            format!("{mbs:.0} MB/s"),
            format!("{:.2} CPU-s/GiB", spent.cpu / gib(bytes)),
            format!("grainstore {:.2}x its MB/s", gs_mbs / mbs),
            String::new(),
        );
    }
    if let (Some((pid, port)), Some(stream)) = (peers.nats, &data.nats_stream) {
        let mut nats = Nats::connect(port).await;
        let meter = Meter::start(pid);
        let mut bytes = 0;
        for _ in 0..LARGE_READS {
            bytes += js_replay(&mut nats, stream, None, n, 16).await.1;
        }
        let spent = meter.stop();
        let mbs = bytes as f64 / 1e6 / spent.wall.as_secs_f64();
        report.row(
            &work,
            "NATS JetStream consumer replay",
            format!("{mbs:.0} MB/s"),
            format!("{:.2} CPU-s/GiB", spent.cpu / gib(bytes)),
            format!("grainstore {:.2}x its MB/s", gs_mbs / mbs),
            String::new(),
        );
    }

    // The memory bound over the whole uploaded volume, when it is larger.
    if data.mib > n {
        let path = format!("/flows/{}/grains", data.flow);
        // A fresh connection: the peers' reads took longer than the server keeps an
        // idle keep-alive connection open.
        let mut conn = Conn::open(grainstore.port).await;
        reset_peak(grainstore.server.pid);
        let sampler = RssSampler::start(grainstore.server.pid);
        let meter = Meter::start(grainstore.server.pid);
        let response = conn
            .send(
                "GET",
                &path,
                &[("accept", "application/x-gsf")],
                http::empty(),
            )
            .await;
        let bytes = http::drain(response).await;
        let spent = meter.stop();
        let peak = sampler.finish();
        report.row(
            &format!(
                "read of the whole flow, {} MiB, page cache cold or partly warm",
                data.mib
            ),
            "grainstore, GSF",
            format!("{:.0} MB/s", bytes as f64 / 1e6 / spent.wall.as_secs_f64()),
            format!("{:.2} CPU-s/GiB", spent.cpu / gib(bytes)),
            "—".into(),
            verdict(
                peak < 100_000_000,
                &format!("peak RSS {} < 100 MB", mib(peak)),
            ),
        );
    }
}

fn installed(program: &str) -> bool {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .is_ok_and(|o| o.status.success())
}
