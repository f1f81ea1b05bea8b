//! Faults of the real server process: it is killed with SIGKILL under a sustained HTTP
//! ingest and restarted on the same data directory, again and again, and its index file
//! is damaged on disk between two runs.
//!
//! The crash loop keeps a ledger of what each client was told: a grain acknowledged
//! (2xx, or within the `committed` count of a problem) must be present, byte for byte,
//! after every restart; a grain of a request the kill cut off may be present or absent,
//! but if present it is the grain sent, whole, and from then on it must stay; a grain
//! never sent (the broken tail of a deliberately malformed body) must never appear.
//!
//! `GRAINSTORE_CRASH_SEED` replays a run's choices (the seed is printed); the kill
//! moments depend on timing as well.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use grainstore::grain::{
    CodedVideoHeader, CogFrameFormat, CogFrameLayout, Grain, GrainHeader, GrainKind,
};
use grainstore::gsf::{GsfDateTime, GsfDecoder, GsfEncoder, GsfEvent};
use grainstore::time::{Bound, Rational, TimeRange, Timestamp};
use serde_json::{Value, json};
use support::free_port;
use uuid::Uuid;

const SEED_VAR: &str = "GRAINSTORE_CRASH_SEED";
/// How many times the server is killed and restarted.
const CYCLES: usize = 22;
/// Flows written to, and clients writing (each client writes one flow, interleaved with
/// the other clients of that flow).
const FLOWS: usize = 2;
const CLIENTS: usize = 4;
/// A client sends no grain past this index, so that the data (read back in full after
/// every restart) stays small enough for the time the test is given.
const LAST_INDEX: u64 = 4_000;
/// The longest a test waits for something that must happen (a start, a response): a
/// bound on a hang, not a performance assertion.
const PATIENCE: Duration = Duration::from_secs(30);
/// Origin timestamp of grain 0 of each flow, and grains per second.
const BASE_SECS: i64 = 1_700_000_000;
const RATE: i64 = 25;

