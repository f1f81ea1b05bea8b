//! Scale-out against embedded, in one run: the same client load on (a) the embedded
//! backend, (b) the postgres backend with one replica and (c) two replicas sharing the
//! database and the S3-compatible server — ingest of 1 MiB and ~200 B grains, range
//! reads of 1 MiB grains from concurrent clients, and live ack→event latency.
//!
//! The server CPU of the scale-out rows is that of every process serving the work: the
//! replicas, the PostgreSQL backends of their connections (found by their client
//! ports) and the S3 server (the process listening at the endpoint's port).
//! PostgreSQL's background processes (WAL writer, checkpointer) are shared with
//! anything else using the instance and are reported apart.
//!
//! Needs `GRAINSTORE_TEST_POSTGRES_URL` and `GRAINSTORE_TEST_S3_ENDPOINT`, `_BUCKET`,
//! `_ACCESS_KEY`, `_SECRET_KEY` (as the tests); skips with a line saying so otherwise.
//! Any S3-compatible server will do, and how it sends an object shapes the replica's
//! read cost: s3s-fs (the tests' server) sends a GET's body in 4 KiB chunks, each a
//! wake-up of the replica; s3rver (npm) reads files 64 KiB at a time.
//! Sizes: `GS_COMPARE_SCALEOUT_MIB` (MiB of 1 MiB grains ingested per system, read back
//! twice), `GS_COMPARE_SMALL` (small grains per system), `GS_COMPARE_SECS` (seconds per
//! live run), `GS_COMPARE_SCALEOUT_SUBS` (subscriber counts, `1,100`),
//! `GS_COMPARE_SCALEOUT_READERS` (concurrent readers, 4).
//!
//! `GS_COMPARE_OBJECT_CACHE_MIB` (0 unless set) is each replica's
//! `storage.object_cache_bytes`, in MiB: with one large enough for the data, the reads
//! after the first (the warm-up) come from the replica's disk, not the S3 server.
//! The cache keeps only what the replica reads (the warm-up fills it);
//! `GS_COMPARE_OBJECT_CACHE_UPLOADS=true` sets `storage.object_cache_uploads`, so that it
//! keeps each replica's uploads too.
//!
//! `GS_COMPARE_REPLICA_CPUS` (say `0.25`, root only) gives each grainstore server of the
//! workload, the embedded one included, a CPU quota of its own (a cgroup), as if each
//! ran on a machine of that size. On a small machine shared with the client,
//! PostgreSQL and the S3 server, that is how two replicas against one can show what a
//! second replica adds: without it both replicas compete for the same CPUs as
//! everything else, and the machine, not the replica, is what runs out.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::Plan;
use crate::fixtures::{
    Grainstore, GsfWriter, SMALL_BYTES, index_of, large_grain, payload, small_grain,
};
use crate::http::{self, Conn};
use crate::ingest::{BATCH, from_query};
use crate::proc::{CpuLimit, ProcStat, Server, free_port, pid_listening_on, wait_for_port};
use crate::report::{Report, percentiles, verdict};

/// Concurrent writers in the ingest workloads (each its own flow); with two replicas,
/// one on each.
const WRITERS: usize = 2;
/// Concurrent readers in the read workload, spread over the replicas
/// (`GS_COMPARE_SCALEOUT_READERS`, 4 unless set).
fn reader_count() -> usize {
    static READERS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *READERS.get_or_init(|| crate::env_or("GS_COMPARE_SCALEOUT_READERS", 4).max(1))
}
/// Reads of its flow by each reader.
const READS_EACH: usize = 2;
/// Live grains committed per second.
const RATE: u64 = 100;

/// Where PostgreSQL and the S3-compatible server are.
struct Machine {
    postgres_url: String,
    s3_endpoint: String,
    s3_bucket: String,
    s3_access_key: String,
    s3_secret_key: String,
}

