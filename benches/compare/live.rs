//! Live delivery: commit-to-event latency and delivered events/s with 1, 100 and 1,000
//! subscribers while one writer commits 100 grains/s (grainstore SSE; NATS core pub/sub;
//! Redis XREAD BLOCK on the AOF-always instance), the servers' resident memory under
//! that load, and resident memory per idle subscriber.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;

use crate::Plan;
use crate::fixtures::{Grainstore, GsfWriter, SMALL_BYTES, index_of, payload, small_grain};
use crate::http::{self, Conn};
use crate::ingest::Peers;
use crate::nats::Nats;
use crate::proc::{ProcStat, RssSampler, reset_peak};
use crate::report::{Meter, Report, Spent, mib, percentiles, verdict};
use crate::resp::Redis;

/// Grains committed per second by the writer.
const RATE: u64 = 100;
/// Subscriber connections opened at once.
const OPEN_AT_ONCE: usize = 200;

/// What one live run measured.
struct Live {
    grains: usize,
    subscribers: usize,
    delivered: usize,
    /// From the writer sending the grain to its delivery, ns.
    write_to_event: Vec<i64>,
    /// From the writer's acknowledgement (the commit is before it) to delivery, ns;
    /// negative when the event beat the acknowledgement.
    ack_to_event: Option<Vec<i64>>,
    spent: Spent,
    peak_rss: u64,
}

/// Per grain: when the writer sent it and when the server acknowledged it.
struct Sent {
    sent: Vec<Instant>,
    acked: Vec<Instant>,
}

/// The receipts of one subscriber: (grain index, arrival).
type Receipts = Vec<(u64, Instant)>;

pub async fn run(plan: &Plan, grainstore: &Grainstore, peers: &mut Peers, report: &mut Report) {
    let grains = (plan.secs * RATE) as usize;
    for &subs in &plan.subs {
        println!(
            "\nlive: {subs} subscribers, {RATE} grains/s for {} s",
            plan.secs
        );
        let gs = grainstore_live(grainstore, subs, grains).await;
        let nats = match peers.nats {
            Some((pid, port)) => Some(nats_live(pid, port, subs, grains).await),
            None => None,
        };
        let redis = match &peers.redis {
            Some((server, port)) => Some(redis_live(server.pid, *port, subs, grains).await),
            None => None,
        };
        let work = format!("live, {subs} subscriber(s), {RATE} grains/s");
        let (gs_line, gs_p99) = describe(gs);
        let target = if subs >= 1000 {
            verdict(gs_p99 < 5.0, "p99 ack→event < 5 ms at 1,000")
        } else {
            String::new()
        };
        let mut nats_line = None;
        let vs = match nats {
            Some(nats) => {
                let (line, p99) = describe(nats);
                nats_line = Some(line);
                format!("p99 {:.1}x NATS core's write→event p99", gs_p99 / p99)
            }
            None => "—".into(),
        };
        report.row(
            &work,
            "grainstore SSE (durable commit, then event)",
            gs_line.0,
            gs_line.1,
            vs,
            target,
        );
        if let Some(line) = nats_line {
            report.row(
                &work,
                "NATS core pub/sub (no storage)",
                line.0,
                line.1,
                "peer".into(),
                String::new(),
            );
        }
        if let Some(redis) = redis {
            let (line, _) = describe(redis);
            report.row(
                &work,
                "Redis XREAD BLOCK (XADD, appendfsync always)",
                line.0,
                line.1,
                "—".into(),
                String::new(),
            );
        }
    }
}

