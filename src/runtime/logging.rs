//! The node's log: human lines or JSON objects on stderr, one per event,
//! whatever the fields hold.
//!
//! Fields often carry text from outside (a peer's software version, an
//! object key, an error a peer sent). The formatters here are the last
//! line of defence behind the call sites' own [`crate::text::shown`]:
//! every field value is cut to [`LOG_FIELD_MAX`] bytes with its length
//! noted, and in human lines every control character is escaped, so no
//! value can forge a line, reach the terminal as an escape sequence, or
//! grow the log by megabytes a call. JSON already escapes control
//! characters; there values are only cut.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::text::{cut, shown_at_most};

/// Bytes of one field value a log line holds at most.
pub const LOG_FIELD_MAX: usize = 512;

/// The log's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `TIME LEVEL target: message key=value …`, escaped.
    Human,
    /// `{"timestamp":…,"level":…,"fields":{…},"target":…}`.
    Json,
}

/// Installs the global subscriber: events at `default` level and above
/// (or as `RUST_LOG` says) to stderr in `format`.
pub fn init(format: Format, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        Format::Human => builder.fmt_fields(EscapedFields).init(),
        Format::Json => builder.event_format(CappedJson).init(),
    }
}

/// Human field formatting: `message key=value key="text"`, every value
/// escaped and cut.
#[derive(Clone, Copy, Debug, Default)]
pub struct EscapedFields;

impl<'w> FormatFields<'w> for EscapedFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        writer: Writer<'w>,
        fields: R,
    ) -> fmt::Result {
        let mut visitor = HumanVisitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct HumanVisitor<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl HumanVisitor<'_> {
    fn put(&mut self, field: &Field, value: &str, quoted: bool) {
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        let shown = shown_at_most(value, LOG_FIELD_MAX);
        let separator = if self.first { "" } else { " " };
        self.first = false;
        self.result = match (field.name(), quoted) {
            ("message", _) => write!(self.writer, "{separator}{shown}"),
            (name, true) => write!(self.writer, "{separator}{name}={shown:?}"),
            (name, false) => write!(self.writer, "{separator}{name}={shown}"),
        };
    }
}

impl Visit for HumanVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value, true);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, &format!("{value:?}"), false);
    }
}

/// JSON lines with every string value cut to [`LOG_FIELD_MAX`] bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct CappedJson;

impl<S, N> FormatEvent<S, N> for CappedJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let mut fields = JsonVisitor::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let json = |v: serde_json::Value| v.to_string();
        writeln!(
            writer,
            "{{\"timestamp\":{},\"level\":{},\"fields\":{},\"target\":{}}}",
            json(timestamp.into()),
            json(meta.level().as_str().into()),
            json(serde_json::Value::Object(fields.0)),
            json(meta.target().into()),
        )
    }
}

#[derive(Default)]
struct JsonVisitor(serde_json::Map<String, serde_json::Value>);

impl JsonVisitor {
    fn put(&mut self, field: &Field, value: serde_json::Value) {
        if !field.name().starts_with("log.") {
            self.0.insert(field.name().to_owned(), value);
        }
    }
}

impl Visit for JsonVisitor {
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, cut(value, LOG_FIELD_MAX).into_owned().into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        self.put(field, cut(&text, LOG_FIELD_MAX).into_owned().into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer into a shared buffer, for a scoped subscriber.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("buffer").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    const FORGED: &str = "1.0\n2026-12-02T00:00:00Z  INFO dsnode: access granted\x1b[31m";

    fn logged(format: Format) -> String {
        let buffer = Buffer::default();
        let builder = tracing_subscriber::fmt()
            .with_writer(buffer.clone())
            .with_ansi(false);
        let huge = "v".repeat(4 << 20);
        let log = || {
            tracing::info!(version = %FORGED, other = FORGED, "hello from {}", FORGED);
            tracing::warn!(version = %huge, n = 7, "big");
        };
        match format {
            Format::Human => {
                tracing::subscriber::with_default(builder.fmt_fields(EscapedFields).finish(), log);
            }
            Format::Json => {
                tracing::subscriber::with_default(builder.event_format(CappedJson).finish(), log);
            }
        }
        let bytes = buffer.0.lock().expect("buffer").clone();
        String::from_utf8(bytes).expect("utf-8")
    }

    #[test]
    fn a_human_line_cannot_be_forged_coloured_or_flooded() {
        let out = logged(Format::Human);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "one line per event: {out}");
        assert!(!out.contains('\x1b'), "{out}");
        assert!(
            lines[0].contains(
                "version=1.0\\n2026-12-02T00:00:00Z  INFO dsnode: access granted\\u{1b}[31m"
            ),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("other=\"1.0\\n"), "{}", lines[0]);
        assert!(lines[1].len() < LOG_FIELD_MAX + 200, "{}", lines[1].len());
        assert!(lines[1].contains("(4194304 bytes in all)"), "{}", lines[1]);
        assert!(lines[1].contains("n=7"), "{}", lines[1]);
    }

    #[test]
    fn a_json_line_is_valid_capped_and_keeps_types() {
        let out = logged(Format::Json);
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert_eq!(lines[0]["fields"]["version"], FORGED);
        assert_eq!(lines[0]["level"], "INFO");
        assert!(
            lines[0]["timestamp"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z'))
        );
        let big = lines[1]["fields"]["version"].as_str().expect("string");
        assert!(big.len() < LOG_FIELD_MAX + 40, "{}", big.len());
        assert!(big.ends_with("(4194304 bytes in all)"), "{big}");
        assert_eq!(lines[1]["fields"]["n"], 7);
        assert_eq!(lines[1]["fields"]["message"], "big");
    }
}