impl Machine {
    fn detect() -> Option<Machine> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let (
            Some(postgres_url),
            Some(s3_endpoint),
            Some(s3_bucket),
            Some(s3_access_key),
            Some(s3_secret_key),
        ) = (
            var("GRAINSTORE_TEST_POSTGRES_URL"),
            var("GRAINSTORE_TEST_S3_ENDPOINT"),
            var("GRAINSTORE_TEST_S3_BUCKET"),
            var("GRAINSTORE_TEST_S3_ACCESS_KEY"),
            var("GRAINSTORE_TEST_S3_SECRET_KEY"),
        )
        else {
            println!(
                "\nscaleout: skipped: GRAINSTORE_TEST_POSTGRES_URL and GRAINSTORE_TEST_S3_ENDPOINT, \
                 _BUCKET, _ACCESS_KEY, _SECRET_KEY are not all set (PostgreSQL and an \
                 S3-compatible server, as for the tests)"
            );
            return None;
        };
        Some(Machine {
            postgres_url,
            s3_endpoint,
            s3_bucket,
            s3_access_key,
            s3_secret_key,
        })
    }

    /// PostgreSQL's port, from the URL (5432 when it names none).
    fn postgres_port(&self) -> u16 {
        let rest = self.postgres_url.rsplit('@').next().unwrap_or_default();
        let rest = rest.split_once("://").map_or(rest, |(_, r)| r);
        let host = rest.split(['/', '?']).next().unwrap_or_default();
        host.rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(5432)
    }

    fn s3_port(&self) -> Option<u16> {
        self.s3_endpoint
            .rsplit_once(':')
            .and_then(|(_, p)| p.trim_end_matches('/').parse().ok())
    }
}

/// Each replica's object cache in MiB (`GS_COMPARE_OBJECT_CACHE_MIB`, 0 unless set).
fn object_cache_mib() -> u64 {
    crate::env_or("GS_COMPARE_OBJECT_CACHE_MIB", 0)
}

/// Whether that cache keeps the bytes uploaded too (`GS_COMPARE_OBJECT_CACHE_UPLOADS`,
/// false unless set, as the setting's default): `storage.object_cache_uploads`.
fn object_cache_uploads() -> bool {
    crate::env_or("GS_COMPARE_OBJECT_CACHE_UPLOADS", false)
}

/// A `grainstore serve` process with the postgres backend on `schema`.
async fn start_replica(dir: &Path, name: &str, machine: &Machine, schema: &str) -> Grainstore {
    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_grainstore"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("GRAINSTORE__")) {
        command.env_remove(key);
    }
    command
        .arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir.join(format!("{name}-data")))
        .env("GRAINSTORE__LOG__FILTER", "warn")
        .env("GRAINSTORE__STORAGE__BACKEND", "postgres")
        .env("GRAINSTORE__STORAGE__POSTGRES_URL", &machine.postgres_url)
        .env("GRAINSTORE__STORAGE__POSTGRES_SCHEMA", schema)
        .env("GRAINSTORE__STORAGE__POSTGRES_POOL_SIZE", "32")
        .env("GRAINSTORE__STORAGE__MAX_SESSIONS", "30")
        .env(
            "GRAINSTORE__STORAGE__OBJECT_CACHE_BYTES",
            (object_cache_mib() << 20).to_string(),
        )
        .env(
            "GRAINSTORE__STORAGE__OBJECT_CACHE_UPLOADS",
            object_cache_uploads().to_string(),
        )
        .env(
            "GRAINSTORE__STORAGE__OBJECT_STORE_URL",
            format!("s3://{}/{schema}", machine.s3_bucket),
        )
        .env("GRAINSTORE__STORAGE__S3_ENDPOINT", &machine.s3_endpoint)
        .env(
            "GRAINSTORE__STORAGE__S3_ALLOW_HTTP",
            machine.s3_endpoint.starts_with("http://").to_string(),
        )
        // What `auto` does against an HTTPS object store in production; the test S3
        // server here answers on plain HTTP, where `auto` would sign every upload's SHA-256.
        .env("GRAINSTORE__STORAGE__S3_PAYLOAD_SIGNING", "unsigned")
        .env("GRAINSTORE__STORAGE__S3_REGION", "us-east-1")
        .env(
            "GRAINSTORE__STORAGE__S3_ACCESS_KEY_ID",
            &machine.s3_access_key,
        )
        .env(
            "GRAINSTORE__STORAGE__S3_SECRET_ACCESS_KEY",
            &machine.s3_secret_key,
        );
    let server = Server::spawn(
        "grainstore replica",
        command,
        &dir.join(format!("{name}.log")),
    );
    wait_for_port(port, "grainstore replica").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _) = Conn::open(port)
            .await
            .fetch("GET", "/readyz", &[], http::empty())
            .await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "replica {name} is not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Grainstore { server, port }
}