/// The table cells of a run and the p99 used for comparison (ack→event where there is
/// an acknowledgement, else write→event), ms.
fn describe(mut live: Live) -> ((String, String), f64) {
    // The writer's period: the settle after it delivers nothing new.
    let period = live.grains as f64 / RATE as f64;
    let (w50, w99, wmax) = percentiles(&mut live.write_to_event);
    let mut rate = format!(
        "{:.0} events/s ({} of {}); write→event p50/p99/max {w50:.2}/{w99:.2}/{wmax:.1} ms",
        live.delivered as f64 / period,
        live.delivered,
        live.grains * live.subscribers
    );
    let mut p99 = w99;
    if let Some(mut ack) = live.ack_to_event.take() {
        let (a50, a99, amax) = percentiles(&mut ack);
        rate.push_str(&format!("; ack→event {a50:.2}/{a99:.2}/{amax:.1} ms"));
        p99 = a99;
    }
    let cpu = format!(
        "{:.2} CPU-s/M events; RSS peak {}",
        live.spent.cpu / (live.delivered.max(1) as f64 / 1e6),
        mib(live.peak_rss)
    );
    ((rate, cpu), p99)
}

fn latencies(receipts: &[Receipts], sent: &Sent) -> (usize, Vec<i64>, Vec<i64>) {
    let (mut write, mut ack) = (Vec::new(), Vec::new());
    let mut delivered = 0;
    for r in receipts {
        for &(index, at) in r {
            let Some(s) = sent.sent.get(index as usize) else {
                continue;
            };
            delivered += 1;
            let signed = |from: Instant| {
                if at >= from {
                    (at - from).as_nanos() as i64
                } else {
                    -((from - at).as_nanos() as i64)
                }
            };
            write.push(signed(*s));
            if let Some(a) = sent.acked.get(index as usize) {
                ack.push(signed(*a));
            }
        }
    }
    (delivered, write, ack)
}

async fn wait_ready(ready: &AtomicUsize, want: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while ready.load(Ordering::SeqCst) < want {
        assert!(
            Instant::now() < deadline,
            "{what}: only {} of {want} subscribers ready",
            ready.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A grainstore SSE subscriber: counts as ready once the response headers arrive (the
/// subscription exists by then), records the arrival of each `id:` line.
async fn sse_subscriber(
    port: u16,
    path: String,
    ready: Arc<AtomicUsize>,
    cancel: CancellationToken,
    gate: Arc<tokio::sync::Semaphore>,
) -> Receipts {
    let permit = gate.acquire_owned().await.expect("gate");
    let mut conn = Conn::open(port).await;
    let response = conn
        .send(
            "GET",
            &path,
            &[("accept", "text/event-stream")],
            http::empty(),
        )
        .await;
    assert_eq!(response.status(), 200);
    drop(permit);
    ready.fetch_add(1, Ordering::SeqCst);
    let mut body = response.into_body();
    let mut receipts = Vec::new();
    let mut partial: Vec<u8> = Vec::new();
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            () = cancel.cancelled() => break,
        };
        let Some(Ok(frame)) = frame else { break };
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        let now = Instant::now();
        partial.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(nl) = partial[start..].iter().position(|&b| b == b'\n') {
            let line = &partial[start..start + nl];
            if let Some(id) = line.strip_prefix(b"id:")
                && let Some(index) = std::str::from_utf8(id).ok().and_then(|t| index_of(t, RATE))
            {
                receipts.push((index, now));
            }
            start += nl + 1;
        }
        partial.drain(..start);
    }
    receipts
}

async fn grainstore_live(grainstore: &Grainstore, subs: usize, grains: usize) -> Live {
    let (flow, source) = grainstore.create_flow("audio").await;
    let data = payload(SMALL_BYTES, 5);
    let bodies: Vec<Bytes> = (0..grains as u64)
        .map(|i| GsfWriter::body(flow, &[small_grain(flow, source, i, RATE, data.clone())]))
        .collect();
    let ready = Arc::new(AtomicUsize::new(0));
    let cancel = CancellationToken::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(OPEN_AT_ONCE));
    let path = format!("/flows/{flow}/grains");
    let tasks: Vec<_> = (0..subs)
        .map(|_| {
            tokio::spawn(sse_subscriber(
                grainstore.port,
                path.clone(),
                ready.clone(),
                cancel.clone(),
                gate.clone(),
            ))
        })
        .collect();
    wait_ready(&ready, subs, "grainstore").await;
    let mut writer = Conn::open(grainstore.port).await;
    let pid = grainstore.server.pid;
    let mut pacer = Pacer::start(pid, grains);
    for body in bodies {
        pacer.next().await;
        let (status, text) = writer
            .fetch(
                "POST",
                &path,
                &[("content-type", "application/x-gsf")],
                http::full(body),
            )
            .await;
        pacer.acked();
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&text));
    }
    let (sent, spent, peak_rss) = pacer.finish().await;
    cancel.cancel();
    let mut receipts = Vec::new();
    for t in tasks {
        receipts.push(t.await.expect("subscriber"));
    }
    let (delivered, write_to_event, ack) = latencies(&receipts, &sent);
    Live {
        grains,
        subscribers: subs,
        delivered,
        write_to_event,
        ack_to_event: Some(ack),
        spent,
        peak_rss,
    }
}

