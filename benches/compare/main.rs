//! Service-level comparison: the grainstore server against peers measured on the same
//! machine in the same run — a bare axum handler, nginx, `dd`, Redis Streams and NATS
//! (core and JetStream) — over HTTP and their own protocols on loopback.
//!
//! Every figure is printed beside the *server's* CPU seconds per unit of work (utime +
//! stime of the server process from `/proc/PID/stat`, read before and after) and the
//! ratio to its peer. On a shared 2-core machine throughput swings from run to run;
//! CPU per unit is the steadier figure. Nothing here asserts a time: it prints.
//!
//! `cargo bench --bench compare` runs the quick set (~2–3 minutes);
//! `GS_COMPARE_SCALE=full cargo bench --bench compare` the full one. Environment:
//! - `GS_COMPARE_WORKLOADS`: comma list of `get`, `ingest-small`, `ingest-large`,
//!   `read-small`, `read-large`, `live`, `idle` (default: all), and `scaleout` (not in
//!   the default set: embedded against the postgres backend with one and two replicas;
//!   needs PostgreSQL and an S3-compatible server; its knobs, such as
//!   `GS_COMPARE_REPLICA_CPUS` for a CPU quota per server, are in scaleout.rs);
//! - `GS_COMPARE_PEERS`: comma list of `axum`, `nginx`, `dd`, `redis`, `nats`
//!   (default: all that are installed or listening);
//! - sizes: `GS_COMPARE_SMALL` (small grains ingested), `GS_COMPARE_LARGE_MIB` (MiB of
//!   1 MiB grains uploaded to grainstore and written by dd), `GS_COMPARE_PEER_LARGE_MIB`
//!   (MiB written to and read from Redis and NATS, and read in the grainstore/nginx
//!   comparison), `GS_COMPARE_READS` (10,000-grain reads), `GS_COMPARE_SECS` (seconds
//!   per GET and live run), `GS_COMPARE_SUBS` (subscriber counts, e.g. `1,100,1000`),
//!   `GS_COMPARE_IDLE` (idle subscribers);
//! - `GS_COMPARE_DIR`: where grainstore's data and the dd file go (default a temp dir
//!   under `target/`, so both are on the same filesystem);
//! - `GS_COMPARE_REDIS_PORT` (6379), `GS_COMPARE_NATS_PORT` (4222): the shared peers.

mod fixtures;
mod get;
mod http;
mod ingest;
mod live;
mod nats;
mod proc;
mod read;
mod report;
mod resp;
mod scaleout;

use std::path::PathBuf;

use report::Report;

/// What to run and how much.
pub struct Plan {
    pub workloads: Vec<String>,
    pub peers: Vec<String>,
    pub small: usize,
    pub large_mib: usize,
    pub peer_large_mib: usize,
    pub reads: usize,
    pub secs: u64,
    pub subs: Vec<usize>,
    pub idle: usize,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The quick or the full size of something.
fn pick<T>(full: bool, quick: T, full_size: T) -> T {
    if full { full_size } else { quick }
}

impl Plan {
    fn from_env() -> Plan {
        let full = std::env::var("GS_COMPARE_SCALE").is_ok_and(|s| s == "full");
        let large_mib = env_or("GS_COMPARE_LARGE_MIB", pick(full, 512, 10240));
        Plan {
            workloads: env_list(
                "GS_COMPARE_WORKLOADS",
                "get,ingest-small,ingest-large,read-small,read-large,live,idle",
            ),
            peers: env_list("GS_COMPARE_PEERS", "axum,nginx,dd,redis,nats"),
            small: env_or("GS_COMPARE_SMALL", pick(full, 100_000, 1_000_000)),
            large_mib,
            peer_large_mib: env_or("GS_COMPARE_PEER_LARGE_MIB", large_mib.min(1024)),
            reads: env_or("GS_COMPARE_READS", pick(full, 10, 50)),
            secs: env_or("GS_COMPARE_SECS", pick(full, 4, 15)),
            subs: env_list("GS_COMPARE_SUBS", "1,100,1000")
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect(),
            idle: env_or("GS_COMPARE_IDLE", pick(full, 2000, 9000)),
        }
    }

    pub fn runs(&self, workload: &str) -> bool {
        self.workloads.iter().any(|w| w == workload)
    }

    pub fn with(&self, peer: &str) -> bool {
        self.peers.iter().any(|p| p == peer)
    }
}

fn main() {
    if std::env::var("GS_COMPARE_ROLE").is_ok_and(|r| r == "bare-axum") {
        fixtures::run_bare_axum();
        return;
    }
    let fd_limit = proc::raise_fd_limit();
    let plan = Plan::from_env();
    let base = std::env::var("GS_COMPARE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    std::fs::create_dir_all(&base).expect("bench dir");
    let dir = tempfile::Builder::new()
        .prefix("compare-")
        .tempdir_in(&base)
        .expect("temp dir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut report = Report::default();
    runtime.block_on(async {
        tokio::select! {
            () = run(&plan, dir.path().to_path_buf(), fd_limit, &mut report) => {}
            _ = tokio::signal::ctrl_c() => println!("interrupted: stopping the servers"),
        }
    });
    report.print();
    // Servers were dropped (killed) with the future above; the temp dir goes now.
    drop(runtime);
}

async fn run(plan: &Plan, dir: PathBuf, fd_limit: u64, report: &mut Report) {
    println!("grainstore service comparison in {}", dir.display());
    println!(
        "workloads {:?}; peers {:?}; small grains {}; large {} MiB (peers {} MiB); {} reads; {} s runs; subscribers {:?}; idle {}; fd limit {fd_limit}",
        plan.workloads,
        plan.peers,
        plan.small,
        plan.large_mib,
        plan.peer_large_mib,
        plan.reads,
        plan.secs,
        plan.subs,
        plan.idle
    );
    let grainstore = fixtures::Grainstore::start(&dir).await;
    let mut peers = ingest::Peers::start(plan, &dir).await;
    if plan.runs("get") {
        get::run(plan, &dir, &grainstore, report).await;
    }
    let small = if plan.runs("ingest-small") || plan.runs("read-small") {
        Some(ingest::small(plan, &grainstore, &mut peers, report).await)
    } else {
        None
    };
    if let (true, Some(small)) = (plan.runs("read-small"), &small) {
        read::small(plan, &grainstore, &mut peers, small, report).await;
    }
    let large = if plan.runs("ingest-large") || plan.runs("read-large") {
        Some(ingest::large(plan, &dir, &grainstore, &mut peers, report).await)
    } else {
        None
    };
    if let (true, Some(large)) = (plan.runs("read-large"), &large) {
        read::large(plan, &dir, &grainstore, &mut peers, large, report).await;
    }
    if plan.runs("live") {
        live::run(plan, &grainstore, &mut peers, report).await;
    }
    if plan.runs("idle") {
        live::idle(plan, &grainstore, &mut peers, fd_limit, report).await;
    }
    if plan.runs("scaleout") {
        scaleout::run(plan, &dir, &grainstore, report).await;
    }
    peers.cleanup().await;
    let resident = grainstore.server.stat();
    report.note(format!(
        "grainstore at the end: VmRSS {}, VmHWM {} (peak over the whole run)",
        report::mib(resident.rss),
        report::mib(resident.hwm)
    ));
}
