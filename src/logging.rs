//! The service's log output: `log.format` (`pretty` or `json`) and `log.filter`.
//!
//! The pretty format writes fields with [`PlainFields`] when the output is not a
//! terminal (a file, `docker logs`): every request's span is formatted as it is made,
//! on the path of every request, and tracing-subscriber's default field formatter
//! styles each field even with colours off and grows its text a few bytes at a time.

use std::fmt::{self, Write};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

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

/// `name=value` fields separated by spaces, values by `Debug`, the message without its
/// name: the default formatter's text without its styling. The fields are written to a
/// stack buffer first and handed over in one piece, so that the span's text is
/// allocated once.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainFields;

impl<'w> FormatFields<'w> for PlainFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = PlainVisitor {
            text: Text::default(),
            first: true,
        };
        fields.record(&mut visitor);
        writer.write_str(visitor.text.as_str())
    }
}

struct PlainVisitor {
    text: Text,
    first: bool,
}

impl Visit for PlainVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if !self.first {
            let _ = self.text.write_char(' ');
        }
        self.first = false;
        if field.name() != "message" {
            let _ = self.text.write_str(field.name());
            let _ = self.text.write_char('=');
        }
        let _ = write!(self.text, "{value:?}");
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
}

impl Write for Text {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if let Some(text) = &mut self.spilled {
            text.push_str(s);
            return Ok(());
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Formats the fields of one event with [`PlainFields`].
    fn plain(event: impl FnOnce()) -> String {
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
            .with_level(false)
            .fmt_fields(PlainFields)
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, event);
        let bytes = sink.0.lock().expect("sink").clone();
        String::from_utf8(bytes).expect("utf-8")
    }

    #[test]
    fn fields_are_name_value_pairs_after_the_message() {
        let text = plain(|| {
            let span = tracing::info_span!("request", request_id = %"r-1", path = %"/flows");
            let _entered = span.enter();
            tracing::info!(status = 200, reason = "all \"fine\"", "finished");
        });
        assert_eq!(
            text.trim_end(),
            r#"request{request_id=r-1 path=/flows}: finished status=200 reason="all \"fine\"""#
        );
    }

    #[test]
    fn fields_longer_than_the_buffer_are_written_whole() {
        let long = "x".repeat(2000);
        let text = plain(|| tracing::info!(first = 1, long = %long, last = 2, "big"));
        assert_eq!(text.trim_end(), format!("big first=1 long={long} last=2"));
    }
}
