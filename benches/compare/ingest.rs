//! Durable ingest: ~200-byte grains in batches of 1,000 (grainstore POSTs of GSF, Redis
//! XADD pipelines, JetStream publishes with acks) and 1 MiB grains (one streaming
//! grainstore POST, `dd bs=1M conv=fdatasync`, Redis and JetStream). Also holds the
//! peers, which the later workloads read back from.

use std::path::Path;
use std::process::Command;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use uuid::Uuid;

use crate::Plan;
use crate::fixtures::{Grainstore, GsfWriter, SMALL_BYTES, at, large_grain, payload, small_grain};
use crate::http::{self, Conn};
use crate::nats::Nats;
use crate::proc::{RssSampler, Server, pid_listening_on, reset_peak, wait_for_port};
use crate::report::{Meter, Report, mib, verdict};
use crate::resp::{self, Redis};

/// Grains per batch in the small-grain workloads.
pub const BATCH: usize = 1000;
/// Grains per time-range read in the small-grain read workload.
pub const READ_GRAINS: usize = 10_000;

/// The peer servers of this run.
pub struct Peers {
    /// A redis-server of our own with `--appendonly yes --appendfsync always`.
    pub redis: Option<(Server, u16)>,
    /// The machine's shared redis (appendonly no): (pid, port).
    pub redis_shared: Option<(u32, u16)>,
    /// The machine's shared nats-server with JetStream: (pid, port).
    pub nats: Option<(u32, u16)>,
    pub dd: bool,
    nats_streams: Vec<String>,
    shared_keys: Vec<String>,
}

impl Peers {
    pub async fn start(plan: &Plan, dir: &Path) -> Peers {
        let installed = |program: &str| {
            Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {program}"))
                .output()
                .is_ok_and(|o| o.status.success())
        };
        let redis = if plan.with("redis") && installed("redis-server") {
            let (server, port) = crate::fixtures::start_redis(dir, "redis-aof-always", true);
            wait_for_port(port, "redis-server").await;
            Some((server, port))
        } else {
            None
        };
        let shared_port = crate::env_or("GS_COMPARE_REDIS_PORT", 6379u16);
        let redis_shared = plan
            .with("redis")
            .then(|| pid_listening_on(shared_port).map(|pid| (pid, shared_port)))
            .flatten();
        let nats_port = crate::env_or("GS_COMPARE_NATS_PORT", 4222u16);
        let nats = plan
            .with("nats")
            .then(|| pid_listening_on(nats_port).map(|pid| (pid, nats_port)))
            .flatten();
        Peers {
            redis,
            redis_shared,
            nats,
            dd: plan.with("dd") && installed("dd"),
            nats_streams: Vec::new(),
            shared_keys: Vec::new(),
        }
    }

    /// Creates a file-backed JetStream stream (expiring in an hour, in case this run
    /// dies before deleting it); returns its name and subject.
    pub async fn nats_stream(&mut self, nats: &mut Nats, what: &str) -> (String, String) {
        let id = Uuid::new_v4().simple().to_string();
        let name = format!("GSBENCH_{what}_{}", &id[..8]);
        let subject = format!("gsbench.{}.{what}", &id[..8]);
        nats.js_api(
            &format!("$JS.API.STREAM.CREATE.{name}"),
            serde_json::json!({
                "name": name,
                "subjects": [subject],
                "storage": "file",
                "num_replicas": 1,
                "max_age": 3_600_000_000_000u64,
            }),
        )
        .await;
        self.nats_streams.push(name.clone());
        (name, subject)
    }

    /// Deletes what this run left in the shared servers.
    pub async fn cleanup(&mut self) {
        if let Some((_, port)) = self.nats {
            let mut nats = Nats::connect(port).await;
            for name in self.nats_streams.drain(..) {
                nats.js_api(
                    &format!("$JS.API.STREAM.DELETE.{name}"),
                    serde_json::json!({}),
                )
                .await;
            }
        }
        if let Some((_, port)) = self.redis_shared {
            let mut redis = Redis::connect(port).await;
            for key in self.shared_keys.drain(..) {
                redis.call(&[b"DEL", key.as_bytes()]).await;
            }
        }
    }
}

/// The small grains every system holds after [`small`], for the read workload.
pub struct SmallData {
    pub flow: Uuid,
    pub count: usize,
    /// Redis (appendfsync always) key and the id of every READ_GRAINS-th entry.
    pub redis: Option<(String, Vec<String>)>,
    /// JetStream stream and the time just before every READ_GRAINS-th message was sent.
    pub nats: Option<(String, Vec<SystemTime>)>,
}

fn per_million(cpu: f64, count: usize) -> f64 {
    cpu / (count as f64 / 1e6)
}

