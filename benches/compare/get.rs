//! Single-grain GET: grainstore's `GET /flows/{id}/grains/{timestamp}` (raw payload with
//! `Grain-*` headers) against a bare axum handler answering the same bytes.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

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
    // Both answer the same body: check it once.
    let (_, body) = conn.fetch("GET", &paths[0], &[], http::empty()).await;
    assert_eq!(body, data);

    let (gs_rate, gs) = hammer(grainstore.port, grainstore.server.pid, &paths, plan.secs).await;
    let gs_us = gs.cpu / (gs_rate * gs.wall.as_secs_f64()) * 1e6;
    let bare = if plan.with("axum") {
        let (server, port) = start_bare_axum(dir, data.clone());
        wait_for_port(port, "bare axum").await;
        let result = hammer(port, server.pid, &paths, plan.secs).await;
        drop(server);
        Some(result)
    } else {
        None
    };
    let work = format!("GET one {SMALL_BYTES} B grain, {CONNECTIONS} connections");
    let (vs, target) = match &bare {
        Some((rate, spent)) => {
            let us = spent.cpu / (rate * spent.wall.as_secs_f64()) * 1e6;
            (
                format!(
                    "{:.2}x bare axum req/s, {:.2}x its CPU/req",
                    gs_rate / rate,
                    gs_us / us
                ),
                verdict(gs_rate / rate >= 0.7, "≥ 0.7x bare axum"),
            )
        }
        None => ("—".into(), String::new()),
    };
    report.row(
        &work,
        "grainstore",
        format!("{gs_rate:.0} req/s"),
        format!("{gs_us:.1} CPU-µs/req"),
        vs,
        target,
    );
    if let Some((rate, spent)) = bare {
        report.row(
            &work,
            "bare axum handler, same bytes",
            format!("{rate:.0} req/s"),
            format!(
                "{:.1} CPU-µs/req",
                spent.cpu / (rate * spent.wall.as_secs_f64()) * 1e6
            ),
            "peer".into(),
            String::new(),
        );
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