/// A small deterministic generator (SplitMix64).
#[derive(Clone)]
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `lo..hi`.
    fn below(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

fn seed() -> u64 {
    match std::env::var(SEED_VAR) {
        Ok(seed) => seed.parse().expect("seed"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

/// The ids of flow `k` of a run: (flow, source).
fn flow_ids(seed: u64, k: usize) -> (Uuid, Uuid) {
    (
        Uuid::from_u64_pair(seed, 2 * k as u64 + 1),
        Uuid::from_u64_pair(seed, 2 * k as u64 + 2),
    )
}

fn at(index: u64) -> Timestamp {
    Timestamp::from_nanos(
        i128::from(BASE_SECS) * 1_000_000_000 + i128::from(index) * 1_000_000_000 / 25,
    )
    .expect("timestamp")
}

fn index_of(timestamp: Timestamp) -> Option<u64> {
    let nanos = timestamp.to_nanos() - i128::from(BASE_SECS) * 1_000_000_000;
    let step = 1_000_000_000 / i128::from(RATE);
    (nanos >= 0 && nanos % step == 0)
        .then(|| u64::try_from(nanos / step).ok())
        .flatten()
}

/// The grain at `index` of flow `k`: a coded video frame whose size and bytes follow from
/// `(seed, k, index)` alone. Most are small (kept in the index), some go to segment files.
fn grain(seed: u64, k: usize, index: u64) -> Grain {
    let (flow, source) = flow_ids(seed, k);
    let mut rng = SplitMix(seed ^ (k as u64) << 56 ^ index.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let len = match rng.below(0, 100) {
        0..5 => 0,
        5..60 => rng.below(1, 1_000),
        60..90 => rng.below(1_000, 8_000),
        _ => rng.below(8_000, 64_000),
    } as usize;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        bytes.extend_from_slice(&rng.next().to_le_bytes());
    }
    bytes.truncate(len);
    let kind = GrainKind::CodedVideo(CodedVideoHeader {
        format: CogFrameFormat::H264,
        layout: CogFrameLayout::FULL_FRAME,
        origin_width: 1920,
        origin_height: 1080,
        coded_width: 1920,
        coded_height: 1088,
        is_key_frame: Some(index.is_multiple_of(25)),
        temporal_offset: Some((index % 3) as i32),
        unit_offsets: Vec::new(),
        length: 0,
        source_aspect_ratio: None,
        pixel_aspect_ratio: None,
    });
    let mut header = GrainHeader::new(source, flow, at(index), kind);
    header.rate = Rational::new(RATE, 1);
    header.duration = Rational::new(1, RATE);
    Grain::new(header, Bytes::from(bytes)).expect("grain")
}

/// What the clients were told about each grain of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// Sent in a request whose outcome is unknown (the server died): present or absent.
    Unknown,
    /// Acknowledged, or seen present after a restart: present for ever.
    Durable,
    /// Only part of it was ever sent: never present.
    Absent,
}

type Ledger = Arc<Mutex<Vec<BTreeMap<u64, Fate>>>>;

#[derive(Clone, Copy, Debug)]
enum Format {
    Gsf,
    Ndjson,
}

/// One request's grains: `indices` complete, then (maybe) one broken grain, `broken`.
#[derive(Clone, Debug)]
struct Batch {
    indices: Vec<u64>,
    broken: Option<u64>,
    format: Format,
}

impl Batch {
    /// The body, deterministic but for the GSF head's creation time.
    fn body(&self, seed: u64, k: usize) -> Vec<u8> {
        let grains: Vec<Grain> = self.indices.iter().map(|&i| grain(seed, k, i)).collect();
        let broken = self.broken.map(|i| grain(seed, k, i));
        match self.format {
            Format::Ndjson => {
                let mut out = Vec::new();
                for g in &grains {
                    out.extend_from_slice(&g.to_json(true));
                    out.push(b'\n');
                }
                if let Some(g) = broken {
                    // Half a JSON line is no grain: the server stops at it.
                    let line = g.to_json(true);
                    out.extend_from_slice(&line[..line.len() / 2]);
                    out.push(b'\n');
                }
                out
            }
            Format::Gsf => {
                let (flow, _) = flow_ids(seed, k);
                let mut encoder = GsfEncoder::new(Uuid::new_v4(), GsfDateTime::now());
                let local = encoder.add_flow_segment(flow).expect("segment");
                let mut out = encoder.start().expect("head").to_vec();
                let block = |g: &Grain| {
                    let chunks = encoder.encode_grain_in(local, g).expect("encode");
                    let mut one = chunks.header.to_vec();
                    one.extend_from_slice(&chunks.payload);
                    one
                };
                for g in &grains {
                    out.extend_from_slice(&block(g));
                }
                match broken {
                    // The body ends inside the grain's block.
                    Some(g) => {
                        let one = block(&g);
                        out.extend_from_slice(&one[..one.len() / 2]);
                    }
                    None => out.extend_from_slice(&encoder.finish()),
                }
                out
            }
        }
    }
}

/// One ingest client: the flow it writes, where it is, and the request to re-send after
/// a restart (a real ingest retries; identical grains are no-ops).
struct Client {
    k: usize,
    /// Its grains are `slot`, `slot + stride`, `slot + 2 * stride`, ...
    slot: u64,
    stride: u64,
    next: u64,
    pending: Option<Batch>,
    rng: SplitMix,
    requests: u64,
    /// Requests that got no answer (cut by a kill, or sent to a dead server).
    cut: u64,
}

impl Client {
    fn next_batch(&mut self) -> Option<Batch> {
        let first = self.slot + self.next * self.stride;
        if first > LAST_INDEX {
            return None;
        }
        let n = self.rng.below(1, 25);
        let indices: Vec<u64> = (0..n)
            .map(|j| first + j * self.stride)
            .filter(|&i| i <= LAST_INDEX)
            .collect();
        self.next += indices.len() as u64;
        // One request in eight ends in a broken grain, which is then never sent whole.
        let broken = (self.rng.below(0, 8) == 0).then(|| {
            let i = self.slot + self.next * self.stride;
            self.next += 1;
            i
        });
        let format = if self.rng.below(0, 2) == 0 {
            Format::Gsf
        } else {
            Format::Ndjson
        };
        Some(Batch {
            indices,
            broken,
            format,
        })
    }

    /// Writes until `stop` is set; a request that fails for want of a server is kept to
    /// be sent again.
    async fn run(
        mut self,
        seed: u64,
        base: String,
        ledger: Ledger,
        stop: Arc<AtomicBool>,
    ) -> Client {
        let http = reqwest::Client::builder()
            .timeout(PATIENCE)
            .build()
            .expect("client");
        let (flow, _) = flow_ids(seed, self.k);
        let url = format!("{base}/flows/{flow}/grains");
        while !stop.load(Ordering::SeqCst) {
            let Some(batch) = self.pending.take().or_else(|| self.next_batch()) else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            {
                let mut ledger = ledger.lock().unwrap();
                for &i in &batch.indices {
                    ledger[self.k].entry(i).or_insert(Fate::Unknown);
                }
                if let Some(i) = batch.broken {
                    ledger[self.k].insert(i, Fate::Absent);
                }
            }
            // The body in a few pieces with pauses, so that kills land inside bodies
            // and the server commits parts of a request before the rest arrives.
            let body = batch.body(seed, self.k);
            let mut cuts: Vec<usize> = (0..self.rng.below(0, 4))
                .map(|_| self.rng.below(0, body.len() as u64 + 1) as usize)
                .collect();
            cuts.sort_unstable();
            cuts.push(body.len());
            let mut pieces = Vec::new();
            let mut from = 0;
            for cut in cuts {
                pieces.push(Bytes::copy_from_slice(&body[from..cut]));
                from = cut;
            }
            let pause = Duration::from_millis(self.rng.below(0, 4));
            let stream = futures::stream::iter(pieces).then(move |piece| async move {
                tokio::time::sleep(pause).await;
                Ok::<_, std::io::Error>(piece)
            });
            let content_type = match batch.format {
                Format::Gsf => "application/x-gsf",
                Format::Ndjson => "application/x-ndjson",
            };
            self.requests += 1;
            let sent = http
                .post(&url)
                .header("content-type", content_type)
                .body(reqwest::Body::wrap_stream(stream))
                .send()
                .await;
            let answer = match sent {
                Ok(response) => {
                    let status = response.status().as_u16();
                    response.text().await.map(|text| (status, text))
                }
                Err(e) => Err(e),
            };
            let (status, text) = match answer {
                Ok(answer) => answer,
                Err(_) => {
                    // No answer: the server is gone (or going). Its grains stay unknown.
                    self.cut += 1;
                    self.pending = Some(batch);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            };
            let body: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{e}: a {status} answer that is not JSON: {text}"));
            let complete = batch.indices.len() as u64;
            let acknowledged = match (status, batch.broken) {
                (200 | 201, None) => {
                    let written = body["written"].as_u64().expect("written");
                    let unchanged = body["unchanged"].as_u64().expect("unchanged");
                    assert_eq!(written + unchanged, complete, "{body}");
                    complete
                }
                (400, Some(_)) => {
                    let committed = body["committed"].as_u64().expect("committed");
                    assert_eq!(
                        committed, complete,
                        "the complete grains before a fault: {body}"
                    );
                    committed
                }
                _ => panic!("unexpected answer {status} to a request of {batch:?}: {body}"),
            };
            let mut ledger = ledger.lock().unwrap();
            for &i in &batch.indices[..acknowledged as usize] {
                ledger[self.k].insert(i, Fate::Durable);
            }
        }
        self
    }
}

/// The server process; killed when dropped.
struct ServerProcess {
    child: Child,
    base: String,
    log: PathBuf,
}

impl ServerProcess {
    /// Starts `grainstore serve` on `port` with `data`, logging to `log`.
    fn spawn(port: u16, data: &Path, log: &Path, env: &[(&str, &str)]) -> ServerProcess {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_grainstore"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(data)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .expect("start grainstore");
        ServerProcess {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log: log.to_path_buf(),
        }
    }

    /// Waits until `/readyz` answers 200; the exit status instead if the process ends.
    async fn ready(&mut self) -> Result<(), ExitStatus> {
        let http = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return Err(status);
            }
            if let Ok(response) = http.get(format!("{}/readyz", self.base)).send().await
                && response.status() == 200
            {
                return Ok(());
            }
            assert!(
                started.elapsed() < PATIENCE,
                "the server is not ready within {PATIENCE:?}:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn kill(&mut self) {
        // SIGKILL: no shutdown, nothing flushed.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Small segment files so that kills land around rotations; payloads over 4 KiB in them.
const STORE_ENV: &[(&str, &str)] = &[
    ("GRAINSTORE__STORAGE__INLINE_MAX_BYTES", "4096"),
    ("GRAINSTORE__STORAGE__SEGMENT_BYTES", "1048576"),
    ("RUST_LOG", "grainstore=info"),
];

async fn create_flows(base: &str, seed: u64, flows: usize) {
    let http = reqwest::Client::new();
    for k in 0..flows {
        let (flow, source) = flow_ids(seed, k);
        let response = http
            .put(format!("{base}/flows/{flow}"))
            .json(&json!({
                "source_id": source,
                "format": "urn:x-nmos:format:video",
                "label": format!("camera {k}"),
            }))
            .send()
            .await
            .expect("PUT flow");
        assert_eq!(response.status(), 201, "{:?}", response.text().await);
    }
}

/// Every grain of a flow, read through the API as GSF or NDJSON.
async fn read_all(http: &reqwest::Client, base: &str, flow: Uuid, format: Format) -> Vec<Grain> {
    let accept = match format {
        Format::Gsf => "application/x-gsf",
        Format::Ndjson => "application/x-ndjson",
    };
    let response = http
        .get(format!("{base}/flows/{flow}/grains"))
        .header("accept", accept)
        .send()
        .await
        .expect("GET grains");
    let status = response.status();
    let body = response.bytes().await.expect("the whole read");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    match format {
        Format::Gsf => GsfDecoder::decode_all(body)
            .expect("a valid GSF body")
            .into_iter()
            .filter_map(|event| match event {
                GsfEvent::Grain { grain, .. } => Some(grain),
                _ => None,
            })
            .collect(),
        Format::Ndjson => body
            .split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| Grain::from_json(line).expect("a JSON grain"))
            .collect(),
    }
}

/// Checks the restarted server against the ledger; returns how many grains it holds.
/// Grains of unknown fate found present become durable; returns (present, how many of
/// those).
async fn verify(
    base: &str,
    seed: u64,
    ledger: &Ledger,
    format: Format,
    cycle: usize,
) -> (u64, u64) {
    let http = reqwest::Client::builder()
        .timeout(PATIENCE)
        .build()
        .expect("client");
    let ready = http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    let listing: Value = http
        .get(format!("{base}/flows"))
        .send()
        .await
        .expect("GET /flows")
        .json()
        .await
        .expect("a flow listing");
    let mut present = 0;
    let mut recovered = 0;
    for k in 0..FLOWS {
        let (flow, _) = flow_ids(seed, k);
        let listed = listing
            .as_array()
            .expect("an array of flows")
            .iter()
            .find(|f| f["id"] == flow.to_string())
            .unwrap_or_else(|| panic!("cycle {cycle}: flow {k} not listed: {listing}"));
        let stored = read_all(&http, base, flow, format).await;
        let mut ledger = ledger.lock().unwrap();
        let fates = &mut ledger[k];
        let mut seen = std::collections::BTreeSet::new();
        for got in &stored {
            let timestamp = got.origin_timestamp();
            let index = index_of(timestamp)
                .unwrap_or_else(|| panic!("cycle {cycle}: a grain at {timestamp} never sent"));
            assert!(
                seen.insert(index),
                "cycle {cycle}: flow {k} grain {index} read twice"
            );
            match fates.get(&index) {
                None => panic!("cycle {cycle}: flow {k} grain {index} is present, never sent"),
                Some(Fate::Absent) => {
                    panic!("cycle {cycle}: flow {k} grain {index} is present, only part sent")
                }
                Some(_) => {}
            }
            let expected = grain(seed, k, index);
            assert!(
                got.same_identity(&expected) && got.payload() == expected.payload(),
                "cycle {cycle}: flow {k} grain {index} is not the grain sent \
                 ({} payload bytes, {} sent)",
                got.payload().len(),
                expected.payload().len()
            );
            if fates.insert(index, Fate::Durable) == Some(Fate::Unknown) {
                recovered += 1;
            }
        }
        let indices: Vec<u64> = stored
            .iter()
            .map(|g| index_of(g.origin_timestamp()).expect("checked"))
            .collect();
        assert!(
            indices.windows(2).all(|w| w[0] < w[1]),
            "cycle {cycle}: flow {k} grains out of order"
        );
        let lost: Vec<u64> = fates
            .iter()
            .filter(|&(i, fate)| *fate == Fate::Durable && !seen.contains(i))
            .map(|(&i, _)| i)
            .collect();
        assert!(
            lost.is_empty(),
            "cycle {cycle}: flow {k} lost {} durable grains, first {:?}",
            lost.len(),
            &lost[..lost.len().min(10)]
        );
        // The flow's timerange agrees with its grains, in the listing too.
        let expected_range = match (indices.first(), indices.last()) {
            (Some(&first), Some(&last)) => {
                TimeRange::new(Bound::Inclusive(at(first)), Bound::Exclusive(at(last + 1)))
            }
            _ => TimeRange::empty(),
        };
        assert_eq!(
            listed["timerange"],
            expected_range.to_string(),
            "cycle {cycle}: flow {k}"
        );
        present += stored.len() as u64;
    }
    (present, recovered)
}

/// The tests of this file restart servers on ports chosen while they were free: one at
/// a time, so that neither can take the other's port between a kill and the restart
/// (and have the other's checks answered by the wrong server).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn acknowledged_grains_survive_sigkill_over_http() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let seed = seed();
    eprintln!("http crash test seed: {seed} (set {SEED_VAR} to replay)");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(crash_loop(seed));
}

async fn crash_loop(seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let port = free_port();
    let mut rng = SplitMix(seed);
    let ledger: Ledger = Arc::new(Mutex::new(vec![BTreeMap::new(); FLOWS]));
    let mut clients: Vec<Client> = (0..CLIENTS)
        .map(|c| Client {
            k: c % FLOWS,
            slot: (c / FLOWS) as u64,
            stride: (CLIENTS / FLOWS) as u64,
            next: 0,
            pending: None,
            rng: SplitMix(seed ^ (c as u64 + 1).wrapping_mul(0x9e37_79b9)),
            requests: 0,
            cut: 0,
        })
        .collect();
    let started = Instant::now();
    let mut server = ServerProcess::spawn(port, &data, &log, STORE_ENV);
    server.ready().await.expect("the server starts");
    create_flows(&server.base, seed, FLOWS).await;
    let mut checked = 0;
    let mut present = 0;
    let mut recovered = 0;
    for cycle in 0..CYCLES {
        let stop = Arc::new(AtomicBool::new(false));
        let running: Vec<_> = clients
            .drain(..)
            .map(|client| {
                tokio::spawn(client.run(seed, server.base.clone(), ledger.clone(), stop.clone()))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.below(20, 600))).await;
        server.kill();
        stop.store(true, Ordering::SeqCst);
        for client in running {
            clients.push(client.await.expect("a client failed"));
        }
        server = ServerProcess::spawn(port, &data, &log, STORE_ENV);
        if let Err(status) = server.ready().await {
            panic!(
                "cycle {cycle}: the server did not restart ({status}):\n{}",
                server.log_tail()
            );
        }
        let format = if cycle % 2 == 0 {
            Format::Gsf
        } else {
            Format::Ndjson
        };
        let (now, found) = verify(&server.base, seed, &ledger, format, cycle).await;
        present = now;
        checked += now;
        recovered += found;
    }
    let requests: u64 = clients.iter().map(|c| c.requests).sum();
    let cut: u64 = clients.iter().map(|c| c.cut).sum();
    let ledger = ledger.lock().unwrap();
    let count = |fate| {
        ledger
            .iter()
            .flat_map(|f| f.values())
            .filter(|&&f| f == fate)
            .count()
    };
    eprintln!(
        "http crash test: {CYCLES} kills in {:.1?}, {requests} requests ({cut} unanswered, \
         {recovered} of their grains found stored), {present} grains stored ({} durable, \
         {} never whole, {} unknown), {checked} grain reads checked",
        started.elapsed(),
        count(Fate::Durable),
        count(Fate::Absent),
        count(Fate::Unknown),
    );
    assert!(present > 0, "nothing was written");
}

/// Sends SIGTERM and waits for the graceful exit, so that the index is closed cleanly.
fn stop_gracefully(server: &mut ServerProcess) {
    let pid = libc::pid_t::try_from(server.child.id()).expect("pid");
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let started = Instant::now();
    loop {
        if let Some(status) = server.child.try_wait().expect("wait") {
            assert!(status.success(), "graceful exit: {status}");
            return;
        }
        assert!(started.elapsed() < PATIENCE, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
}

async fn post_all(base: &str, seed: u64, k: usize, indices: std::ops::Range<u64>) {
    let batch = Batch {
        indices: indices.collect(),
        broken: None,
        format: Format::Ndjson,
    };
    let (flow, _) = flow_ids(seed, k);
    let response = reqwest::Client::new()
        .post(format!("{base}/flows/{flow}/grains"))
        .header("content-type", "application/x-ndjson")
        .body(batch.body(seed, k))
        .send()
        .await
        .expect("POST grains");
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
}

/// Every offset of `needle` in `haystack`.
fn find_all(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(at, _)| at)
        .collect()
}

/// A page of the index damaged on disk while the server is stopped, after a clean stop
/// (redb then trusts the file without checking it) and after a kill (redb repairs it):
/// either way the server refuses to start, names the file, and does not panic.
#[test]
fn damaged_index_page_stops_the_start() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let seed = seed();
    eprintln!("index damage test seed: {seed} (set {SEED_VAR} to replay)");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(damaged_index(seed, true));
    runtime.block_on(damaged_index(seed, false));
}

async fn damaged_index(seed: u64, clean_stop: bool) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let port = free_port();
    let mut server = ServerProcess::spawn(port, &data, &log, STORE_ENV);
    server.ready().await.expect("the server starts");
    create_flows(&server.base, seed, 2).await;
    // Flow 1 is written around flow 0, whose index pages are then damaged.
    post_all(&server.base, seed, 1, 0..300).await;
    post_all(&server.base, seed, 0, 0..1500).await;
    post_all(&server.base, seed, 1, 300..600).await;
    if clean_stop {
        stop_gracefully(&mut server);
    } else {
        server.kill();
    }

    // Every page holding the payload of a small grain of flow 0 (kept in the index) is
    // overwritten: copy-on-write may have left stale copies in free pages, and the live
    // one must be among those hit.
    let index = data.join("index.redb");
    let mut file = std::fs::read(&index).expect("the index file");
    let victim = (700..1500)
        .map(|i| grain(seed, 0, i))
        .find(|g| (200..4096).contains(&g.payload().len()))
        .expect("a small grain");
    let hits = find_all(&file, victim.payload());
    assert!(!hits.is_empty(), "the payload is not in the index file");
    let mut rng = SplitMix(seed);
    for at in &hits {
        let page = at / 4096 * 4096;
        for byte in &mut file[page..page + 4096] {
            *byte = rng.next() as u8;
        }
    }
    std::fs::write(&index, &file).expect("write the damaged index");

    let mut server = ServerProcess::spawn(port, &data, &log, STORE_ENV);
    let status = match server.ready().await {
        Err(status) => status,
        Ok(()) => panic!(
            "the server started on a damaged index ({} page(s) overwritten):\n{}",
            hits.len(),
            server.log_tail()
        ),
    };
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{text}");
    let last = text.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("grainstore: cannot open the store")
            && last.contains(&format!("index {} is damaged", index.display())),
        "the error names the file: {last}"
    );
    assert!(!text.contains("panicked"), "{text}");
}