/// Paces a writer at RATE grains per second and measures the server `pid` over the run
/// and a short settle after it.
struct Pacer {
    sent: Sent,
    tick: tokio::time::Interval,
    meter: Meter,
    sampler: RssSampler,
}

impl Pacer {
    fn start(pid: u32, grains: usize) -> Pacer {
        reset_peak(pid);
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Pacer {
            sent: Sent {
                sent: Vec::with_capacity(grains),
                acked: Vec::with_capacity(grains),
            },
            tick,
            sampler: RssSampler::start(pid),
            meter: Meter::start(pid),
        }
    }

    /// Waits for the next slot; the grain counts as sent now.
    async fn next(&mut self) {
        self.tick.tick().await;
        self.sent.sent.push(Instant::now());
    }

    /// The server acknowledged the grain sent last.
    fn acked(&mut self) {
        self.sent.acked.push(Instant::now());
    }

    /// Lets the last events arrive, then stops measuring.
    async fn finish(self) -> (Sent, Spent, u64) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let spent = self.meter.stop();
        (self.sent, spent, self.sampler.finish())
    }
}

async fn nats_live(pid: u32, port: u16, subs: usize, grains: usize) -> Live {
    let subject = format!("gsbench.live.{}", uuid::Uuid::new_v4().simple());
    let ready = Arc::new(AtomicUsize::new(0));
    let cancel = CancellationToken::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(OPEN_AT_ONCE));
    let tasks: Vec<_> = (0..subs)
        .map(|_| {
            let (subject, ready, cancel, gate) =
                (subject.clone(), ready.clone(), cancel.clone(), gate.clone());
            tokio::spawn(async move {
                let permit = gate.acquire_owned().await.expect("gate");
                let mut nats = Nats::connect(port).await;
                nats.subscribe(&subject);
                nats.ping().await;
                drop(permit);
                ready.fetch_add(1, Ordering::SeqCst);
                let mut receipts = Vec::new();
                loop {
                    let msg = tokio::select! {
                        msg = nats.next_msg() => msg,
                        () = cancel.cancelled() => break,
                    };
                    let now = Instant::now();
                    let index = u64::from_le_bytes(msg.payload[..8].try_into().expect("index"));
                    receipts.push((index, now));
                }
                receipts
            })
        })
        .collect();
    wait_ready(&ready, subs, "nats").await;
    let mut publisher = Nats::connect(port).await;
    let data = payload(SMALL_BYTES, 6);
    let messages: Vec<Vec<u8>> = (0..grains as u64)
        .map(|i| {
            let mut m = data.to_vec();
            m[..8].copy_from_slice(&i.to_le_bytes());
            m
        })
        .collect();
    let mut pacer = Pacer::start(pid, grains);
    for m in messages {
        pacer.next().await;
        publisher.publish(&subject, None, &m);
        publisher.flush().await;
        pacer.acked();
    }
    let (sent, spent, peak_rss) = pacer.finish().await;
    cancel.cancel();
    let mut receipts = Vec::new();
    for t in tasks {
        receipts.push(t.await.expect("subscriber"));
    }
    let (delivered, write_to_event, _) = latencies(&receipts, &sent);
    Live {
        grains,
        subscribers: subs,
        delivered,
        write_to_event,
        ack_to_event: None,
        spent,
        peak_rss,
    }
}

