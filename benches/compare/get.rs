//! Single-grain GET: grainstore's `GET /flows/{id}/grains/{timestamp}` (raw payload with
//! `Grain-*` headers) against a bare axum handler answering the same bytes.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::BodyExt;

use crate::Plan;
use crate::fixtures::{
    Grainstore, GsfWriter, SMALL_BYTES, at, payload, small_grain, start_bare_axum,
};
use crate::http::{self, Conn};
use crate::proc::wait_for_port;
use crate::report::{Meter, Report, Spent, verdict};

/// Keep-alive connections issuing requests back to back.
const CONNECTIONS: usize = 8;
/// Distinct grains the GETs cycle over.
const GRAINS: u64 = 100;

pub async fn run(plan: &Plan, dir: &Path, grainstore: &Grainstore, report: &mut Report) {
    println!(
        "\nsingle-grain GET, {CONNECTIONS} keep-alive connections, {} s each",
        plan.secs
    );
    let data = payload(SMALL_BYTES, 4);
    let (flow, source) = grainstore.create_flow("audio").await;
    let grains: Vec<_> = (0..GRAINS)
        .map(|i| small_grain(flow, source, i, 1000, data.clone()))
        .collect();
    let mut conn = Conn::open(grainstore.port).await;
    let (status, _) = conn
        .fetch(
            "POST",
            &format!("/flows/{flow}/grains"),
            &[("content-type", "application/x-gsf")],
            http::full(GsfWriter::body(flow, &grains)),
        )
        .await;
    assert_eq!(status, 201);
    let paths: Arc<Vec<String>> = Arc::new(
        (0..GRAINS)
            .map(|i| format!("/flows/{flow}/grains/{}", at(i, 1000)))
            .collect(),
    );
    // The peers answer the same body: check it once, and keep grainstore's headers.
    let response = conn.send("GET", &paths[0], &[], http::empty()).await;
    let head: Vec<(String, String)> = response
        .headers()
        .iter()
        .filter(|(k, _)| *k != "date" && *k != "content-length")
        .map(|(k, v)| (k.to_string(), v.to_str().expect("ASCII header").to_string()))
        .collect();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(body, data);
    let content_type = head
        .iter()
        .filter(|(k, _)| k == "content-type")
        .cloned()
        .collect::<Vec<_>>();

    let (gs_rate, gs) = hammer(grainstore.port, grainstore.server.pid, &paths, plan.secs).await;
    let gs_us = gs.cpu / (gs_rate * gs.wall.as_secs_f64()) * 1e6;
    let work = format!("GET one {SMALL_BYTES} B grain, {CONNECTIONS} connections");
    let cpu_us = |rate: f64, spent: &Spent| spent.cpu / (rate * spent.wall.as_secs_f64()) * 1e6;
    // Two bare handlers: one answers the whole response grainstore does (its headers
    // made once at start), the target's peer; one only the body and its content type.
    let peers = [
        ("bare axum handler, same response bytes", &head, true),
        ("bare axum handler, same body only", &content_type, false),
    ];
    let mut rows = Vec::new();
    let mut vs = ("—".to_string(), String::new());
    for (name, headers, target) in peers {
        if !plan.with("axum") {
            break;
        }
        let (server, port) = start_bare_axum(dir, data.clone(), headers);
        wait_for_port(port, "bare axum").await;
        let (rate, spent) = hammer(port, server.pid, &paths, plan.secs).await;
        drop(server);
        let us = cpu_us(rate, &spent);
        if target {
            vs = (
                format!(
                    "{:.2}x bare axum req/s, {:.2}x its CPU/req",
                    gs_rate / rate,
                    gs_us / us
                ),
                verdict(gs_rate / rate >= 0.7, "≥ 0.7x bare axum"),
            );
        }
        let versus = if target {
            "peer".to_string()
        } else {
            format!("grainstore at {:.2}x its req/s", gs_rate / rate)
        };
        rows.push((
            name,
            format!("{rate:.0} req/s"),
            format!("{us:.1} CPU-µs/req"),
            versus,
        ));
    }
    report.row(
        &work,
        "grainstore",
        format!("{gs_rate:.0} req/s"),
        format!("{gs_us:.1} CPU-µs/req"),
        vs.0,
        vs.1,
    );
    for (name, rate, us, versus) in rows {
        report.row(&work, name, rate, us, versus, String::new());
    }
}

/// GETs from `CONNECTIONS` connections for `secs`: requests per second and the server's
/// spend.
async fn hammer(port: u16, pid: u32, paths: &Arc<Vec<String>>, secs: u64) -> (f64, Spent) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut conns = Vec::new();
    for _ in 0..CONNECTIONS {
        conns.push(Conn::open(port).await);
    }
    let meter = Meter::start(pid);
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(c, mut conn)| {
            let (stop, done, paths) = (stop.clone(), done.clone(), paths.clone());
            tokio::spawn(async move {
                let mut i = c;
                while !stop.load(Ordering::Relaxed) {
                    let response = conn
                        .send("GET", &paths[i % paths.len()], &[], http::empty())
                        .await;
                    assert_eq!(response.status(), 200);
                    http::drain(response).await;
                    done.fetch_add(1, Ordering::Relaxed);
                    i += CONNECTIONS;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("GET task");
    }
    let spent = meter.stop();
    (
        done.load(Ordering::Relaxed) as f64 / spent.wall.as_secs_f64(),
        spent,
    )
}
