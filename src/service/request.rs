//! What a call carries besides its body, and the body's parts every RPC shares, parsed
//! strictly: the deadline, the request id, key references, algorithms, shapes, page tokens.
//! Nothing here is trusted before it is parsed, and no parse can panic.

use std::time::{Duration, Instant};

use tonic::{Request, Status};

use crate::hsm::{KeyInfo, KeyRef};
use crate::proto;
use crate::wrap::{self, Algorithm, AzureKek, Format};

/// The latest deadline a caller can ask for: `grpc-timeout` is read saturating and capped.
pub(super) const MAX_DEADLINE: Duration = Duration::from_secs(24 * 3600);

/// The call's deadline from `grpc-timeout`, moved earlier by a quarter of the timeout (at
/// most 100 ms): the client's and the transport's own timers answer CANCELLED at the
/// deadline, so this service must answer DEADLINE_EXCEEDED, and have it arrive, first.
/// Read saturating: digits only, any number of them capped at [`MAX_DEADLINE`], so no
/// header can overflow the clock.
pub(super) fn deadline<T>(req: &Request<T>) -> Option<Instant> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 32 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().unwrap_or(u64::MAX);
    let timeout = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    }
    .min(MAX_DEADLINE);
    let margin = (timeout / 4).min(Duration::from_millis(100));
    Instant::now().checked_add(timeout - margin)
}

/// `x-request-id` if it is short printable text, else a fresh random id.
pub(super) fn request_id<T>(req: &Request<T>) -> String {
    if let Some(v) = req
        .metadata()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        && !v.is_empty()
        && v.len() <= 64
        && v.bytes().all(|b| b.is_ascii_graphic())
    {
        return v.to_string();
    }
    fresh_request_id()
}

/// A fresh request id: 16 hex digits, a keyed hash (std's SipHash, its key drawn from the
/// operating system once per process) of a per-process counter. Ids do not repeat within a
/// process (short of 2^32 of them), cannot be guessed from one another, and cost no system
/// call (a getrandom(2) per call showed in the profile; BENCHMARKS.md, "The daemon's own
/// CPU per call").
fn fresh_request_id() -> String {
    use std::hash::BuildHasher;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static IDS: OnceLock<(std::collections::hash_map::RandomState, AtomicU64)> = OnceLock::new();
    let (key, counter) = IDS.get_or_init(Default::default);
    let n = counter.fetch_add(1, Ordering::Relaxed);
    crate::wrap::hex(&key.hash_one(n).to_be_bytes())
}

pub(super) fn key_ref(k: Option<&proto::KeyRef>) -> Result<KeyRef, Status> {
    match k.and_then(|k| k.key.as_ref()) {
        Some(proto::key_ref::Key::Label(l)) => KeyRef::label(l)
            .map_err(|why| Status::invalid_argument(format!("source_key.label: {why}"))),
        Some(proto::key_ref::Key::IdHex(h)) => KeyRef::id_hex(h)
            .map_err(|why| Status::invalid_argument(format!("source_key.id_hex: {why}"))),
        Some(proto::key_ref::Key::Pkcs11Uri(u)) => KeyRef::uri(u)
            .map_err(|why| Status::invalid_argument(format!("source_key.pkcs11_uri: {why}"))),
        None => Err(Status::invalid_argument(
            "source_key: give a label, an id_hex or a pkcs11_uri",
        )),
    }
}

pub(super) fn algorithm(v: i32) -> Result<Algorithm, Status> {
    match proto::WrappingAlgorithm::try_from(v) {
        Ok(proto::WrappingAlgorithm::Unspecified | proto::WrappingAlgorithm::RsaOaepAesSha256) => {
            Ok(Algorithm::RsaOaepAesSha256)
        }
        Ok(proto::WrappingAlgorithm::RsaOaepSha256) => Ok(Algorithm::RsaOaepSha256),
        Err(_) => Err(Status::invalid_argument(format!(
            "algorithm {v} is not a WrappingAlgorithm"
        ))),
    }
}

pub(super) fn proto_algorithm(a: Algorithm) -> proto::WrappingAlgorithm {
    match a {
        Algorithm::RsaOaepAesSha256 => proto::WrappingAlgorithm::RsaOaepAesSha256,
        Algorithm::RsaOaepSha256 => proto::WrappingAlgorithm::RsaOaepSha256,
    }
}