/// The number of clients blocked in XREAD, from INFO clients.
async fn blocked_clients(redis: &mut Redis) -> usize {
    let info = redis.call(&[b"INFO", b"clients"]).await;
    String::from_utf8_lossy(info.bytes())
        .lines()
        .find_map(|l| l.strip_prefix("blocked_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

async fn redis_live(pid: u32, port: u16, subs: usize, grains: usize) -> Live {
    let key = format!("gsbench:live:{}", uuid::Uuid::new_v4().simple());
    let cancel = CancellationToken::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(OPEN_AT_ONCE));
    let tasks: Vec<_> = (0..subs)
        .map(|_| {
            let (key, cancel, gate) = (key.clone(), cancel.clone(), gate.clone());
            tokio::spawn(async move {
                let permit = gate.acquire_owned().await.expect("gate");
                let mut redis = Redis::connect(port).await;
                drop(permit);
                let mut last = "$".to_string();
                let mut receipts = Vec::new();
                loop {
                    redis.queue(&[
                        b"XREAD",
                        b"BLOCK",
                        b"0",
                        b"COUNT",
                        b"1000",
                        b"STREAMS",
                        key.as_bytes(),
                        last.as_bytes(),
                    ]);
                    redis.flush().await;
                    let reply = tokio::select! {
                        reply = redis.read() => reply,
                        () = cancel.cancelled() => break,
                    };
                    let now = Instant::now();
                    for stream in reply.items() {
                        for entry in stream.items()[1].items() {
                            let fields = entry.items()[1].items();
                            let index = std::str::from_utf8(fields[1].bytes())
                                .ok()
                                .and_then(|v| v.parse().ok())
                                .expect("index field");
                            receipts.push((index, now));
                            last = String::from_utf8_lossy(entry.items()[0].bytes()).into_owned();
                        }
                    }
                }
                receipts
            })
        })
        .collect();
    let mut writer = Redis::connect(port).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while blocked_clients(&mut writer).await < subs {
        assert!(Instant::now() < deadline, "redis subscribers did not block");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let data = payload(SMALL_BYTES, 7);
    let indices: Vec<String> = (0..grains).map(|i| i.to_string()).collect();
    let mut pacer = Pacer::start(pid, grains);
    for i in indices {
        pacer.next().await;
        writer.queue(&[
            b"XADD",
            key.as_bytes(),
            b"*",
            b"i",
            i.as_bytes(),
            b"d",
            &data,
        ]);
        writer.flush().await;
        writer.read().await;
        pacer.acked();
    }
    let (sent, spent, peak_rss) = pacer.finish().await;
    cancel.cancel();
    let mut receipts = Vec::new();
    for t in tasks {
        receipts.push(t.await.expect("subscriber"));
    }
    writer.call(&[b"DEL", key.as_bytes()]).await;
    let (delivered, write_to_event, ack) = latencies(&receipts, &sent);
    Live {
        grains,
        subscribers: subs,
        delivered,
        write_to_event,
        ack_to_event: Some(ack),
        spent,
        peak_rss,
    }
}

/// Resident memory per idle subscriber: each server's VmRSS before and after `n`
/// subscribers connect and settle.
pub async fn idle(
    plan: &Plan,
    grainstore: &Grainstore,
    peers: &mut Peers,
    fd_limit: u64,
    report: &mut Report,
) {
    // Room for this process's other descriptors.
    let n = plan.idle.min(fd_limit.saturating_sub(256) as usize);
    if n < plan.idle {
        report.note(format!(
            "idle subscribers: the open-file limit ({fd_limit}) allows {n}, not {}",
            plan.idle
        ));
    }
    println!("\nidle subscribers: {n}");
    let work = format!("resident memory per idle subscriber, {n} subscribers");
    let settle = Duration::from_secs(1);

    // grainstore
    let (flow, _) = grainstore.create_flow("audio").await;
    let path = format!("/flows/{flow}/grains");
    let ready = Arc::new(AtomicUsize::new(0));
    let cancel = CancellationToken::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(OPEN_AT_ONCE));
    let spawn = |count: usize| -> Vec<_> {
        (0..count)
            .map(|_| {
                tokio::spawn(sse_subscriber(
                    grainstore.port,
                    path.clone(),
                    ready.clone(),
                    cancel.clone(),
                    gate.clone(),
                ))
            })
            .collect()
    };
    // A few first, so what is measured is the cost of one more, not of the first.
    let mut tasks = spawn(10);
    wait_ready(&ready, 10, "grainstore").await;
    tokio::time::sleep(settle).await;
    let before = grainstore.server.stat();
    tasks.extend(spawn(n));
    wait_ready(&ready, n + 10, "grainstore").await;
    tokio::time::sleep(settle).await;
    let after = grainstore.server.stat();
    cancel.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let gs = per_subscriber(before, after, n);
    report.row(
        &work,
        "grainstore SSE",
        format!("{n} subscribed"),
        format!(
            "{:.1} KiB each (VmRSS {} → {})",
            gs / 1024.0,
            mib(before.rss),
            mib(after.rss)
        ),
        "—".into(),
        verdict(gs <= 32.0 * 1024.0, "≤ 32 KiB each"),
    );

    if let Some((pid, port)) = peers.nats {
        let subject = format!("gsbench.idle.{}", uuid::Uuid::new_v4().simple());
        let before = ProcStat::of(pid);
        let mut conns = Vec::with_capacity(n);
        for chunk in (0..n).collect::<Vec<_>>().chunks(OPEN_AT_ONCE) {
            let opened = futures::future::join_all(chunk.iter().map(|_| async {
                let mut nats = Nats::connect(port).await;
                nats.subscribe(&subject);
                nats.ping().await;
                nats
            }))
            .await;
            conns.extend(opened);
        }
        tokio::time::sleep(settle).await;
        let after = ProcStat::of(pid);
        drop(conns);
        let per = per_subscriber(before, after, n);
        report.row(
            &work,
            "NATS core subscriber connections",
            format!("{n} subscribed"),
            format!(
                "{:.1} KiB each (VmRSS {} → {})",
                per / 1024.0,
                mib(before.rss),
                mib(after.rss)
            ),
            format!("grainstore {:.2}x", gs / per),
            String::new(),
        );
    }
    if let Some((server, port)) = &peers.redis {
        let key = format!("gsbench:idle:{}", uuid::Uuid::new_v4().simple());
        let before = server.stat();
        let mut conns = Vec::with_capacity(n);
        for chunk in (0..n).collect::<Vec<_>>().chunks(OPEN_AT_ONCE) {
            let opened = futures::future::join_all(chunk.iter().map(|_| async {
                let mut redis = Redis::connect(*port).await;
                redis.queue(&[b"XREAD", b"BLOCK", b"0", b"STREAMS", key.as_bytes(), b"$"]);
                redis.flush().await;
                redis
            }))
            .await;
            conns.extend(opened);
        }
        let mut probe = Redis::connect(*port).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while blocked_clients(&mut probe).await < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(settle).await;
        let after = server.stat();
        drop(conns);
        let per = per_subscriber(before, after, n);
        report.row(
            &work,
            "Redis clients blocked in XREAD",
            format!("{n} blocked"),
            format!(
                "{:.1} KiB each (VmRSS {} → {})",
                per / 1024.0,
                mib(before.rss),
                mib(after.rss)
            ),
            format!("grainstore {:.2}x", gs / per),
            String::new(),
        );
    }
}

fn per_subscriber(before: ProcStat, after: ProcStat, n: usize) -> f64 {
    (after.rss as f64 - before.rss as f64) / n as f64
}
