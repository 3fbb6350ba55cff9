//! Checks an incoming request's AWS Signature Version 4 as the service does: the
//! `Authorization: AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/aws4_request,
//! SignedHeaders=..., Signature=...` header names the known access key and this region and
//! service; `host` and `x-amz-date` are signed; the scope's date is `x-amz-date`'s; the
//! clock skew is at most 15 minutes; a session token, when one is configured, is the one
//! sent; `x-amz-content-sha256`, when present, is the body's hash; and the signature,
//! recomputed over the canonical request, matches in constant time. Errors carry the
//! `__type` and the wording AWS answers with.

use std::time::{Duration, SystemTime};

use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;

use super::Request;
use super::protocol::AwsError;

/// Clock skew AWS tolerates.
const MAX_SKEW: Duration = Duration::from_secs(15 * 60);
const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Whose signatures are accepted, for which region and service.
pub struct Credentials<'a> {
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    /// When set, `X-Amz-Security-Token` must be exactly this.
    pub session_token: Option<&'a str>,
    pub region: &'a str,
    pub service: &'a str,
}

impl Request<'_> {
    /// All values of header `name`, trimmed with inner runs of spaces collapsed, joined
    /// with commas (the canonical form); `None` if it was not sent.
    fn canonical_value(&self, name: &str) -> Option<String> {
        let values: Vec<String> = self
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }
}

fn hex_sha256(b: &[u8]) -> String {
    hsm_bridge::wrap::hex(&openssl::sha::sha256(b))
}

fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let run = || -> Result<Vec<u8>, openssl::error::ErrorStack> {
        let k = PKey::hmac(key)?;
        let mut s = Signer::new(MessageDigest::sha256(), &k)?;
        s.sign_oneshot_to_vec(msg)
    };
    run().unwrap_or_default()
}

/// RFC 3986 encoding of one path segment (unreserved characters kept).
fn uri_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The canonical URI: each segment of the path as sent, encoded once more (services other
/// than S3 sign the path double-encoded); `/` for an empty path.
fn canonical_uri(path: &str) -> String {
    if path.is_empty() || path == "/" {
        return "/".into();
    }
    path.split('/')
        .map(uri_encode)
        .collect::<Vec<_>>()
        .join("/")
}

/// The canonical query string: `key=value` pairs as sent, sorted by key, then value.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(&str, &str)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The canonical request over `signed` (lowercase, sorted) headers.
pub fn canonical_request(req: &Request<'_>, signed: &[&str], payload_hash: &str) -> String {
    let headers: String = signed
        .iter()
        .map(|h| format!("{h}:{}\n", req.canonical_value(h).unwrap_or_default()))
        .collect();
    format!(
        "{}\n{}\n{}\n{headers}\n{}\n{payload_hash}",
        req.method,
        canonical_uri(req.path),
        canonical_query(req.query),
        signed.join(";")
    )
}

/// The hex signature of `canonical` for `amz_date` (`YYYYMMDDTHHMMSSZ`) and its scope.
pub fn signature(
    secret: &str,
    amz_date: &str,
    region: &str,
    service: &str,
    canonical: &str,
) -> String {
    let date = &amz_date[..amz_date.len().min(8)];
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex_sha256(canonical.as_bytes())
    );
    let mut key = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    for part in [region, service, "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    hsm_bridge::wrap::hex(&hmac(&key, to_sign.as_bytes()))
}

/// The `Authorization` header a client with `creds` would send for `req` at `amz_date`,
/// signing every header `req` has (for tests that make signed requests).
pub fn authorization(creds: &Credentials<'_>, req: &Request<'_>, amz_date: &str) -> String {
    let mut signed: Vec<&str> = req.headers.iter().map(|(n, _)| n.as_str()).collect();
    signed.sort_unstable();
    signed.dedup();
    let canonical = canonical_request(req, &signed, &hex_sha256(req.body));
    format!(
        "{ALGORITHM} Credential={}/{}/{}/{}/aws4_request, SignedHeaders={}, Signature={}",
        creds.access_key_id,
        &amz_date[..8],
        creds.region,
        creds.service,
        signed.join(";"),
        signature(
            creds.secret_access_key,
            amz_date,
            creds.region,
            creds.service,
            &canonical
        )
    )
}

/// `YYYYMMDDTHHMMSSZ` as a time.
pub fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    if !s[..8]
        .bytes()
        .chain(s[9..15].bytes())
        .all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let month: usize = s[4..6].parse().ok()?;
    let name = MONTHS.get(month.checked_sub(1)?)?;
    hsm_bridge::time::parse_http_date(&format!(
        "Xxx, {} {name} {} {}:{}:{} GMT",
        &s[6..8],
        &s[..4],
        &s[9..11],
        &s[11..13],
        &s[13..15]
    ))
}

