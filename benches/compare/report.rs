//! Measuring a server over a piece of work, and the table the comparison prints.

use std::time::{Duration, Instant};

use crate::proc::ProcStat;

/// A server's counters from the start of a piece of work.
pub struct Meter {
    pid: u32,
    before: ProcStat,
    start: Instant,
}

/// What a server spent on a piece of work.
#[derive(Clone, Copy, Debug)]
pub struct Spent {
    pub wall: Duration,
    /// Server CPU seconds (utime + stime).
    pub cpu: f64,
}

impl Meter {
    pub fn start(pid: u32) -> Meter {
        Meter {
            pid,
            before: ProcStat::of(pid),
            start: Instant::now(),
        }
    }

    pub fn stop(self) -> Spent {
        let wall = self.start.elapsed();
        let after = ProcStat::of(self.pid);
        Spent {
            wall,
            cpu: after.cpu - self.before.cpu,
        }
    }
}

/// One line of the table.
pub struct Row {
    pub work: String,
    pub system: String,
    pub rate: String,
    pub cpu: String,
    pub ratio: String,
    pub target: String,
}

/// The table, printed line by line as figures come and whole at the end.
#[derive(Default)]
pub struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Report {
    pub fn row(
        &mut self,
        work: &str,
        system: &str,
        rate: String,
        cpu: String,
        ratio: String,
        target: String,
    ) {
        let row = Row {
            work: work.into(),
            system: system.into(),
            rate,
            cpu,
            ratio,
            target,
        };
        println!("  {}", line(&row));
        self.rows.push(row);
    }

    pub fn note(&mut self, note: String) {
        println!("  note: {note}");
        self.notes.push(note);
    }

    pub fn print(&self) {
        println!();
        println!("| work | system | throughput | server CPU | vs peer (same run) | target |");
        println!("| --- | --- | --- | --- | --- | --- |");
        for row in &self.rows {
            println!("{}", line(row));
        }
        if !self.notes.is_empty() {
            println!();
            for note in &self.notes {
                println!("- {note}");
            }
        }
    }
}

fn line(row: &Row) -> String {
    format!(
        "| {} | {} | {} | {} | {} | {} |",
        row.work, row.system, row.rate, row.cpu, row.ratio, row.target
    )
}

/// "met"/"MISSED" for a target check.
pub fn verdict(met: bool, what: &str) -> String {
    if met {
        format!("{what}: met")
    } else {
        format!("{what}: **missed**")
    }
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// Latency percentiles of signed nanosecond samples: (p50, p99, max) in ms.
pub fn percentiles(samples: &mut [i64]) -> (f64, f64, f64) {
    if samples.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    samples.sort_unstable();
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize] as f64 / 1e6;
    (at(0.5), at(0.99), at(1.0))
}