/// Ingest of `plan.small` ~200-byte grains in batches of 1,000 into each system.
pub async fn small(
    plan: &Plan,
    grainstore: &Grainstore,
    peers: &mut Peers,
    report: &mut Report,
) -> SmallData {
    let n = plan.small.div_ceil(BATCH) * BATCH;
    println!("\ningest of {n} x {SMALL_BYTES} B grains in batches of {BATCH}");
    let work = format!("ingest {SMALL_BYTES} B grains, batches of {BATCH}, durable");
    let data = payload(SMALL_BYTES, 1);

    // grainstore: one POST of a GSF body per batch.
    let (flow, source) = grainstore.create_flow("audio").await;
    let bodies: Vec<Bytes> = (0..n / BATCH)
        .map(|b| {
            let grains: Vec<_> = (0..BATCH)
                .map(|i| small_grain(flow, source, (b * BATCH + i) as u64, 1000, data.clone()))
                .collect();
            GsfWriter::body(flow, &grains)
        })
        .collect();
    let mut conn = Conn::open(grainstore.port).await;
    let path = format!("/flows/{flow}/grains");
    let meter = Meter::start(grainstore.server.pid);
    for body in bodies {
        let (status, text) = conn
            .fetch(
                "POST",
                &path,
                &[("content-type", "application/x-gsf")],
                http::full(body),
            )
            .await;
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&text));
    }
    let gs = meter.stop();
    let gs_rate = n as f64 / gs.wall.as_secs_f64();
    let gs_cpu = per_million(gs.cpu, n);

    // Redis, ours, appendfsync always: pipelines of 1,000 XADD.
    let mut redis_data = None;
    let mut redis_line = None;
    if let Some((server, port)) = &peers.redis {
        let key = format!("gsbench:small:{}", Uuid::new_v4().simple());
        let (spent, ids) = redis_xadd(*port, server.pid, &key, n, &data).await;
        redis_line = Some((
            n as f64 / spent.wall.as_secs_f64(),
            per_million(spent.cpu, n),
        ));
        redis_data = Some((key, ids));
    }
    let (vs, target) = match redis_line {
        Some((rate, cpu)) => (
            format!(
                "{:.2}x Redis AOF-always grains/s, {:.2}x its CPU/grain",
                gs_rate / rate,
                gs_cpu / cpu
            ),
            format!(
                "{}; {}",
                verdict(gs_cpu <= 1.6, "≤ 1.6 CPU-s/M"),
                verdict(gs_rate / rate >= 1.0, "≥ 1.0x Redis AOF-always")
            ),
        ),
        None => ("—".into(), verdict(gs_cpu <= 1.6, "≤ 1.6 CPU-s/M")),
    };
    report.row(
        &work,
        "grainstore (fdatasync per commit)",
        format!("{gs_rate:.0} grains/s"),
        format!("{gs_cpu:.2} CPU-s/M"),
        vs,
        target,
    );
    if let Some((rate, cpu)) = redis_line {
        report.row(
            &work,
            "Redis XADD, ours, appendfsync always",
            format!("{rate:.0} grains/s"),
            format!("{cpu:.2} CPU-s/M"),
            "peer".into(),
            String::new(),
        );
    }
    if let Some((pid, port)) = peers.redis_shared {
        let key = format!("gsbench:small:{}", Uuid::new_v4().simple());
        peers.shared_keys.push(key.clone());
        let (spent, _) = redis_xadd(port, pid, &key, n, &data).await;
        let rate = n as f64 / spent.wall.as_secs_f64();
        let cpu = per_million(spent.cpu, n);
        report.row(
            &work.replace(", durable", ""),
            "Redis XADD, shared :6379, appendonly no (not durable)",
            format!("{rate:.0} grains/s"),
            format!("{cpu:.2} CPU-s/M"),
            format!("grainstore {:.2}x its grains/s", gs_rate / rate),
            String::new(),
        );
    }

    // JetStream: publishes with acks, 1,000 in flight.
    let mut nats_data = None;
    if let Some((pid, port)) = peers.nats {
        let mut nats = Nats::connect(port).await;
        let (stream, subject) = peers.nats_stream(&mut nats, "small").await;
        let mut times = Vec::new();
        let meter = Meter::start(pid);
        for b in 0..n / BATCH {
            if (b * BATCH).is_multiple_of(READ_GRAINS) {
                times.push(SystemTime::now());
            }
            js_publish_batch(&mut nats, &subject, BATCH, &data).await;
        }
        let spent = meter.stop();
        let rate = n as f64 / spent.wall.as_secs_f64();
        let cpu = per_million(spent.cpu, n);
        report.row(
            &work.replace(", durable", ""),
            "NATS JetStream publish+ack, file store (fsync not per ack)",
            format!("{rate:.0} grains/s"),
            format!("{cpu:.2} CPU-s/M"),
            format!("grainstore {:.2}x its grains/s", gs_rate / rate),
            String::new(),
        );
        nats_data = Some((stream, times));
    }
    SmallData {
        flow,
        count: n,
        redis: redis_data,
        nats: nats_data,
    }
}

