//! The service's log output: `log.format` (`pretty` or `json`) and `log.filter`.
//!
//! The pretty format writes fields with [`PlainFields`] when the output is not a
//! terminal (a file, `docker logs`): every request's span is formatted as it is made,
//! on the path of every request, and tracing-subscriber's default field formatter grows
//! its text a few bytes at a time.

use std::fmt::{self, Write};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};

use crate::config::{Config, LogFormat};

/// Installs the global subscriber: `RUST_LOG` if set, else `log.filter`; colours only
/// for a terminal.
pub fn init(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.filter));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty if ansi => builder.init(),
        LogFormat::Pretty => builder.fmt_fields(PlainFields).init(),
    }
}

/// tracing-subscriber's default field formatting without colours, written to a stack
/// buffer first and handed over in one piece, so that a span's text is allocated once
/// instead of grown a few bytes at a time.
///
/// A plain `name=value` field is written here directly; a message, an error or a raw
/// identifier goes through tracing-subscriber's own `DefaultVisitor` (its escaping of
/// control characters, its list of error sources), and `log.*` fields are left out as it
/// leaves them out. A test holds the output equal to the default formatter's.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainFields;

impl<'w> FormatFields<'w> for PlainFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = PlainVisitor {
            text: Text::default(),
            is_empty: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result?;
        writer.write_str(visitor.text.as_str())
    }
}

/// Writes fields as `DefaultVisitor` does without colours.
struct PlainVisitor {
    text: Text,
    /// Nothing written yet: no separating space before the next field.
    is_empty: bool,
    result: fmt::Result,
}

impl PlainVisitor {
    /// One field through tracing-subscriber's own visitor.
    fn delegate(&mut self, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        let mut visitor = DefaultVisitor::new(Writer::new(&mut self.text), self.is_empty);
        record(&mut visitor);
        self.result = visitor.finish();
        // As `DefaultVisitor` itself: any field it does not skip counts as written, even
        // when its text is empty (an empty message).
        self.is_empty = false;
    }
}

impl Visit for PlainVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        if field.name() == "message" {
            self.delegate(|v| v.record_str(field, value));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        self.delegate(|v| v.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        if name == "message" || name.starts_with("r#") {
            self.delegate(|v| v.record_debug(field, value));
            return;
        }
        if name.starts_with("log.") {
            return;
        }
        if !std::mem::take(&mut self.is_empty) {
            self.text.push(" ");
        }
        self.text.push(name);
        self.text.push("=");
        self.result = write!(self.text, "{value:?}");
    }
}

/// Text in a stack buffer, moved to the heap if it outgrows it.
struct Text {
    buf: [u8; 512],
    len: usize,
    spilled: Option<String>,
}

impl Default for Text {
    fn default() -> Text {
        Text {
            buf: [0; 512],
            len: 0,
            spilled: None,
        }
    }
}

impl Text {
    fn as_str(&self) -> &str {
        match &self.spilled {
            Some(text) => text,
            // Only whole `str`s are ever copied in.
            None => std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default(),
        }
    }

    fn push(&mut self, s: &str) {
        if let Some(text) = &mut self.spilled {
            text.push_str(s);
            return;
        }
        match self.buf.get_mut(self.len..self.len + s.len()) {
            Some(room) => {
                room.copy_from_slice(s.as_bytes());
                self.len += s.len();
            }
            None => {
                let mut text = String::with_capacity(2 * (self.len + s.len()));
                text.push_str(std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default());
                text.push_str(s);
                self.spilled = Some(text);
            }
        }
    }
}

impl Write for Text {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push(s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Formats one event (and its spans) with `fields`, without colours.
    fn render<F>(fields: F, event: impl FnOnce()) -> String
    where
        F: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("sink").extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let out = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .fmt_fields(fields)
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, event);
        let bytes = sink.0.lock().expect("sink").clone();
        String::from_utf8(bytes).expect("utf-8")
    }

    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("outer")
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    /// Spans with fields recorded late, `Display` and `Debug` values, a client's text
    /// with quotes, braces and an escape character, an error with a source, `log.*`
    /// fields and fields longer than the stack buffer.
    fn events() {
        let span = tracing::info_span!(
            "request",
            request_id = "x} principal=forged",
            method = %"GET",
            principal = tracing::field::Empty,
        );
        span.record("principal", "token:reader");
        let _entered = span.enter();
        let error = Outer(std::io::Error::other("inner"));
        tracing::warn!(
            status = 500,
            reason = "all \"fine\" \u{1b}[31m",
            error = &error as &dyn std::error::Error,
            log.target = "tokio_postgres",
            r#type = "raw \u{1b}",
            count = 3u64,
            delta = -4i64,
            flag = true,
            ratio = 0.5f64,
            "finished \u{1b}[2J"
        );
        tracing::info!(a = 1, "");
        tracing::info!(message = "", b = 2);
        tracing::info_span!("quiet", message = "", c = 3).in_scope(|| tracing::info!("in it"));
        let inner = tracing::info_span!("inner", log.module_path = "m", r#ok = 1, after = "a");
        inner.in_scope(|| {
            tracing::info!(error = &std::io::Error::other("alone") as &dyn std::error::Error)
        });
        let long = "x".repeat(2000);
        tracing::info!(first = 1, long = %long, last = 2, "big");
    }

    #[test]
    fn plain_fields_write_what_the_default_formatter_writes() {
        let plain = render(PlainFields, events);
        let default = render(
            tracing_subscriber::fmt::format::DefaultFields::new(),
            events,
        );
        assert_eq!(plain, default);
        assert!(
            plain.contains(r#"request_id="x} principal=forged""#),
            "{plain}"
        );
        assert!(!plain.contains('\u{1b}'), "{plain}");
        assert!(!plain.contains("log.target"), "{plain}");
        assert!(plain.contains(&"x".repeat(2000)), "{plain}");
    }
}