/// `t` as `YYYYMMDDTHHMMSSZ`.
pub fn amz_date(t: SystemTime) -> String {
    let r = hsm_bridge::time::rfc3339(t);
    format!(
        "{}{}{}T{}{}{}Z",
        &r[..4],
        &r[5..7],
        &r[8..10],
        &r[11..13],
        &r[14..16],
        &r[17..19]
    )
}

/// The parsed `Authorization` header.
struct Authorization<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    terminator: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn incomplete(why: &str, header: &str) -> AwsError {
    AwsError::new(
        "IncompleteSignatureException",
        format!("{why} Authorization={header}"),
    )
}

fn parse_authorization(v: &str) -> Result<Authorization<'_>, AwsError> {
    let rest = v
        .strip_prefix(ALGORITHM)
        .filter(|r| r.starts_with(' '))
        .ok_or_else(|| {
            incomplete(
                "Authorization header requires 'AWS4-HMAC-SHA256' as the algorithm.",
                v,
            )
        })?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        match part.split_once('=') {
            Some(("Credential", c)) => credential = Some(c),
            Some(("SignedHeaders", s)) => signed = Some(s),
            Some(("Signature", s)) => signature = Some(s),
            _ => {
                return Err(incomplete(
                    &format!(
                        "Authorization header requires each component to be of the form key=value; '{part}' is not."
                    ),
                    v,
                ));
            }
        }
    }
    let missing: Vec<String> = [
        ("Credential", credential.is_none()),
        ("Signature", signature.is_none()),
        ("SignedHeaders", signed.is_none()),
    ]
    .iter()
    .filter(|(_, m)| *m)
    .map(|(n, _)| format!("Authorization header requires '{n}' parameter."))
    .collect();
    if !missing.is_empty() {
        return Err(incomplete(&missing.join(" "), v));
    }
    let credential = credential.unwrap_or_default();
    let parts: Vec<&str> = credential.split('/').collect();
    let [access_key_id, date, region, service, terminator] = parts[..] else {
        return Err(incomplete(
            &format!(
                "Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, got '{credential}'."
            ),
            v,
        ));
    };
    Ok(Authorization {
        access_key_id,
        date,
        region,
        service,
        terminator,
        signed_headers: signed.unwrap_or_default().split(';').collect(),
        signature: signature.unwrap_or_default(),
    })
}

fn invalid(message: impl Into<String>) -> AwsError {
    AwsError::new("InvalidSignatureException", message)
}