/// What a system's processes spent, by role.
#[derive(Clone, Copy, Default)]
struct Usage {
    wall: f64,
    replicas: f64,
    backends: f64,
    s3: f64,
    /// PostgreSQL's background processes (shared with other users of the instance).
    pg_shared: f64,
}

impl Usage {
    /// The CPU of the processes serving the work.
    fn cpu(&self) -> f64 {
        self.replicas + self.backends + self.s3
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Role {
    Replica,
    Backend,
    S3,
    PgShared,
}

/// One system under test: the replicas clients talk to and, for the postgres backend,
/// the ports of PostgreSQL and the S3 server whose processes count with them.
struct System<'a> {
    name: &'static str,
    replicas: Vec<&'a Grainstore>,
    postgres_port: Option<u16>,
    s3_pid: Option<u32>,
}

impl System<'_> {
    fn processes(&self) -> Vec<(u32, Role)> {
        let mut out: Vec<(u32, Role)> = self
            .replicas
            .iter()
            .map(|r| (r.server.pid, Role::Replica))
            .collect();
        if let Some(port) = self.postgres_port {
            let owners: Vec<u32> = self.replicas.iter().map(|r| r.server.pid).collect();
            let (backends, shared) = postgres_processes(&owners, port);
            out.extend(backends.into_iter().map(|pid| (pid, Role::Backend)));
            out.extend(shared.into_iter().map(|pid| (pid, Role::PgShared)));
        }
        out.extend(self.s3_pid.map(|pid| (pid, Role::S3)));
        out
    }

    fn meter(&self) -> SystemMeter<'_> {
        let before = self
            .processes()
            .into_iter()
            .map(|(pid, role)| (pid, (role, ProcStat::of(pid).cpu)))
            .collect();
        SystemMeter {
            system: self,
            before,
            start: Instant::now(),
        }
    }

    /// The replica for client `i`.
    fn replica(&self, i: usize) -> &Grainstore {
        self.replicas[i % self.replicas.len()]
    }
}

struct SystemMeter<'a> {
    system: &'a System<'a>,
    before: HashMap<u32, (Role, f64)>,
    start: Instant,
}

impl SystemMeter<'_> {
    fn stop(self) -> Usage {
        let wall = self.start.elapsed().as_secs_f64();
        let mut all = self.before.clone();
        for (pid, role) in self.system.processes() {
            // A connection opened meanwhile: its backend's whole life is in the work.
            all.entry(pid).or_insert((role, 0.0));
        }
        let mut usage = Usage {
            wall,
            ..Usage::default()
        };
        for (pid, (role, before)) in all {
            // A process gone meanwhile reads as 0: what it spent is lost, not negative.
            let spent = (ProcStat::of(pid).cpu - before).max(0.0);
            match role {
                Role::Replica => usage.replicas += spent,
                Role::Backend => usage.backends += spent,
                Role::S3 => usage.s3 += spent,
                Role::PgShared => usage.pg_shared += spent,
            }
        }
        usage
    }
}

/// PostgreSQL's processes: the backends of the connections `owners` hold to `port`
/// (matched by client port through `/proc/net/tcp` and the backends' titles,
/// `postgres: … 127.0.0.1(PORT) …`), and its background processes.
fn postgres_processes(owners: &[u32], port: u16) -> (Vec<u32>, Vec<u32>) {
    let mut inodes = HashSet::new();
    for pid in owners {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path()) {
                let link = link.to_string_lossy();
                if let Some(inode) = link
                    .strip_prefix("socket:[")
                    .and_then(|s| s.strip_suffix(']'))
                {
                    inodes.insert(inode.to_string());
                }
            }
        }
    }
    let mut client_ports = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port_of = |addr: &str| {
                addr.rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            };
            if f.len() > 9 && port_of(f[2]) == Some(port) && inodes.contains(f[9]) {
                client_ports.extend(port_of(f[1]));
            }
        }
    }
    let (mut backends, mut shared) = (Vec::new(), Vec::new());
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let title = String::from_utf8_lossy(&cmdline);
        let Some(title) = title.strip_prefix("postgres: ") else {
            continue;
        };
        let client = title.split_once('(').and_then(|(_, rest)| {
            rest.split_once(')')
                .and_then(|(p, _)| p.parse::<u16>().ok())
        });
        match client {
            Some(p) if client_ports.contains(&p) => backends.push(pid),
            Some(_) => {}
            // No client: the checkpointer, WAL writer, background writer…
            None => shared.push(pid),
        }
    }
    (backends, shared)
}

