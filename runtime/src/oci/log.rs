//! Logging for the OCI commands, as runc does it: to `--log FILE` (appended) or stderr, as
//! text (`time="..." level=error msg="..."`) or JSON lines
//! (`{"level":"error","msg":"...","time":"..."}`). containerd's shim reads the last
//! `error` line of its JSON log to explain a failed command, so every failure is logged
//! at error level before capsa exits.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

use super::cli::LogFormat;

/// Where the lines go.
enum Sink {
    Stderr,
    File(File),
}

/// A tracing layer writing runc-style lines.
pub struct RuncLayer {
    sink: Mutex<Sink>,
    format: LogFormat,
    max: Level,
}

/// Collects an event's message and fields.
#[derive(Default)]
struct Fields {
    msg: String,
    extra: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.msg = value.to_string();
        } else {
            self.extra
                .push((field.name().to_string(), value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.msg = format!("{value:?}");
        } else {
            self.extra
                .push((field.name().to_string(), format!("{value:?}")));
        }
    }
}

/// Seconds since the epoch as RFC 3339 UTC (`2024-01-02T03:04:05.678Z`).
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, dd) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's
/// algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn level_name(l: &Level) -> &'static str {
    match *l {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

/// One formatted line (with its newline).
fn format_line(format: LogFormat, level: &Level, fields: &Fields, time: &str) -> String {
    let mut msg = fields.msg.clone();
    match format {
        LogFormat::Json => {
            let mut obj = serde_json::Map::new();
            obj.insert("level".into(), level_name(level).into());
            obj.insert("msg".into(), msg.into());
            obj.insert("time".into(), time.into());
            for (k, v) in &fields.extra {
                obj.insert(k.clone(), v.clone().into());
            }
            let mut s = serde_json::Value::Object(obj).to_string();
            s.push('\n');
            s
        }
        LogFormat::Text => {
            for (k, v) in &fields.extra {
                let _ = write!(msg, " {k}={v}");
            }
            format!(
                "time=\"{time}\" level={} msg={}\n",
                level_name(level),
                serde_json::Value::from(msg)
            )
        }
    }
}

impl<S: Subscriber> Layer<S> for RuncLayer {
    fn enabled(&self, meta: &tracing::Metadata<'_>, _: Context<'_, S>) -> bool {
        *meta.level() <= self.max
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let line = format_line(
            self.format,
            event.metadata().level(),
            &fields,
            &rfc3339(std::time::SystemTime::now()),
        );
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        // One write per line: concurrent capsa processes append to the same file.
        let _ = match &mut *sink {
            Sink::Stderr => std::io::stderr().write_all(line.as_bytes()),
            Sink::File(f) => f.write_all(line.as_bytes()),
        };
    }
}

/// Installs the global subscriber: `file` (or stderr), `format`, debug or info level.
/// A log file that cannot be opened falls back to stderr, with a note.
pub fn init(file: Option<&Path>, format: LogFormat, debug: bool) {
    let (sink, note) = match file {
        None => (Sink::Stderr, None),
        Some(p) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            Ok(f) => (Sink::File(f), None),
            Err(e) => (
                Sink::Stderr,
                Some(format!("cannot open log file {}: {e}", p.display())),
            ),
        },
    };
    let layer = RuncLayer {
        sink: Mutex::new(sink),
        format,
        max: if debug { Level::DEBUG } else { Level::INFO },
    };
    let _ = tracing_subscriber::registry().with(layer).try_init();
    if let Some(n) = note {
        tracing::warn!("{n}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        let t = std::time::UNIX_EPOCH + std::time::Duration::new(1_704_164_645, 5);
        assert_eq!(rfc3339(t), "2024-01-02T03:04:05.000000005Z");
    }

    #[test]
    fn json_line_is_what_containerd_parses() {
        let f = Fields {
            msg: "container \"x\" does not exist".into(),
            extra: vec![],
        };
        let line = format_line(LogFormat::Json, &Level::ERROR, &f, "T");
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "container \"x\" does not exist");
        assert_eq!(v["time"], "T");
    }

    #[test]
    fn text_line_quotes_the_message() {
        let f = Fields {
            msg: "a \"b\"".into(),
            extra: vec![("id".into(), "c1".into())],
        };
        assert_eq!(
            format_line(LogFormat::Text, &Level::WARN, &f, "T"),
            "time=\"T\" level=warning msg=\"a \\\"b\\\" id=c1\"\n"
        );
    }
}