/// The format a WrapKey asks for: `format` when set (`algorithm` must then be UNSPECIFIED
/// or OCI's name for the same format), else OCI's format for `algorithm`.
pub(super) fn format(name: &str, alg: i32) -> Result<&'static Format, Status> {
    let unspecified = alg == proto::WrappingAlgorithm::Unspecified as i32;
    let alg = if unspecified {
        None
    } else {
        Some(algorithm(alg)?)
    };
    Format::resolve(Some(name).filter(|n| !n.is_empty()), alg)
        .map_err(|e| Status::invalid_argument(format!("format: {e}")))
}

/// The key-exchange key an `azure:byok` wrap names (and only it takes one).
pub(super) fn azure_kek(format: &Format, id: &str) -> Result<Option<AzureKek>, Status> {
    format
        .kek(Some(id).filter(|i| !i.is_empty()))
        .map_err(|e| Status::invalid_argument(format!("azure_kek_id: {e}")))
}

pub(super) fn shape(s: wrap::KeyShape) -> proto::KeyShape {
    proto::KeyShape {
        algorithm: s.algorithm.as_str().into(),
        length: s.length as u32,
    }
}

/// Page token: hex of the last key's label and id, so paging is stable when keys come and go.
pub(super) fn page_token(k: &KeyInfo) -> String {
    format!("{}.{}", wrap::hex(k.label.as_bytes()), wrap::hex(&k.id))
}

pub(super) fn parse_page_token(t: &str) -> Result<Option<(String, Vec<u8>)>, Status> {
    if t.is_empty() {
        return Ok(None);
    }
    let bad = || Status::invalid_argument("page_token is not one this service returned");
    let (l, i) = t.split_once('.').ok_or_else(bad)?;
    let label = String::from_utf8(wrap::unhex(l).ok_or_else(bad)?).map_err(|_| bad())?;
    Ok(Some((label, wrap::unhex(i).ok_or_else(bad)?)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn fresh_request_ids_are_16_hex_digits_and_do_not_repeat() {
        let ids: std::collections::HashSet<String> =
            (0..10_000).map(|_| fresh_request_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(
            ids.iter()
                .all(|i| i.len() == 16 && i.bytes().all(|b| b.is_ascii_hexdigit()))
        );
        // A caller's own id is kept; a bad one is replaced.
        let mut r = Request::new(());
        r.metadata_mut()
            .insert("x-request-id", "caller-7".parse().unwrap());
        assert_eq!(request_id(&r), "caller-7");
        r.metadata_mut()
            .insert("x-request-id", "has space".parse().unwrap());
        assert_eq!(request_id(&r).len(), 16);
    }

    #[test]
    fn grpc_timeout_parsing() {
        // 250 ms, answered a quarter early: 187.5 ms left.
        let mut r = Request::new(());
        assert!(deadline(&r).is_none());
        r.metadata_mut()
            .insert("grpc-timeout", "250m".parse().unwrap());
        let d = deadline(&r).unwrap();
        let left = d - Instant::now();
        assert!(
            left <= Duration::from_millis(188) && left > Duration::from_millis(150),
            "{left:?}"
        );
        r.metadata_mut()
            .insert("grpc-timeout", "bogus".parse().unwrap());
        assert!(deadline(&r).is_none());
        // Far past what the clock can add (tonic passes over-long values on): capped at
        // 24 hours, never an overflow.
        for huge in [
            "9999999999999999999S",
            "99999999999999999999999H",
            "18446744073709551615n",
        ] {
            r.metadata_mut()
                .insert("grpc-timeout", huge.parse().unwrap());
            let left = deadline(&r).unwrap() - Instant::now();
            assert!(left <= MAX_DEADLINE, "{huge}: {left:?}");
        }
        for bad in ["+5S", "-5S", "5 S", "S", "5"] {
            r.metadata_mut()
                .insert("grpc-timeout", bad.parse().unwrap());
            assert!(deadline(&r).is_none(), "{bad}");
        }
    }

    #[test]
    fn request_ids() {
        let mut r = Request::new(());
        assert_eq!(request_id(&r).len(), 16);
        r.metadata_mut()
            .insert("x-request-id", "abc-123".parse().unwrap());
        assert_eq!(request_id(&r), "abc-123");
        r.metadata_mut()
            .insert("x-request-id", "has space".parse().unwrap());
        assert_ne!(request_id(&r), "has space");
    }

    #[test]
    fn page_tokens_round_trip() {
        assert_eq!(parse_page_token("").unwrap(), None);
        let t = format!("{}.{}", wrap::hex(b"demo-aes-256"), "0103");
        assert_eq!(
            parse_page_token(&t).unwrap(),
            Some(("demo-aes-256".into(), vec![1, 3]))
        );
        assert_eq!(
            parse_page_token("zz").unwrap_err().code(),
            Code::InvalidArgument
        );
    }
}