/// The figures of one system.
#[derive(Default)]
struct Figures {
    large_ingest: Option<(f64, Usage)>,
    small_ingest: Option<(f64, Usage)>,
    large_read: Option<(f64, Usage)>,
    live: Vec<(usize, LiveFigures)>,
}

struct LiveFigures {
    p50: f64,
    p99: f64,
    max: f64,
    delivered: usize,
    expected: usize,
    usage: Usage,
}

pub async fn run(plan: &Plan, dir: &Path, embedded: &Grainstore, report: &mut Report) {
    let Some(machine) = Machine::detect() else {
        return;
    };
    let full = std::env::var("GS_COMPARE_SCALEOUT_MIB").is_err()
        && std::env::var("GS_COMPARE_SCALE").is_ok_and(|s| s == "full");
    let mib = crate::env_or("GS_COMPARE_SCALEOUT_MIB", if full { 1024 } else { 256 });
    let subs: Vec<usize> = crate::env_list("GS_COMPARE_SCALEOUT_SUBS", "1,100")
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    let small = plan.small.div_ceil(BATCH * WRITERS) * BATCH * WRITERS;
    println!(
        "\nscale-out: embedded, postgres + S3 with 1 and 2 replicas; {mib} MiB of 1 MiB grains \
         and {small} small grains per system from {WRITERS} writers; {} readers x \
         {READS_EACH} reads; live {RATE} grains/s for {} s to {subs:?} subscribers",
        reader_count(),
        plan.secs
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    report.note(format!(
        "scale-out run: load average at its start {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    ));
    let s3_pid = machine.s3_port().and_then(pid_listening_on);
    match s3_pid {
        Some(pid) => report.note(format!(
            "scale-out: the S3 server at {} is process {pid}, `{}`",
            machine.s3_endpoint,
            command_line(pid)
        )),
        None => report.note(format!(
            "scale-out: no process of this machine listens at {}: the S3 server's CPU is not counted",
            machine.s3_endpoint
        )),
    }
    let quota: Option<f64> = std::env::var("GS_COMPARE_REPLICA_CPUS").ok().map(|v| {
        v.parse()
            .expect("GS_COMPARE_REPLICA_CPUS: a number of CPUs")
    });
    report.note(match object_cache_mib() {
        0 => "scale-out: the replicas have no object cache".to_owned(),
        mib => format!(
            "scale-out: each replica has an object cache of {mib} MiB \
             (storage.object_cache_bytes), {} (storage.object_cache_uploads)",
            if object_cache_uploads() {
                "holding what it uploads and reads"
            } else {
                "holding only what it reads"
            }
        ),
    });
    if let Some(cpus) = quota {
        report.note(format!(
            "scale-out run: each grainstore server (embedded, each replica) limited to \
             {cpus} CPUs by a cgroup quota of its own; PostgreSQL, the S3 server and the \
             client are not limited"
        ));
    }
    let limit = |pid: u32, name: &str| {
        quota.map(|cpus| {
            CpuLimit::apply(pid, cpus, name)
                .unwrap_or_else(|e| panic!("GS_COMPARE_REPLICA_CPUS: cannot limit {name}: {e}"))
        })
    };
    let schema = format!("gs_bench_{}", Uuid::new_v4().simple());
    let cleanup = Cleanup {
        url: machine.postgres_url.clone(),
        schema: schema.clone(),
    };

    let mut figures = Vec::new();
    let system = System {
        name: "embedded",
        replicas: vec![embedded],
        postgres_port: None,
        s3_pid: None,
    };
    let limited = limit(embedded.server.pid, "embedded");
    figures.push(measure(plan, &system, mib, small, &subs).await);
    drop(limited);

    let a = start_replica(dir, "replica-a", &machine, &schema).await;
    let limit_a = limit(a.server.pid, "replica-a");
    let one = System {
        name: "postgres + S3, 1 replica",
        replicas: vec![&a],
        postgres_port: Some(machine.postgres_port()),
        s3_pid,
    };
    figures.push(measure(plan, &one, mib, small, &subs).await);

    let b = start_replica(dir, "replica-b", &machine, &schema).await;
    let limit_b = limit(b.server.pid, "replica-b");
    let two = System {
        name: "postgres + S3, 2 replicas",
        replicas: vec![&a, &b],
        postgres_port: Some(machine.postgres_port()),
        s3_pid,
    };
    figures.push(measure(plan, &two, mib, small, &subs).await);
    drop((limit_a, limit_b));
    drop((a, b));
    cleanup.run(&machine).await;

    print_rows(report, &figures, mib, small, &subs);
}

async fn measure(
    plan: &Plan,
    system: &System<'_>,
    mib: usize,
    small: usize,
    subs: &[usize],
) -> Figures {
    println!("\nscale-out: {}", system.name);
    let mut figures = Figures::default();
    let (flows, usage) = ingest_large(system, mib).await;
    figures.large_ingest = Some((mib as f64 * 1.048576 / usage.wall, usage));
    let usage = ingest_small(system, small).await;
    figures.small_ingest = Some((small as f64 / usage.wall, usage));
    let (bytes, usage) = read_large(system, &flows, mib / WRITERS).await;
    figures.large_read = Some((bytes as f64 / 1e6 / usage.wall, usage));
    for &n in subs {
        figures.live.push((n, live(plan, system, n).await));
    }
    figures
}

/// WRITERS streaming POSTs of `mib / WRITERS` 1 MiB grains at once, each to its own
/// flow, writer `i` on replica `i`; returns the flows.
async fn ingest_large(system: &System<'_>, mib: usize) -> (Vec<Uuid>, Usage) {
    let each = mib / WRITERS;
    let mut flows = Vec::new();
    let mut bodies = Vec::new();
    for w in 0..WRITERS {
        let replica = system.replica(w);
        let (flow, source) = replica.create_flow("video").await;
        flows.push(flow);
        let data = payload(1 << 20, w as u8);
        let mut writer = GsfWriter::new(flow);
        let head = writer.start();
        let end = writer.finish();
        let grains = futures::stream::iter(0..each as u64).flat_map(move |i| {
            let grain = large_grain(flow, source, i, data.clone());
            futures::stream::iter(writer.grain(&grain))
        });
        let body = futures::stream::once(async move { head })
            .chain(grains)
            .chain(futures::stream::once(async move { end }));
        bodies.push((flow, Conn::open(replica.port).await, body));
    }
    let meter = system.meter();
    let tasks: Vec<_> = bodies
        .into_iter()
        .map(|(flow, mut conn, body)| {
            tokio::spawn(async move {
                let (status, text) = conn
                    .fetch(
                        "POST",
                        &format!("/flows/{flow}/grains"),
                        &[("content-type", "application/x-gsf")],
                        http::streamed(body),
                    )
                    .await;
                assert_eq!(status, 201, "{}", String::from_utf8_lossy(&text));
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("writer");
    }
    (flows, meter.stop())
}

/// WRITERS writers of `n / WRITERS` small grains each, in GSF POSTs of BATCH grains.
async fn ingest_small(system: &System<'_>, n: usize) -> Usage {
    let data = payload(SMALL_BYTES, 7);
    let mut work = Vec::new();
    for w in 0..WRITERS {
        let replica = system.replica(w);
        let (flow, source) = replica.create_flow("audio").await;
        let bodies: Vec<Bytes> = (0..n / WRITERS / BATCH)
            .map(|b| {
                let grains: Vec<_> = (0..BATCH)
                    .map(|i| small_grain(flow, source, (b * BATCH + i) as u64, 1000, data.clone()))
                    .collect();
                GsfWriter::body(flow, &grains)
            })
            .collect();
        work.push((flow, Conn::open(replica.port).await, bodies));
    }
    let meter = system.meter();
    let tasks: Vec<_> = work
        .into_iter()
        .map(|(flow, mut conn, bodies)| {
            tokio::spawn(async move {
                let path = format!("/flows/{flow}/grains");
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
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("writer");
    }
    meter.stop()
}

/// [`reader_count`] clients at once, reader `i` on replica `i`, each reading a whole large flow
/// READS_EACH times; returns the bytes read.
async fn read_large(system: &System<'_>, flows: &[Uuid], count: usize) -> (u64, Usage) {
    // Once through first, so every system reads from a warm page cache.
    for (i, flow) in flows.iter().enumerate() {
        let mut conn = Conn::open(system.replica(i).port).await;
        let response = conn
            .send(
                "GET",
                &format!("/flows/{flow}/grains"),
                &[("accept", "application/x-gsf")],
                http::empty(),
            )
            .await;
        http::drain(response).await;
    }
    let mut readers = Vec::new();
    for r in 0..reader_count() {
        let path = format!(
            "/flows/{}/grains?timerange={}&count={count}",
            flows[r % flows.len()],
            from_query(0, 25)
        );
        readers.push((Conn::open(system.replica(r).port).await, path));
    }
    let meter = system.meter();
    let tasks: Vec<_> = readers
        .into_iter()
        .map(|(mut conn, path)| {
            tokio::spawn(async move {
                let mut bytes = 0;
                for _ in 0..READS_EACH {
                    let response = conn
                        .send(
                            "GET",
                            &path,
                            &[("accept", "application/x-gsf")],
                            http::empty(),
                        )
                        .await;
                    assert_eq!(response.status(), 200);
                    let got = http::drain(response).await;
                    assert!(got >= (count as u64) << 20, "short read: {got} B");
                    bytes += got;
                }
                bytes
            })
        })
        .collect();
    let mut bytes = 0;
    for t in tasks {
        bytes += t.await.expect("reader");
    }
    (bytes, meter.stop())
}

/// A writer on the first replica commits RATE grains/s, one a POST, for `plan.secs`;
/// `subs` SSE subscribers, subscriber `i` on replica `i + 1` (so one subscriber of two
/// replicas is on the other one). Latency from the writer's acknowledgement to each
/// event's arrival.
async fn live(plan: &Plan, system: &System<'_>, subs: usize) -> LiveFigures {
    let grains = (plan.secs * RATE) as usize;
    let writer_replica = system.replica(0);
    let (flow, source) = writer_replica.create_flow("audio").await;
    let data = payload(SMALL_BYTES, 9);
    let bodies: Vec<Bytes> = (0..grains as u64)
        .map(|i| GsfWriter::body(flow, &[small_grain(flow, source, i, RATE, data.clone())]))
        .collect();
    let path = format!("/flows/{flow}/grains");
    let ready = Arc::new(AtomicUsize::new(0));
    let cancel = CancellationToken::new();
    let tasks: Vec<_> = (0..subs)
        .map(|i| {
            tokio::spawn(subscriber(
                system.replica(i + 1).port,
                path.clone(),
                ready.clone(),
                cancel.clone(),
            ))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while ready.load(Ordering::SeqCst) < subs {
        assert!(Instant::now() < deadline, "subscribers not ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut writer = Conn::open(writer_replica.port).await;
    let mut acked = Vec::with_capacity(grains);
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let meter = system.meter();
    for body in bodies {
        tick.tick().await;
        let (status, text) = writer
            .fetch(
                "POST",
                &path,
                &[("content-type", "application/x-gsf")],
                http::full(body),
            )
            .await;
        acked.push(Instant::now());
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&text));
    }
    // The last events' way to the subscribers.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let usage = meter.stop();
    cancel.cancel();
    let mut samples = Vec::new();
    for t in tasks {
        for (index, at) in t.await.expect("subscriber") {
            let Some(&ack) = acked.get(index as usize) else {
                continue;
            };
            samples.push(if at >= ack {
                (at - ack).as_nanos() as i64
            } else {
                -((ack - at).as_nanos() as i64)
            });
        }
    }
    let delivered = samples.len();
    let (p50, p99, max) = percentiles(&mut samples);
    println!(
        "  live, {subs} subscriber(s): {delivered} of {} events; ack→event p50/p99/max {p50:.2}/{p99:.2}/{max:.1} ms",
        grains * subs
    );
    LiveFigures {
        p50,
        p99,
        max,
        delivered,
        expected: grains * subs,
        usage,
    }
}

/// An SSE subscriber: ready once its response headers are in; the arrival of each
/// `id:` line, by grain index.
async fn subscriber(
    port: u16,
    path: String,
    ready: Arc<AtomicUsize>,
    cancel: CancellationToken,
) -> Vec<(u64, Instant)> {
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
            if let Some(index) = line
                .strip_prefix(b"id:")
                .and_then(|id| std::str::from_utf8(id).ok())
                .and_then(|t| index_of(t, RATE))
            {
                receipts.push((index, now));
            }
            start += nl + 1;
        }
        partial.drain(..start);
    }
    receipts
}

/// A process's command line, its arguments apart by spaces, with the value of every
/// argument that names a secret, key, password or token hidden (S3 servers take their
/// credentials on the command line, and the report is meant to be shared).
fn command_line(pid: u32) -> String {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return "(gone)".into();
    };
    let secret = |arg: &str| {
        let arg = arg.to_ascii_lowercase();
        ["secret", "key", "password", "token"]
            .iter()
            .any(|word| arg.contains(word))
    };
    let mut out = Vec::new();
    let mut hide_next = false;
    for arg in raw.split(|&b| b == 0).filter(|a| !a.is_empty()) {
        let arg = String::from_utf8_lossy(arg);
        if std::mem::take(&mut hide_next) {
            out.push("***".to_string());
        } else if arg.starts_with('-') && secret(&arg) {
            match arg.split_once('=') {
                Some((name, _)) => out.push(format!("{name}=***")),
                None => {
                    out.push(arg.into_owned());
                    hide_next = true;
                }
            }
        } else {
            out.push(arg.into_owned());
        }
    }
    out.join(" ")
}

/// "total (replicas a, PostgreSQL backends b, object store c)" per `unit` of work.
fn cpu_cell(usage: &Usage, units: f64, unit: &str) -> String {
    let per = |cpu: f64| cpu / units;
    if usage.backends == 0.0 && usage.s3 == 0.0 && usage.pg_shared == 0.0 {
        return format!("{:.2} CPU-s/{unit}", per(usage.cpu()));
    }
    format!(
        "{:.2} CPU-s/{unit} (replicas {:.2}, PG backends {:.2}, object store {:.2}; PG background {:.2} apart)",
        per(usage.cpu()),
        per(usage.replicas),
        per(usage.backends),
        per(usage.s3),
        per(usage.pg_shared)
    )
}

/// The rows of one workload: embedded, one replica (against embedded: the cost of
/// scale-out), two replicas (against one).
#[allow(clippy::too_many_arguments)]
fn rows(
    report: &mut Report,
    work: &str,
    figures: &[(f64, Usage)],
    units: f64,
    unit: &str,
    rate_unit: &str,
    names: [&str; 3],
    two_target: Option<f64>,
) {
    let cpu = |u: &Usage| u.cpu() / units;
    let [(e_rate, e), (o_rate, o), (t_rate, t)] = [figures[0], figures[1], figures[2]];
    report.row(
        work,
        names[0],
        format!("{e_rate:.0} {rate_unit}"),
        cpu_cell(&e, units, unit),
        "—".into(),
        String::new(),
    );
    let cost = cpu(&o) / cpu(&e);
    // The object store's share apart: in production it is a service of its own (S3),
    // here the S3 server on the same two vCPUs.
    let own = (o.replicas + o.backends) / e.cpu();
    report.row(
        work,
        names[1],
        format!("{o_rate:.0} {rate_unit}"),
        cpu_cell(&o, units, unit),
        format!(
            "{:.2}x embedded's {rate_unit}, {cost:.2}x its CPU/{unit} \
             ({own:.2}x without the object store's)",
            o_rate / e_rate
        ),
        // The goal is the backend's own cost: the object store is a service of its own
        // in production, and the test S3 servers alone spend several times the embedded
        // store's CPU.
        verdict(own <= 2.0, "CPU ≤ 2x embedded, the object store's apart"),
    );
    let scale = t_rate / o_rate;
    report.row(
        work,
        names[2],
        format!("{t_rate:.0} {rate_unit}"),
        cpu_cell(&t, units, unit),
        format!(
            "{scale:.2}x one replica's {rate_unit}, {:.2}x its CPU/{unit}; {:.2}x embedded's CPU/{unit}",
            cpu(&t) / cpu(&o),
            cpu(&t) / cpu(&e)
        ),
        two_target
            .map(|min| verdict(scale >= min, &format!("≥ {min}x one replica")))
            .unwrap_or_default(),
    );
}

fn print_rows(report: &mut Report, figures: &[Figures], mib: usize, small: usize, subs: &[usize]) {
    let names = [
        "embedded",
        "postgres + S3, 1 replica",
        "postgres + S3, 2 replicas",
    ];
    let gib = mib as f64 / 1024.0;
    let pick = |f: fn(&Figures) -> Option<(f64, Usage)>| -> Vec<(f64, Usage)> {
        figures.iter().filter_map(f).collect()
    };
    rows(
        report,
        &format!("scale-out: ingest {mib} x 1 MiB grains, {WRITERS} writers"),
        &pick(|f| f.large_ingest),
        gib,
        "GiB",
        "MB/s",
        names,
        None,
    );
    rows(
        report,
        &format!(
            "scale-out: ingest {small} x {SMALL_BYTES} B grains, batches of {BATCH}, {WRITERS} writers"
        ),
        &pick(|f| f.small_ingest),
        small as f64 / 1e6,
        "M grains",
        "grains/s",
        names,
        None,
    );
    let read_gib = (reader_count() * READS_EACH * (mib / WRITERS)) as f64 / 1024.0;
    rows(
        report,
        &format!(
            "scale-out: range read of 1 MiB grains, {} readers x {READS_EACH} x {} MiB",
            reader_count(),
            mib / WRITERS
        ),
        &pick(|f| f.large_read),
        read_gib,
        "GiB",
        "MB/s",
        names,
        Some(1.6),
    );
    for (k, &n) in subs.iter().enumerate() {
        let work = format!(
            "scale-out: live, {n} subscriber(s), {RATE} grains/s, writer on the first replica"
        );
        for (i, f) in figures.iter().enumerate() {
            let Some((_, live)) = f.live.get(k) else {
                continue;
            };
            let placement = match (i, n) {
                (2, 1) => ", the subscriber on the other replica",
                (2, _) => ", subscribers on both",
                _ => "",
            };
            report.row(
                &work,
                &format!("{}{placement}", names[i]),
                format!(
                    "{} of {} events; ack→event p50/p99/max {:.2}/{:.2}/{:.1} ms",
                    live.delivered, live.expected, live.p50, live.p99, live.max
                ),
                cpu_cell(&live.usage, live.delivered.max(1) as f64 / 1e6, "M events"),
                "—".into(),
                String::new(),
            );
        }
    }
}

/// Drops the run's schema and deletes its objects.
struct Cleanup {
    url: String,
    schema: String,
}

impl Cleanup {
    async fn run(self, machine: &Machine) {
        match tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                if let Err(e) = client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
                    .await
                {
                    println!("could not drop schema {}: {e}", self.schema);
                }
            }
            Err(e) => println!("could not drop schema {}: {e}", self.schema),
        }
        let store = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&machine.s3_bucket)
            .with_endpoint(&machine.s3_endpoint)
            .with_allow_http(machine.s3_endpoint.starts_with("http://"))
            .with_region("us-east-1")
            .with_access_key_id(&machine.s3_access_key)
            .with_secret_access_key(&machine.s3_secret_key)
            .build();
        let deleted = match store {
            Ok(store) => {
                use object_store::ObjectStore;
                let prefix = object_store::path::Path::from(self.schema.as_str());
                let locations = store.list(Some(&prefix)).map_ok(|m| m.location).boxed();
                store
                    .delete_stream(locations)
                    .try_collect::<Vec<_>>()
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = deleted {
            println!("could not delete the objects under {}: {e}", self.schema);
        }
    }
}