/// `n` XADDs of `data` in pipelines of 1,000; the server's spend and the id of every
/// READ_GRAINS-th entry.
async fn redis_xadd(
    port: u16,
    pid: u32,
    key: &str,
    n: usize,
    data: &[u8],
) -> (crate::report::Spent, Vec<String>) {
    let batches: Vec<Vec<u8>> = (0..n / BATCH)
        .map(|b| {
            let mut out = Vec::new();
            for i in 0..BATCH {
                let ts = at((b * BATCH + i) as u64, 1000).to_string();
                resp::encode(
                    &mut out,
                    &[
                        b"XADD",
                        key.as_bytes(),
                        b"*",
                        b"ts",
                        ts.as_bytes(),
                        b"d",
                        data,
                    ],
                );
            }
            out
        })
        .collect();
    let mut redis = Redis::connect(port).await;
    let mut ids = Vec::new();
    let meter = Meter::start(pid);
    for (b, batch) in batches.iter().enumerate() {
        redis.queue_raw(batch);
        redis.flush().await;
        for i in 0..BATCH {
            let id = redis.read().await;
            if (b * BATCH + i).is_multiple_of(READ_GRAINS) {
                ids.push(String::from_utf8_lossy(id.bytes()).into_owned());
            }
        }
    }
    let spent = meter.stop();
    redis.call(&[b"EXPIRE", key.as_bytes(), b"3600"]).await;
    (spent, ids)
}

/// Publishes `count` messages to a JetStream subject and waits for every ack.
async fn js_publish_batch(nats: &mut Nats, subject: &str, count: usize, data: &[u8]) {
    for _ in 0..count {
        let reply = nats.reply_subject();
        nats.publish(subject, Some(&reply), data);
    }
    nats.flush().await;
    for _ in 0..count {
        let ack = nats.next_msg().await;
        if ack.payload.windows(7).any(|w| w == b"\"error\"") {
            panic!(
                "jetstream publish: {}",
                String::from_utf8_lossy(&ack.payload)
            );
        }
    }
}

/// The 1 MiB grains every system holds after [`large`].
pub struct LargeData {
    pub flow: Uuid,
    pub mib: usize,
    pub redis_key: Option<String>,
    pub nats_stream: Option<String>,
    pub peer_mib: usize,
}