/// Checks `req`'s signature against `creds` at time `now`.
pub fn verify(creds: &Credentials<'_>, req: &Request<'_>, now: SystemTime) -> Result<(), AwsError> {
    let Some(header) = req.header("authorization") else {
        return Err(AwsError::new(
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        ));
    };
    let auth = parse_authorization(header)?;
    let amz = req.header("x-amz-date").ok_or_else(|| {
        incomplete(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
            header,
        )
    })?;
    let sent_at = parse_amz_date(amz).ok_or_else(|| {
        incomplete(
            &format!("X-Amz-Date '{amz}' is not YYYYMMDD'T'HHMMSS'Z'."),
            header,
        )
    })?;
    if auth.date != &amz[..8] {
        return Err(invalid(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}', from '{amz}'.",
            auth.date,
            &amz[..8]
        )));
    }
    if auth.region != creds.region {
        return Err(invalid(format!(
            "Credential should be scoped to a valid region, not '{}'. ",
            auth.region
        )));
    }
    if auth.service != creds.service {
        return Err(invalid(format!(
            "Credential should be scoped to correct service: '{}'. ",
            creds.service
        )));
    }
    if auth.terminator != "aws4_request" {
        return Err(invalid(format!(
            "Credential should be scoped with a valid terminator: 'aws4_request', not '{}'. ",
            auth.terminator
        )));
    }
    check_skew(amz, sent_at, now)?;
    if auth.access_key_id != creds.access_key_id {
        return Err(unrecognized());
    }
    if req.header("x-amz-security-token") != creds.session_token {
        return Err(unrecognized());
    }
    check_signed_headers(req, &auth)?;
    let body_hash = hex_sha256(req.body);
    if req
        .header("x-amz-content-sha256")
        .is_some_and(|h| h != body_hash)
    {
        return Err(invalid(
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
        ));
    }
    let canonical = canonical_request(req, &auth.signed_headers, &body_hash);
    let expected = signature(
        creds.secret_access_key,
        amz,
        creds.region,
        creds.service,
        &canonical,
    );
    if auth.signature.len() != expected.len()
        || !openssl::memcmp::eq(auth.signature.as_bytes(), expected.as_bytes())
    {
        return Err(invalid(
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
        ));
    }
    Ok(())
}

fn unrecognized() -> AwsError {
    AwsError::new(
        "UnrecognizedClientException",
        "The security token included in the request is invalid.",
    )
}

fn check_skew(amz: &str, sent_at: SystemTime, now: SystemTime) -> Result<(), AwsError> {
    if sent_at + MAX_SKEW < now {
        return Err(invalid(format!(
            "Signature expired: {amz} is now earlier than {} ({} - 15 min.)",
            amz_date(now - MAX_SKEW),
            amz_date(now)
        )));
    }
    if sent_at > now + MAX_SKEW {
        return Err(invalid(format!(
            "Signature not yet current: {amz} is still later than {} ({} + 15 min.)",
            amz_date(now + MAX_SKEW),
            amz_date(now)
        )));
    }
    Ok(())
}

