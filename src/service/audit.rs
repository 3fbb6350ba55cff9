//! The audit log: one JSON line per export attempt (WrapKey, ImportKeyVersion, ImportKey),
//! allowed or refused, written before the answer goes out. Never key material.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

enum Sink {
    File(File),
    Stderr,
}

pub struct Audit {
    sink: Mutex<Sink>,
}

/// One export attempt.
#[derive(Debug, Default, Serialize)]
pub struct Record {
    pub time: String,
    pub request_id: String,
    /// The caller's configured name and certificate CN, or why it is unknown.
    pub caller: String,
    pub operation: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_key_label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_key_id_hex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wrapping_key_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oci_key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<&'static str>,
    /// "allowed" (material returned), "refused" or "failed".
    pub outcome: &'static str,
    /// The gRPC status code name.
    pub code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Audit {
    /// Opens `path` for appending (created with mode 0600), or stderr for "-".
    pub fn open(path: &Path) -> Result<Audit, String> {
        let sink = if path == Path::new("-") {
            Sink::Stderr
        } else {
            Sink::File(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| format!("audit log {}: {e}", path.display()))?,
            )
        };
        Ok(Audit {
            sink: Mutex::new(sink),
        })
    }

    /// Writes one record as a JSON line and flushes it to the kernel. An error here must
    /// stop the export (fail closed).
    pub fn write(&self, record: &Record) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        match &mut *self.sink.lock().unwrap_or_else(|p| p.into_inner()) {
            Sink::File(f) => {
                f.write_all(&line)?;
                f.flush()
            }
            Sink::Stderr => {
                let mut e = std::io::stderr().lock();
                e.write_all(&line)?;
                e.flush()
            }
        }
    }
}

/// Now, as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs() as i64, d.subsec_millis())
}

fn rfc3339(secs: i64, millis: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(1_798_761_599, 999), "2026-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(1_389_000_000, 0), "2014-01-06T09:20:00.000Z");
    }

    #[test]
    fn records_are_json_lines_in_a_0600_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let a = Audit::open(&path).unwrap();
        let r = Record {
            request_id: "r1".into(),
            operation: "WrapKey",
            outcome: "refused",
            code: "PERMISSION_DENIED",
            ..Record::default()
        };
        a.write(&r).unwrap();
        a.write(&r).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(v["code"], "PERMISSION_DENIED");
        assert!(v.get("wrapping_key_sha256").is_none());
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