/// Ingest of 1 MiB grains: grainstore (one streaming POST of `plan.large_mib` grains)
/// beside `dd` of the same volume, then Redis and JetStream with `plan.peer_large_mib`.
pub async fn large(
    plan: &Plan,
    dir: &Path,
    grainstore: &Grainstore,
    peers: &mut Peers,
    report: &mut Report,
) -> LargeData {
    let n = plan.large_mib;
    println!(
        "\ningest of {n} x 1 MiB grains (peers: {} MiB)",
        plan.peer_large_mib
    );
    let work = "ingest 1 MiB grains, durable";
    let gib = n as f64 / 1024.0;
    let dd = peers.dd.then(|| dd(dir, n));
    if let Some((mbs, cpu)) = dd {
        report.row(
            work,
            "dd bs=1M conv=fdatasync (same filesystem)",
            format!("{mbs:.0} MB/s"),
            format!("{:.2} CPU-s/GiB (dd's own)", cpu / gib),
            "peer".into(),
            String::new(),
        );
    }

    let (flow, source) = grainstore.create_flow("video").await;
    let data = payload(1 << 20, 2);
    let mut writer = GsfWriter::new(flow);
    let head = writer.start();
    let end = writer.finish();
    let grains = futures::stream::iter(0..n as u64).flat_map(move |i| {
        let grain = large_grain(flow, source, i, data.clone());
        futures::stream::iter(writer.grain(&grain))
    });
    let body = futures::stream::once(async move { head })
        .chain(grains)
        .chain(futures::stream::once(async move { end }));
    let mut conn = Conn::open(grainstore.port).await;
    reset_peak(grainstore.server.pid);
    let sampler = RssSampler::start(grainstore.server.pid);
    let meter = Meter::start(grainstore.server.pid);
    let (status, text) = conn
        .fetch(
            "POST",
            &format!("/flows/{flow}/grains"),
            &[("content-type", "application/x-gsf")],
            http::streamed(body),
        )
        .await;
    let spent = meter.stop();
    let peak = sampler.finish();
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&text));
    let mbs = n as f64 * 1.048576 / spent.wall.as_secs_f64();
    let cpu = spent.cpu / gib;
    let (vs, mut target) = match dd {
        Some((dd_mbs, dd_cpu)) => (
            format!(
                "{:.2}x dd MB/s, {:.2}x dd's CPU/GiB",
                mbs / dd_mbs,
                cpu / (dd_cpu / gib)
            ),
            format!("{}; ", verdict(mbs / dd_mbs >= 0.7, "≥ 0.7x dd")),
        ),
        None => ("—".into(), String::new()),
    };
    target.push_str(&verdict(cpu <= 0.5, "≤ 0.5 CPU-s/GiB"));
    target.push_str(&format!(
        "; {}",
        verdict(
            peak < 100_000_000,
            &format!("peak RSS {} < 100 MB", mib(peak))
        )
    ));
    report.row(
        work,
        &format!("grainstore, one streaming POST of {n} MiB"),
        format!("{mbs:.0} MB/s"),
        format!("{cpu:.2} CPU-s/GiB"),
        vs,
        target,
    );

    let peer_n = plan.peer_large_mib;
    let peer_gib = peer_n as f64 / 1024.0;
    let big = payload(1 << 20, 3);
    let mut redis_key = None;
    if let Some((server, port)) = &peers.redis {
        let key = format!("gsbench:large:{}", Uuid::new_v4().simple());
        let mut redis = Redis::connect(*port).await;
        let meter = Meter::start(server.pid);
        let window = 8;
        for b in 0..peer_n.div_ceil(window) {
            let count = window.min(peer_n - b * window);
            for _ in 0..count {
                redis.queue(&[b"XADD", key.as_bytes(), b"*", b"d", &big]);
            }
            redis.flush().await;
            for _ in 0..count {
                redis.read().await;
            }
        }
        let spent = meter.stop();
        let rate = peer_n as f64 * 1.048576 / spent.wall.as_secs_f64();
        report.row(
            work,
            &format!("Redis XADD, ours, appendfsync always, {peer_n} MiB, 8 in flight"),
            format!("{rate:.0} MB/s"),
            format!("{:.2} CPU-s/GiB", spent.cpu / peer_gib),
            format!("grainstore {:.2}x its MB/s", mbs / rate),
            String::new(),
        );
        redis_key = Some(key);
    }
    let mut nats_stream = None;
    if let Some((pid, port)) = peers.nats {
        let mut nats = Nats::connect(port).await;
        let (stream, subject) = peers.nats_stream(&mut nats, "large").await;
        let meter = Meter::start(pid);
        let window = 8;
        for b in 0..peer_n.div_ceil(window) {
            js_publish_batch(&mut nats, &subject, window.min(peer_n - b * window), &big).await;
        }
        let spent = meter.stop();
        let rate = peer_n as f64 * 1.048576 / spent.wall.as_secs_f64();
        report.row(
            work.trim_end_matches(", durable"),
            &format!("NATS JetStream publish+ack, {peer_n} MiB, 8 in flight (fsync not per ack)"),
            format!("{rate:.0} MB/s"),
            format!("{:.2} CPU-s/GiB", spent.cpu / peer_gib),
            format!("grainstore {:.2}x its MB/s", mbs / rate),
            String::new(),
        );
        nats_stream = Some(stream);
    }
    LargeData {
        flow,
        mib: n,
        redis_key,
        nats_stream,
        peer_mib: peer_n,
    }
}

/// `dd if=/dev/zero bs=1M count=N conv=fdatasync` into `dir`: MB/s and dd's CPU seconds.
fn dd(dir: &Path, mib: usize) -> (f64, f64) {
    let target = dir.join("dd.bin");
    let start = Instant::now();
    let output = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "TIMEFORMAT='%U %S'; {{ time dd if=/dev/zero of={} bs=1M count={mib} conv=fdatasync status=none ; }} 2>&1",
            target.display()
        ))
        .output()
        .expect("dd runs");
    let elapsed = start.elapsed();
    let _ = std::fs::remove_file(&target);
    let text = String::from_utf8_lossy(&output.stdout);
    let cpu: f64 = text
        .split_whitespace()
        .filter_map(|t| t.parse::<f64>().ok())
        .sum();
    (mib as f64 * 1.048576 / elapsed.as_secs_f64(), cpu)
}

/// The timerange query value `[T_` (URL-encoded) from grain `index` at `rate`.
pub fn from_query(index: u64, rate: u64) -> String {
    format!("%5B{}_", at(index, rate))
}