/// The signed-header list is lowercase, sorted, names headers that were sent, and
/// includes `host` and `x-amz-date` (and the session token when there is one).
fn check_signed_headers(req: &Request<'_>, auth: &Authorization<'_>) -> Result<(), AwsError> {
    let list = &auth.signed_headers;
    if list
        .iter()
        .any(|h| h.is_empty() || *h != h.to_ascii_lowercase())
        || list.windows(2).any(|w| w[0] >= w[1])
    {
        return Err(invalid(format!(
            "SignedHeaders '{}' must be lowercase header names, sorted, each once.",
            list.join(";")
        )));
    }
    for must in ["host", "x-amz-date", "x-amz-security-token"] {
        if req.header(must).is_some() && !list.contains(&must) {
            return Err(invalid(format!(
                "'{must}' must be a 'SignedHeader' in the AWS Authorization."
            )));
        }
    }
    if req.header("host").is_none() {
        return Err(invalid(
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
        ));
    }
    if let Some(h) = list.iter().find(|h| req.header(h).is_none()) {
        return Err(invalid(format!(
            "The request signature names header '{h}', which was not sent."
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.to_string()))
            .collect()
    }

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    fn creds() -> Credentials<'static> {
        Credentials {
            access_key_id: "AKIDEXAMPLE",
            secret_access_key: SECRET,
            session_token: None,
            region: "us-east-1",
            service: "service",
        }
    }

    /// Method, query, headers, body, expected signature.
    type Vector = (
        &'static str,
        &'static str,
        &'static [(&'static str, &'static str)],
        &'static [u8],
        &'static str,
    );

    /// The vectors of AWS's Signature Version 4 test suite (as kept in botocore's
    /// tests/unit/auth/aws4_testsuite): request, signed headers, expected signature.
    #[test]
    fn aws_test_suite_vectors() {
        let cases: [Vector; 5] = [
            (
                "GET",
                "",
                &[
                    ("Host", "example.amazonaws.com"),
                    ("X-Amz-Date", "20150830T123600Z"),
                ],
                b"",
                "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            ),
            (
                "GET",
                "Param2=value2&Param1=value1",
                &[
                    ("Host", "example.amazonaws.com"),
                    ("X-Amz-Date", "20150830T123600Z"),
                ],
                b"",
                "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
            ),
            (
                "GET",
                "",
                &[
                    ("Host", "example.amazonaws.com"),
                    ("My-Header1", " value1"),
                    ("My-Header2", " \"a   b   c\""),
                    ("X-Amz-Date", "20150830T123600Z"),
                ],
                b"",
                "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736",
            ),
            (
                "POST",
                "",
                &[
                    ("Content-Type", "application/x-www-form-urlencoded"),
                    ("Host", "example.amazonaws.com"),
                    ("X-Amz-Date", "20150830T123600Z"),
                ],
                b"Param1=value1",
                "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a",
            ),
            (
                "POST",
                "",
                &[
                    (
                        "Content-Type",
                        "application/x-www-form-urlencoded; charset=utf8",
                    ),
                    ("Host", "example.amazonaws.com"),
                    ("X-Amz-Date", "20150830T123600Z"),
                ],
                b"Param1=value1",
                "1a72ec8f64bd914b0e42e42607c7fbce7fb2c7465f63e3092b3b0d39fa77a6fe",
            ),
        ];
        let at = parse_amz_date("20150830T123600Z").unwrap();
        for (method, query, hs, body, sig) in cases {
            let hs = headers(hs);
            let mut req = Request {
                method,
                path: "/",
                query,
                headers: &hs,
                body,
            };
            let auth = authorization(&creds(), &req, "20150830T123600Z");
            assert!(auth.ends_with(&format!("Signature={sig}")), "{auth}");
            let mut with_auth = hs.clone();
            with_auth.push(("authorization".into(), auth));
            req.headers = &with_auth;
            verify(&creds(), &req, at).unwrap();
            // one byte of the body changed: the signature no longer matches
            let other = [body, b"x"].concat();
            req.body = &other;
            let e = verify(&creds(), &req, at).unwrap_err();
            assert_eq!(e.code, "InvalidSignatureException", "{e:?}");
        }
    }

    #[test]
    fn canonical_request_of_the_suite() {
        let hs = headers(&[
            ("Host", "example.amazonaws.com"),
            ("My-Header1", " value1"),
            ("My-Header2", " \"a   b   c\""),
            ("X-Amz-Date", "20150830T123600Z"),
        ]);
        let req = Request {
            method: "GET",
            path: "/",
            query: "",
            headers: &hs,
            body: b"",
        };
        assert_eq!(
            canonical_request(
                &req,
                &["host", "my-header1", "my-header2", "x-amz-date"],
                &hex_sha256(b"")
            ),
            "GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value1\nmy-header2:\"a b c\"\nx-amz-date:20150830T123600Z\n\nhost;my-header1;my-header2;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    fn signed(extra: &[(&str, &str)], amz: &str, c: &Credentials<'_>) -> Vec<(String, String)> {
        let mut hs = headers(&[("Host", "localhost:8444"), ("X-Amz-Date", amz)]);
        hs.extend(headers(extra));
        let req = Request {
            method: "POST",
            path: "/",
            query: "",
            headers: &hs,
            body: b"{}",
        };
        let auth = authorization(c, &req, amz);
        hs.push(("authorization".into(), auth));
        hs
    }

    fn check(
        hs: &[(String, String)],
        c: &Credentials<'_>,
        now: SystemTime,
    ) -> Result<(), AwsError> {
        verify(
            c,
            &Request {
                method: "POST",
                path: "/",
                query: "",
                headers: hs,
                body: b"{}",
            },
            now,
        )
    }

    #[test]
    fn refusals_carry_aws_error_types() {
        let now = parse_amz_date("20260301T120000Z").unwrap();
        let c = creds();
        let ok = signed(&[], "20260301T120000Z", &c);
        check(&ok, &c, now).unwrap();
        let code = |r: Result<(), AwsError>| r.unwrap_err().code;
        // 16 minutes late, and 16 early
        let e = check(&ok, &c, now + Duration::from_secs(16 * 60)).unwrap_err();
        assert!(
            e.message.starts_with(
                "Signature expired: 20260301T120000Z is now earlier than 20260301T120100Z"
            ),
            "{e:?}"
        );
        let e = check(&ok, &c, now - Duration::from_secs(16 * 60)).unwrap_err();
        assert!(e.message.starts_with("Signature not yet current"), "{e:?}");
        // 14 minutes either way is fine
        check(&ok, &c, now + Duration::from_secs(14 * 60)).unwrap();
        // another access key; another region; another secret
        let other = Credentials {
            access_key_id: "AKIDOTHER",
            ..creds()
        };
        assert_eq!(
            code(check(&signed(&[], "20260301T120000Z", &other), &c, now)),
            "UnrecognizedClientException"
        );
        let other = Credentials {
            region: "eu-west-1",
            ..creds()
        };
        let e = check(&signed(&[], "20260301T120000Z", &other), &c, now).unwrap_err();
        assert!(e.message.contains("valid region, not 'eu-west-1'"), "{e:?}");
        let other = Credentials {
            secret_access_key: "not-the-secret",
            ..creds()
        };
        let e = check(&signed(&[], "20260301T120000Z", &other), &c, now).unwrap_err();
        assert!(
            e.message
                .starts_with("The request signature we calculated does not match"),
            "{e:?}"
        );
        // no Authorization at all
        let bare = headers(&[("Host", "localhost"), ("X-Amz-Date", "20260301T120000Z")]);
        assert_eq!(
            code(check(&bare, &c, now)),
            "MissingAuthenticationTokenException"
        );
        // the scope's date is not x-amz-date's
        let mut hs = signed(&[], "20260301T120000Z", &c);
        hs[1].1 = "20260302T000100Z".into();
        let e = check(&hs, &c, parse_amz_date("20260302T000100Z").unwrap()).unwrap_err();
        assert!(
            e.message
                .starts_with("Date in Credential scope does not match"),
            "{e:?}"
        );
        // a session token: required when configured, refused when not
        let with_token = Credentials {
            session_token: Some("tok"),
            ..creds()
        };
        let hs = signed(
            &[("X-Amz-Security-Token", "tok")],
            "20260301T120000Z",
            &with_token,
        );
        check(&hs, &with_token, now).unwrap();
        assert_eq!(code(check(&hs, &c, now)), "UnrecognizedClientException");
        assert_eq!(
            code(check(&ok, &with_token, now)),
            "UnrecognizedClientException"
        );
        // x-amz-content-sha256 that is not the body's
        let hs = signed(
            &[("X-Amz-Content-Sha256", "UNSIGNED-PAYLOAD")],
            "20260301T120000Z",
            &c,
        );
        let e = check(&hs, &c, now).unwrap_err();
        assert!(e.message.contains("x-amz-content-sha256"), "{e:?}");
    }

    #[test]
    fn host_and_date_must_be_signed() {
        let now = parse_amz_date("20260301T120000Z").unwrap();
        let c = creds();
        let mut hs = signed(&[], "20260301T120000Z", &c);
        let auth = hs
            .pop()
            .unwrap()
            .1
            .replace("SignedHeaders=host;x-amz-date", "SignedHeaders=x-amz-date");
        hs.push(("authorization".into(), auth));
        let e = check(&hs, &c, now).unwrap_err();
        assert_eq!(
            e.message,
            "'host' must be a 'SignedHeader' in the AWS Authorization."
        );
        let mut hs = signed(&[], "20260301T120000Z", &c);
        let auth = hs
            .pop()
            .unwrap()
            .1
            .replace("SignedHeaders=host;x-amz-date", "SignedHeaders=host");
        hs.push(("authorization".into(), auth));
        let e = check(&hs, &c, now).unwrap_err();
        assert_eq!(
            e.message,
            "'x-amz-date' must be a 'SignedHeader' in the AWS Authorization."
        );
    }

    #[test]
    fn amz_dates_round_trip() {
        let t = parse_amz_date("20240229T235959Z").unwrap();
        assert_eq!(amz_date(t), "20240229T235959Z");
        assert!(parse_amz_date("20241301T000000Z").is_none());
        assert!(parse_amz_date("2024-02-29T00:00:00Z").is_none());
    }
}
