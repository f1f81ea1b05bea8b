//! Progress bars for import and export (bytes, grains, rate, ETA), drawn on stderr only
//! when it is a terminal.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress display counting bytes and grains.
pub struct Progress {
    bar: ProgressBar,
    started: Instant,
    bytes: u64,
    grains: u64,
    /// Whether the bar's position counts bytes (else something else, e.g. media time).
    by_bytes: bool,
}

impl Progress {
    /// A bar over `total` bytes (a spinner when the total is unknown); hidden when
    /// `quiet` or when stderr is not a terminal.
    pub fn bytes(total: Option<u64>, quiet: bool) -> Progress {
        let bar = match total {
            Some(total) => ProgressBar::new(total).with_style(style(
                "{spinner} {elapsed_precise} [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg} (eta {eta})",
            )),
            None => ProgressBar::new_spinner().with_style(style(
                "{spinner} {elapsed_precise} {bytes} {binary_bytes_per_sec} {msg}",
            )),
        };
        Progress::new(bar, quiet, true)
    }

    /// A bar over `total` units of media time (milliseconds), for reads whose byte
    /// count is not known in advance; the message carries bytes, grains and rate.
    pub fn media_time(total_ms: Option<u64>, quiet: bool) -> Progress {
        let bar = match total_ms {
            Some(total) => ProgressBar::new(total.max(1)).with_style(style(
                "{spinner} {elapsed_precise} [{wide_bar}] {percent}% {msg} (eta {eta})",
            )),
            None => {
                ProgressBar::new_spinner().with_style(style("{spinner} {elapsed_precise} {msg}"))
            }
        };
        Progress::new(bar, quiet, false)
    }

    fn new(bar: ProgressBar, quiet: bool, by_bytes: bool) -> Progress {
        if quiet || !std::io::stderr().is_terminal() {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress {
            bar,
            started: Instant::now(),
            bytes: 0,
            grains: 0,
            by_bytes,
        }
    }

    /// Counts bytes moved.
    pub fn add_bytes(&mut self, bytes: u64) {
        self.bytes += bytes;
        if self.by_bytes {
            self.bar.inc(bytes);
        }
    }

    /// Counts a grain; `position` moves a media-time bar.
    pub fn add_grain(&mut self, position: Option<u64>) {
        self.grains += 1;
        if let Some(position) = position {
            self.bar.set_position(position);
        }
        if self.grains.is_power_of_two() || self.grains & 63 == 0 {
            self.bar.set_message(self.message());
        }
    }

    fn message(&self) -> String {
        let grains = format!("{} grains", self.grains);
        if self.by_bytes {
            return grains;
        }
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        format!(
            "{grains}, {}, {}/s",
            indicatif::BinaryBytes(self.bytes),
            indicatif::BinaryBytes((self.bytes as f64 / secs) as u64)
        )
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    /// Grains counted.
    pub fn grains(&self) -> u64 {
        self.grains
    }

    /// Bytes counted.
    pub fn bytes_moved(&self) -> u64 {
        self.bytes
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}
