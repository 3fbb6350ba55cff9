//! The Azure emulator's rules, driven through its request handler: the challenge, the
//! token endpoint (secret and assertion), tokens' audience and expiry, BYOK imports and
//! each refusal, versions with tags and paging, faults.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private, Public as PublicKey};
use openssl::sign::Signer;
use openssl::x509::X509;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use hsm_bridge::wrap::soft::{OaepHash, kwp_wrap, oaep_encrypt};

use super::protocol::{b64url, b64url_decode};
use super::*;

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT: &str = "0c3b0a4e-5b4a-4c8e-9a61-1f2e3d4c5b6a";
const SECRET: &str = "a-client-secret-for-tests";
const HOST: &str = "localhost:8445";
const BASE: &str = "https://localhost:8445";
const API: &str = "api-version=2025-07-01";

fn rsa(bits: u32) -> PKey<Private> {
    PKey::from_rsa(openssl::rsa::Rsa::generate(bits).unwrap()).unwrap()
}

fn self_signed(key: &PKey<Private>) -> X509 {
    let mut name = openssl::x509::X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "client").unwrap();
    let name = name.build();
    let mut b = openssl::x509::X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(key).unwrap();
    b.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&openssl::asn1::Asn1Time::days_from_now(1).unwrap())
        .unwrap();
    b.sign(key, MessageDigest::sha256()).unwrap();
    b.build()
}

struct Rig {
    kv: AzureKv,
    client_key: PKey<Private>,
    cert: X509,
}

fn rig(managed_hsm: bool) -> Rig {
    let client_key = rsa(2048);
    let cert = self_signed(&client_key);
    let kv = AzureKv::new(Config {
        tenant: TENANT.into(),
        client_id: CLIENT.into(),
        client_secret: Some(Zeroizing::new(SECRET.into())),
        client_cert: Some(cert.clone()),
        managed_hsm,
        token_ttl: Duration::from_secs(3600),
        test_oracle: true,
    });
    Rig {
        kv,
        client_key,
        cert,
    }
}

fn now() -> SystemTime {
    SystemTime::now()
}

/// A reply, or `None` for a dropped connection.
fn send_at(
    kv: &AzureKv,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    at: SystemTime,
) -> Option<Reply> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut hs: Vec<(String, String)> = vec![("host".into(), HOST.into())];
    hs.extend(headers.iter().map(|(n, v)| (n.to_string(), v.to_string())));
    match kv.handle(
        &Request {
            method,
            path,
            query,
            headers: &hs,
            body,
        },
        at,
    ) {
        Outcome::Reply { reply, .. } => Some(reply),
        Outcome::Drop { .. } => None,
    }
}

fn send(kv: &AzureKv, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    send_at(kv, method, target, headers, body, now()).expect("an answer")
}

fn json_of(r: &Reply) -> Value {
    serde_json::from_slice(&r.body).unwrap()
}

fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
}

fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
        .into_bytes()
}

fn token_path() -> String {
    format!("/{TENANT}/oauth2/v2.0/token")
}

fn secret_form(scope: &str, secret: &str) -> Vec<u8> {
    form(&[
        ("grant_type", "client_credentials"),
        ("client_id", CLIENT),
        ("scope", scope),
        ("client_secret", secret),
    ])
}

/// A token for this vault's resource, by client secret.
fn token(kv: &AzureKv) -> String {
    let scope = format!("{}/.default", kv.resource());
    let r = send(kv, "POST", &token_path(), &[], &secret_form(&scope, SECRET));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    json_of(&r)["access_token"].as_str().unwrap().to_string()
}

/// A Key Vault call with a bearer token.
fn call(kv: &AzureKv, token: &str, method: &str, path: &str, body: Value) -> Reply {
    let auth = format!("Bearer {token}");
    let target = if path.contains('?') {
        format!("{path}&{API}")
    } else {
        format!("{path}?{API}")
    };
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    send(kv, method, &target, &[("authorization", &auth)], &body)
}

/// `(status, error.code, error.message)`.
fn err(r: &Reply) -> (u16, String, String) {
    let v = json_of(r);
    (
        r.status,
        v["error"]["code"].as_str().unwrap_or_default().to_string(),
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

fn jwt(key: &PKey<Private>, header: Value, claims: Value) -> String {
    let signed = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let mut s = Signer::new(MessageDigest::sha256(), key).unwrap();
    if header["alg"] == "PS256" {
        s.set_rsa_padding(openssl::rsa::Padding::PKCS1_PSS).unwrap();
        s.set_rsa_mgf1_md(MessageDigest::sha256()).unwrap();
        s.set_rsa_pss_saltlen(openssl::sign::RsaPssSaltlen::DIGEST_LENGTH)
            .unwrap();
    }
    s.update(signed.as_bytes()).unwrap();
    format!("{signed}.{}", b64url(&s.sign_to_vec().unwrap()))
}

fn epoch() -> u64 {
    now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn claims() -> Value {
    json!({"aud": format!("{BASE}/{TENANT}/oauth2/v2.0/token"), "iss": CLIENT, "sub": CLIENT,
           "exp": epoch() + 600, "nbf": epoch(), "jti": "a-jti"})
}

fn x5t(cert: &X509) -> String {
    // standard base64, as the Rust SDK sends it
    openssl::base64::encode_block(&cert.digest(MessageDigest::sha1()).unwrap())
}

fn assertion_form(assertion: &str) -> Vec<u8> {
    form(&[
        ("grant_type", "client_credentials"),
        ("client_id", CLIENT),
        ("scope", "https://vault.azure.net/.default"),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", assertion),
    ])
}

/// `(status, error, error_codes[0])` of a token answer.
fn entra(r: &Reply) -> (u16, String, u64) {
    let v = json_of(r);
    (
        r.status,
        v["error"].as_str().unwrap_or_default().to_string(),
        v["error_codes"][0].as_u64().unwrap_or_default(),
    )
}

#[test]
fn base64url_both_ways() {
    assert_eq!(b64url(b"\xff\xfe"), "__4");
    assert_eq!(b64url_decode("__4").unwrap(), b"\xff\xfe");
    assert_eq!(b64url_decode("__4=").unwrap(), b"\xff\xfe");
    assert!(b64url_decode("//4").is_none());
    assert!(b64url_decode("a").is_none());
}

#[test]
fn requests_without_a_token_are_challenged() {
    for (managed, resource) in [
        (false, "https://vault.azure.net"),
        (true, "https://managedhsm.azure.net"),
    ] {
        let r = rig(managed);
        // the SDKs' first request: no body, no Authorization
        let reply = send(&r.kv, "POST", &format!("/keys/kek/create?{API}"), &[], b"");
        assert_eq!(reply.status, 401);
        assert_eq!(
            header(&reply, "www-authenticate"),
            Some(
                format!(
                    "Bearer authorization=\"https://login.microsoftonline.com/{TENANT}\", resource=\"{resource}\""
                )
                .as_str()
            )
        );
        assert_eq!(
            json_of(&reply),
            json!({"error": {"code": "Unauthorized", "message": "AKV10000: Request is missing a Bearer or PoP token."}})
        );
        assert!(header(&reply, "x-ms-request-id").is_some());
        // an unknown token, and a scheme other than Bearer
        let reply = call(&r.kv, "made-up", "GET", "/keys/kek", Value::Null);
        assert_eq!(reply.status, 401);
        assert!(err(&reply).2.starts_with("AKV10022"));
        let reply = send(
            &r.kv,
            "GET",
            &format!("/keys/kek?{API}"),
            &[("authorization", "Basic eDp5")],
            b"",
        );
        assert_eq!(reply.status, 401);
        let log = r.kv.log();
        assert_eq!(log[0].op.as_deref(), Some("CreateKey"));
        assert!(!log[0].token && log[1].token);
    }
}

#[test]
fn tokens_by_client_secret() {
    let r = rig(false);
    let vault = "https://vault.azure.net/.default";
    let reply = send(
        &r.kv,
        "POST",
        &token_path(),
        &[],
        &secret_form(vault, SECRET),
    );
    assert_eq!(reply.status, 200);
    let v = json_of(&reply);
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(
        (v["expires_in"].clone(), v["ext_expires_in"].clone()),
        (json!(3600), json!(3600))
    );
    let t = v["access_token"].as_str().unwrap();
    assert!(t.len() >= 40);
    assert_eq!(call(&r.kv, t, "GET", "/keys/none", Value::Null).status, 404);
    assert_eq!(r.kv.log()[0].client_auth.as_deref(), Some("secret"));

    type Case = (String, Vec<u8>, (u16, &'static str, u64));
    let cases: Vec<Case> = vec![
        (
            token_path(),
            secret_form(vault, "wrong"),
            (401, "invalid_client", 7000215),
        ),
        (
            token_path(),
            secret_form("https://managedhsm.azure.net/.default", SECRET),
            (400, "invalid_scope", 70011),
        ),
        (
            token_path(),
            secret_form("https://vault.azure.net", SECRET),
            (400, "invalid_scope", 70011),
        ),
        (
            "/another-tenant/oauth2/v2.0/token".into(),
            secret_form(vault, SECRET),
            (400, "invalid_request", 90002),
        ),
        (
            token_path(),
            form(&[
                ("grant_type", "client_credentials"),
                ("client_id", "someone-else"),
                ("scope", vault),
                ("client_secret", SECRET),
            ]),
            (400, "unauthorized_client", 700016),
        ),
        (
            token_path(),
            form(&[
                ("grant_type", "client_credentials"),
                ("client_id", CLIENT),
                ("scope", vault),
            ]),
            (401, "invalid_client", 7000216),
        ),
        (
            token_path(),
            form(&[
                ("grant_type", "password"),
                ("client_id", CLIENT),
                ("scope", vault),
                ("client_secret", SECRET),
            ]),
            (400, "unsupported_grant_type", 70003),
        ),
        (
            token_path(),
            form(&[("grant_type", "client_credentials"), ("client_id", CLIENT)]),
            (400, "invalid_request", 900144),
        ),
    ];
    for (path, body, (status, error, code)) in cases {
        let reply = send(&r.kv, "POST", &path, &[], &body);
        assert_eq!(entra(&reply), (status, error.to_string(), code), "{path}");
        let d = json_of(&reply)["error_description"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(d.starts_with(&format!("AADSTS{code}: ")), "{d}");
    }
    let reply = send(&r.kv, "GET", &token_path(), &[], b"");
    assert_eq!(entra(&reply).2, 900561);
    // the discovery document names this host's token endpoint
    let reply = send(
        &r.kv,
        "GET",
        &format!("/{TENANT}/v2.0/.well-known/openid-configuration"),
        &[],
        b"",
    );
    assert_eq!(
        json_of(&reply)["token_endpoint"],
        format!("{BASE}/{TENANT}/oauth2/v2.0/token")
    );
}

#[test]
fn tokens_by_client_assertion() {
    let r = rig(false);
    let good_header = json!({"alg": "RS256", "typ": "JWT", "x5t": x5t(&r.cert)});
    let good = jwt(&r.client_key, good_header.clone(), claims());
    let reply = send(&r.kv, "POST", &token_path(), &[], &assertion_form(&good));
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(r.kv.log()[0].client_auth.as_deref(), Some("assertion"));
    // PS256 with x5t#S256 (base64url), as MSAL signs without a SHA-1 thumbprint
    let sha256_t = b64url(&r.cert.digest(MessageDigest::sha256()).unwrap());
    let ps = jwt(
        &r.client_key,
        json!({"alg": "PS256", "typ": "JWT", "x5t#S256": sha256_t}),
        claims(),
    );
    assert_eq!(
        send(&r.kv, "POST", &token_path(), &[], &assertion_form(&ps)).status,
        200
    );
    // fractional NumericDates (PyJWT writes floats)
    let mut c = claims();
    c["exp"] = json!(epoch() as f64 + 600.5);
    let fractional = jwt(&r.client_key, good_header.clone(), c);
    assert_eq!(
        send(
            &r.kv,
            "POST",
            &token_path(),
            &[],
            &assertion_form(&fractional)
        )
        .status,
        200
    );

    let other_key = rsa(2048);
    let other_cert = self_signed(&other_key);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims();
        f(&mut c);
        jwt(&r.client_key, good_header.clone(), c)
    };
    let cases: Vec<(&str, String, u64)> = vec![
        (
            "another key",
            jwt(&other_key, json!({"alg": "RS256", "typ": "JWT"}), claims()),
            700027,
        ),
        (
            "another certificate's thumbprint",
            jwt(
                &r.client_key,
                json!({"alg": "RS256", "typ": "JWT", "x5t": x5t(&other_cert)}),
                claims(),
            ),
            700027,
        ),
        (
            "HS256",
            jwt(
                &r.client_key,
                json!({"alg": "HS256", "typ": "JWT"}),
                claims(),
            ),
            700027,
        ),
        (
            "audience",
            with(&|c| c["aud"] = json!("https://login.microsoftonline.com/x/oauth2/v2.0/token")),
            700212,
        ),
        (
            "issuer",
            with(&|c| c["iss"] = json!("someone-else")),
            700021,
        ),
        (
            "subject",
            with(&|c| c["sub"] = json!("someone-else")),
            700021,
        ),
        ("expired", with(&|c| c["exp"] = json!(epoch() - 10)), 700024),
        ("no exp", with(&|c| c["exp"] = Value::Null), 700024),
        (
            "not yet",
            with(&|c| c["nbf"] = json!(epoch() + 3600)),
            700024,
        ),
        ("malformed", "a.b".to_string(), 50027),
    ];
    for (what, assertion, code) in cases {
        let reply = send(
            &r.kv,
            "POST",
            &token_path(),
            &[],
            &assertion_form(&assertion),
        );
        assert_eq!(entra(&reply).2, code, "{what}");
    }
    // without --client-cert no assertion is accepted
    let no_cert = AzureKv::new(Config {
        tenant: TENANT.into(),
        client_id: CLIENT.into(),
        client_secret: Some(Zeroizing::new(SECRET.into())),
        client_cert: None,
        managed_hsm: false,
        token_ttl: Duration::from_secs(60),
        test_oracle: false,
    });
    let reply = send(&no_cert, "POST", &token_path(), &[], &assertion_form(&good));
    assert_eq!(entra(&reply).2, 700027);
}

#[test]
fn tokens_are_bound_to_a_resource_and_expire() {
    let r = rig(false);
    r.kv.remember_token(
        "for-the-hsm",
        "https://managedhsm.azure.net",
        now() + Duration::from_secs(60),
    );
    let reply = call(&r.kv, "for-the-hsm", "GET", "/keys/k", Value::Null);
    assert_eq!(reply.status, 401);
    assert!(
        err(&reply).2.contains("Invalid audience"),
        "{:?}",
        err(&reply)
    );
    assert!(header(&reply, "www-authenticate").is_some());
    r.kv.remember_token(
        "old",
        "https://vault.azure.net",
        now() - Duration::from_secs(1),
    );
    let reply = call(&r.kv, "old", "GET", "/keys/k", Value::Null);
    assert_eq!(reply.status, 401);
    assert!(err(&reply).2.contains("expired"));
    // a token issued now is refused once its lifetime is over
    let t = token(&r.kv);
    let later = now() + Duration::from_secs(3601);
    let reply = send_at(
        &r.kv,
        "GET",
        &format!("/keys/k?{API}"),
        &[("authorization", &format!("Bearer {t}"))],
        b"",
        later,
    )
    .unwrap();
    assert_eq!(reply.status, 401);
}

/// A new KEK (through the Key Vault call); its kid and public key.
fn make_kek(kv: &AzureKv, t: &str, name: &str, bits: u32) -> (String, PKey<PublicKey>) {
    let reply = call(
        kv,
        t,
        "POST",
        &format!("/keys/{name}/create"),
        json!({"kty": "RSA-HSM", "key_size": bits, "key_ops": ["import"]}),
    );
    assert_eq!(reply.status, 200, "{:?}", err(&reply));
    let v = json_of(&reply);
    (v["key"]["kid"].as_str().unwrap().to_string(), public_of(&v))
}

fn public_of(bundle: &Value) -> PKey<PublicKey> {
    let n = b64url_decode(bundle["key"]["n"].as_str().unwrap()).unwrap();
    let e = b64url_decode(bundle["key"]["e"].as_str().unwrap()).unwrap();
    let rsa = openssl::rsa::Rsa::from_public_components(
        openssl::bn::BigNum::from_slice(&n).unwrap(),
        openssl::bn::BigNum::from_slice(&e).unwrap(),
    )
    .unwrap();
    PKey::from_rsa(rsa).unwrap()
}

/// The `.byok` file for `target` under the KEK `kid`.
fn byok_with(kid: &str, kek: &PKey<PublicKey>, target: &[u8], hash: OaepHash) -> String {
    let aes = [0x42u8; 32];
    let mut ct = oaep_encrypt(kek, hash, &aes).unwrap();
    ct.extend(kwp_wrap(&aes, target).unwrap());
    let file = json!({
        "schema_version": "1.0.0",
        "header": {"kid": kid, "alg": "dir", "enc": "CKM_RSA_AES_KEY_WRAP"},
        "ciphertext": b64url(&ct),
        "generator": "emulator unit tests",
    });
    b64url(file.to_string().as_bytes())
}

fn byok(kid: &str, kek: &PKey<PublicKey>, target: &[u8]) -> String {
    byok_with(kid, kek, target, OaepHash::Sha1)
}

fn import(kv: &AzureKv, t: &str, name: &str, key: Value, tags: Value) -> Reply {
    call(
        kv,
        t,
        "PUT",
        &format!("/keys/{name}"),
        json!({"key": key, "tags": tags, "Hsm": true}),
    )
}

#[test]
fn a_byok_import_round_trip() {
    let r = rig(false);
    let t = token(&r.kv);
    let (kid, kek) = make_kek(&r.kv, &t, "kek", 2048);
    assert!(kid.starts_with(&format!("{BASE}/keys/kek/")));
    let version = kid.rsplit('/').next().unwrap();
    assert_eq!(version.len(), 32);
    let target = rsa(3072);
    let der = target.private_key_to_pkcs8().unwrap();
    let tags = json!({"source": "hsm-bridge"});
    let key =
        json!({"kty": "RSA-HSM", "key_ops": ["sign", "verify"], "key_hsm": byok(&kid, &kek, &der)});
    let first = import(&r.kv, &t, "target", key.clone(), tags.clone());
    assert_eq!(first.status, 200, "{:?}", err(&first));
    let v = json_of(&first);
    assert_eq!(v["tags"], tags);
    assert_eq!(v["key"]["kty"], "RSA-HSM");
    assert_eq!(v["key"]["key_ops"], json!(["sign", "verify"]));
    assert_eq!(
        b64url_decode(v["key"]["n"].as_str().unwrap()).unwrap(),
        target.rsa().unwrap().n().to_vec()
    );
    assert_eq!(v["attributes"]["recoveryLevel"], "Recoverable+Purgeable");
    assert_eq!(v["attributes"]["enabled"], true);
    let first_kid = v["key"]["kid"].as_str().unwrap().to_string();
    let first_version = first_kid.rsplit('/').next().unwrap().to_string();
    // the oracle holds what was wrapped
    let oracle = send(
        &r.kv,
        "GET",
        &format!("/_emulator/material/target/{first_version}"),
        &[],
        b"",
    );
    assert_eq!(
        json_of(&oracle)["material_hex"],
        hsm_bridge::wrap::hex(&der)
    );
    // the same material and tags again: a new version, as Azure does
    let second = import(&r.kv, &t, "target", key, tags);
    assert_eq!(second.status, 200);
    let second_kid = json_of(&second)["key"]["kid"].as_str().unwrap().to_string();
    assert_ne!(first_kid, second_kid);
    // latest (with and without the trailing slash) and by version
    for path in ["/keys/target", "/keys/target/"] {
        let latest = call(&r.kv, &t, "GET", path, Value::Null);
        assert_eq!(
            json_of(&latest)["key"]["kid"],
            second_kid.as_str(),
            "{path}"
        );
    }
    let old = call(
        &r.kv,
        &t,
        "GET",
        &format!("/keys/target/{first_version}"),
        Value::Null,
    );
    assert_eq!(json_of(&old)["key"]["kid"], first_kid.as_str());
    // an EC P-384 key
    let ec = openssl::ec::EcKey::generate(
        &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::SECP384R1).unwrap(),
    )
    .unwrap();
    let ec_der = PKey::from_ec_key(ec)
        .unwrap()
        .private_key_to_pkcs8()
        .unwrap();
    let reply = import(
        &r.kv,
        &t,
        "ec",
        json!({"kty": "EC-HSM", "crv": "P-384", "key_hsm": byok(&kid, &kek, &ec_der)}),
        Value::Null,
    );
    assert_eq!(reply.status, 200, "{:?}", err(&reply));
    let v = json_of(&reply);
    assert_eq!(
        (v["key"]["crv"].clone(), v["key"]["key_ops"].clone()),
        (json!("P-384"), json!(["sign", "verify"]))
    );
    assert_eq!(
        b64url_decode(v["key"]["x"].as_str().unwrap())
            .unwrap()
            .len(),
        48
    );
    assert!(v.get("tags").is_none());
    // key_hsm with padding is taken too
    let padded = {
        let s = byok(&kid, &kek, &der);
        let pad = (4 - s.len() % 4) % 4;
        format!("{s}{}", "=".repeat(pad))
    };
    let reply = import(
        &r.kv,
        &t,
        "padded",
        json!({"kty": "RSA-HSM", "key_hsm": padded}),
        Value::Null,
    );
    assert_eq!(reply.status, 200, "{:?}", err(&reply));
}

#[test]
fn imports_are_refused_as_key_vault_refuses_them() {
    let r = rig(false);
    let t = token(&r.kv);
    let (kid, kek) = make_kek(&r.kv, &t, "kek", 2048);
    let der = rsa(2048).private_key_to_pkcs8().unwrap();
    // a KEK with more than import, made through the control API
    let bad = send(
        &r.kv,
        "POST",
        "/_emulator/keys",
        &[],
        json!({"name": "bad-kek", "kty": "RSA-HSM", "key_size": 2048, "key_ops": ["import", "wrapKey"]})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(bad.status, 200);
    let bad = json_of(&bad);
    let bad_kid = bad["key"]["kid"].as_str().unwrap().to_string();
    let bad_public = public_of(&bad);
    // a plain RSA key (not import-only) of this vault
    let signing = call(
        &r.kv,
        &t,
        "POST",
        "/keys/signing/create",
        json!({"kty": "RSA-HSM", "key_size": 2048, "key_ops": ["sign"]}),
    );
    let signing_kid = json_of(&signing)["key"]["kid"]
        .as_str()
        .unwrap()
        .to_string();
    let ec_der = PKey::from_ec_key(
        openssl::ec::EcKey::generate(
            &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap(),
        )
        .unwrap(),
    )
    .unwrap()
    .private_key_to_pkcs8()
    .unwrap();
    let unversioned = kid.rsplit_once('/').unwrap().0.to_string();
    let other_vault = kid.replace("localhost:8445", "other.vault.azure.net");
    let rsa_key = |hsm: String| json!({"kty": "RSA-HSM", "key_hsm": hsm});
    let too_many_tags: serde_json::Map<String, Value> =
        (0..16).map(|i| (format!("t{i}"), json!("v"))).collect();
    let cases: Vec<(&str, Value, Value, &str)> = vec![
        (
            "KEK key_ops",
            rsa_key(byok(&bad_kid, &bad_public, &der)),
            Value::Null,
            "must be exactly [\"import\"]",
        ),
        (
            "not a KEK",
            rsa_key(byok(&signing_kid, &kek, &der)),
            Value::Null,
            "must be exactly [\"import\"]",
        ),
        (
            "another vault",
            rsa_key(byok(&other_vault, &kek, &der)),
            Value::Null,
            "is not a key of this key vault",
        ),
        (
            "no version",
            rsa_key(byok(&unversioned, &kek, &der)),
            Value::Null,
            "has no version",
        ),
        (
            "unknown version",
            rsa_key(byok(
                &format!("{unversioned}/{}", "0".repeat(32)),
                &kek,
                &der,
            )),
            Value::Null,
            "was not found",
        ),
        (
            "SHA-256 OAEP",
            rsa_key(byok_with(&kid, &kek, &der, OaepHash::Sha256)),
            Value::Null,
            "RSA-OAEP with SHA-256",
        ),
        (
            "oct-HSM on a key vault",
            json!({"kty": "oct-HSM", "key_hsm": byok(&kid, &kek, &[7u8; 32])}),
            Value::Null,
            "only supported by a Managed HSM",
        ),
        (
            "EC as RSA",
            rsa_key(byok(&kid, &kek, &ec_der)),
            Value::Null,
            "is an EC key; key.kty is RSA-HSM",
        ),
        (
            "RSA as EC",
            json!({"kty": "EC-HSM", "crv": "P-256", "key_hsm": byok(&kid, &kek, &der)}),
            Value::Null,
            "is an RSA key; key.kty is EC-HSM",
        ),
        (
            "crv mismatch",
            json!({"kty": "EC-HSM", "crv": "P-384", "key_hsm": byok(&kid, &kek, &ec_der)}),
            Value::Null,
            "is on P-256; key.crv is P-384",
        ),
        (
            "raw bytes as RSA",
            rsa_key(byok(&kid, &kek, &[1u8; 32])),
            Value::Null,
            "not a DER PKCS#8",
        ),
        (
            "software kty",
            json!({"kty": "RSA", "key_hsm": byok(&kid, &kek, &der)}),
            Value::Null,
            "kty must be RSA-HSM",
        ),
        (
            "key_ops for the kty",
            json!({"kty": "RSA-HSM", "key_ops": ["sign", "derive"], "key_hsm": byok(&kid, &kek, &der)}),
            Value::Null,
            "Invalid key operation",
        ),
        (
            "import on an imported key",
            json!({"kty": "RSA-HSM", "key_ops": ["import"], "key_hsm": byok(&kid, &kek, &der)}),
            Value::Null,
            "cannot have the key operation 'import'",
        ),
        (
            "too many tags",
            rsa_key(byok(&kid, &kek, &der)),
            Value::Object(too_many_tags),
            "at most 15 tags",
        ),
        (
            "long tag value",
            rsa_key(byok(&kid, &kek, &der)),
            json!({"t": "v".repeat(257)}),
            "over 256 characters",
        ),
        (
            "not base64url",
            rsa_key("not/base64+".into()),
            Value::Null,
            "not base64url",
        ),
        (
            "no key_hsm",
            json!({"kty": "RSA-HSM", "n": "AQAB", "e": "AQAB"}),
            Value::Null,
            "key_hsm",
        ),
    ];
    for (what, key, tags, says) in cases {
        let reply = import(&r.kv, &t, "target", key, tags);
        let (status, code, message) = err(&reply);
        assert_eq!(
            (status, code.as_str()),
            (400, "BadParameter"),
            "{what}: {message}"
        );
        assert!(message.contains(says), "{what}: {message}");
    }
    // a truncated ciphertext and a wrong header
    let file = |ct: &[u8], enc: &str| {
        b64url(
            json!({"schema_version": "1.0.0", "header": {"kid": kid, "alg": "dir", "enc": enc},
                   "ciphertext": b64url(ct), "generator": "t"})
            .to_string()
            .as_bytes(),
        )
    };
    let mut ct = oaep_encrypt(&kek, OaepHash::Sha1, &[1u8; 32]).unwrap();
    ct.extend(kwp_wrap(&[1u8; 32], &der).unwrap());
    for (what, hsm, says) in [
        (
            "truncated",
            file(&ct[..ct.len() - 8], "CKM_RSA_AES_KEY_WRAP"),
            "does not unwrap",
        ),
        (
            "RSA part only",
            file(&ct[..256], "CKM_RSA_AES_KEY_WRAP"),
            "must be 256 bytes of RSA-OAEP",
        ),
        ("enc", file(&ct, "RSA-OAEP"), "enc \"CKM_RSA_AES_KEY_WRAP\""),
    ] {
        let (status, _, message) = err(&import(&r.kv, &t, "target", rsa_key(hsm), Value::Null));
        assert_eq!(status, 400, "{what}");
        assert!(message.contains(says), "{what}: {message}");
    }
    // creating a KEK with import and another operation is refused too
    let reply = call(
        &r.kv,
        &t,
        "POST",
        "/keys/kek2/create",
        json!({"kty": "RSA-HSM", "key_size": 2048, "key_ops": ["import", "wrapKey"]}),
    );
    assert!(err(&reply).2.contains("mutually exclusive"));
    assert_eq!(
        err(&call(
            &r.kv,
            &t,
            "POST",
            "/keys/k/create",
            json!({"kty": "oct-HSM"})
        ))
        .0,
        400
    );
    // nothing was imported under "target"
    assert_eq!(
        call(&r.kv, &t, "GET", "/keys/target", Value::Null).status,
        404
    );
}

#[test]
fn a_managed_hsm_takes_aes_keys() {
    let r = rig(true);
    let t = token(&r.kv);
    let (kid, kek) = make_kek(&r.kv, &t, "kek", 3072);
    for n in [16usize, 24, 32] {
        let aes = vec![n as u8; n];
        let reply = import(
            &r.kv,
            &t,
            "aes",
            json!({"kty": "oct-HSM", "key_ops": ["wrapKey", "unwrapKey"], "key_hsm": byok(&kid, &kek, &aes)}),
            json!({"bits": (n * 8).to_string()}),
        );
        assert_eq!(reply.status, 200, "{:?}", err(&reply));
        let v = json_of(&reply);
        assert_eq!(v["key"]["kty"], "oct-HSM");
        assert!(v["key"].get("n").is_none() && v["key"].get("k").is_none());
        let version = v["key"]["kid"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_string();
        let oracle = send(
            &r.kv,
            "GET",
            &format!("/_emulator/material/aes/{version}"),
            &[],
            b"",
        );
        assert_eq!(
            json_of(&oracle)["material_hex"],
            hsm_bridge::wrap::hex(&aes)
        );
    }
    let reply = import(
        &r.kv,
        &t,
        "aes",
        json!({"kty": "oct-HSM", "key_hsm": byok(&kid, &kek, &[1u8; 20])}),
        Value::Null,
    );
    assert!(err(&reply).2.contains("20 bytes"));
    // a token for the key vault resource is not for the HSM
    let reply = send(
        &r.kv,
        "POST",
        &token_path(),
        &[],
        &secret_form("https://vault.azure.net/.default", SECRET),
    );
    assert_eq!(entra(&reply).1, "invalid_scope");
    // software key types are not kept
    let reply = call(
        &r.kv,
        &t,
        "POST",
        "/keys/soft/create",
        json!({"kty": "RSA"}),
    );
    assert_eq!(err(&reply).0, 400);
}

#[test]
fn versions_are_listed_in_pages_with_their_tags() {
    let r = rig(false);
    let t = token(&r.kv);
    for i in 0..5 {
        let reply = call(
            &r.kv,
            &t,
            "POST",
            "/keys/k/create",
            json!({"kty": "EC-HSM", "crv": "P-256", "tags": {"i": i.to_string()}}),
        );
        assert_eq!(reply.status, 200, "{:?}", err(&reply));
    }
    let mut seen = Vec::new();
    let mut path = "/keys/k/versions?maxresults=2".to_string();
    let mut pages = 0;
    loop {
        let reply = call(&r.kv, &t, "GET", &path, Value::Null);
        assert_eq!(reply.status, 200, "{:?}", err(&reply));
        let v = json_of(&reply);
        pages += 1;
        for item in v["value"].as_array().unwrap() {
            assert!(
                item["kid"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{BASE}/keys/k/"))
            );
            seen.push(item["tags"]["i"].as_str().unwrap().to_string());
        }
        match v["nextLink"].as_str() {
            None => break,
            Some(next) => {
                let rest = next.strip_prefix(BASE).unwrap();
                assert!(rest.contains("$skiptoken=") && rest.contains(API), "{next}");
                // the SDKs resend the link with their own api-version
                path = rest.replace(&format!("{API}&"), "");
            }
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ["0", "1", "2", "3", "4"]);
    // the default page is 25; more is refused, as is a forged skip token
    let v = json_of(&call(&r.kv, &t, "GET", "/keys/k/versions", Value::Null));
    assert_eq!(v["value"].as_array().unwrap().len(), 5);
    assert!(v["nextLink"].is_null());
    assert_eq!(
        err(&call(
            &r.kv,
            &t,
            "GET",
            "/keys/k/versions?maxresults=26",
            Value::Null
        ))
        .0,
        400
    );
    assert_eq!(
        err(&call(
            &r.kv,
            &t,
            "GET",
            "/keys/k/versions?$skiptoken=abc",
            Value::Null
        ))
        .0,
        400
    );
    assert_eq!(
        err(&call(&r.kv, &t, "GET", "/keys/none/versions", Value::Null)).1,
        "KeyNotFound"
    );
}

#[test]
fn routes_names_and_api_versions() {
    let r = rig(false);
    let t = token(&r.kv);
    let auth = format!("Bearer {t}");
    // no api-version
    let reply = send(&r.kv, "GET", "/keys/k", &[("authorization", &auth)], b"");
    assert_eq!(err(&reply).1, "BadParameter");
    // a name Key Vault refuses
    assert_eq!(
        err(&call(&r.kv, &t, "GET", "/keys/bad_name", Value::Null)).0,
        400
    );
    let long = "a".repeat(128);
    assert_eq!(
        err(&call(
            &r.kv,
            &t,
            "POST",
            &format!("/keys/{long}/create"),
            json!({"kty": "RSA-HSM"})
        ))
        .0,
        400
    );
    // a route the emulator does not serve, and a body that is not JSON
    assert_eq!(
        err(&call(&r.kv, &t, "DELETE", "/keys/k", Value::Null)).0,
        404
    );
    let reply = send(
        &r.kv,
        "PUT",
        &format!("/keys/k?{API}"),
        &[("authorization", &auth)],
        b"{not json",
    );
    assert_eq!(err(&reply).1, "BadParameter");
    let names = send(&r.kv, "GET", "/_emulator/keys", &[], b"");
    assert_eq!(json_of(&names), json!([]));
}

#[test]
fn faults() {
    let r = rig(false);
    let t = token(&r.kv);
    make_kek(&r.kv, &t, "kek", 2048);
    r.kv.add_fault(
        serde_json::from_value(json!({"op": "GetKey", "name": "kek", "status": 429, "count": 2}))
            .unwrap(),
    );
    // another name is not matched
    assert_eq!(
        call(&r.kv, &t, "GET", "/keys/other", Value::Null).status,
        404
    );
    for _ in 0..2 {
        let reply = call(&r.kv, &t, "GET", "/keys/kek", Value::Null);
        assert_eq!(err(&reply).0, 429);
        assert_eq!(err(&reply).1, "Throttled");
    }
    assert_eq!(call(&r.kv, &t, "GET", "/keys/kek", Value::Null).status, 200);
    // a challenge for another resource, even with a good token
    let add = |v: Value| {
        let reply = send(
            &r.kv,
            "POST",
            "/_emulator/faults",
            &[],
            v.to_string().as_bytes(),
        );
        assert_eq!(reply.status, 200);
    };
    add(json!({"op": "GetKey", "challenge_resource": "https://evil.example"}));
    let reply = call(&r.kv, &t, "GET", "/keys/kek", Value::Null);
    assert_eq!(reply.status, 401);
    assert_eq!(
        header(&reply, "www-authenticate"),
        Some(
            format!(
                "Bearer authorization=\"https://login.microsoftonline.com/{TENANT}\", resource=\"https://evil.example\""
            )
            .as_str()
        )
    );
    // a raw body, a token endpoint fault
    add(json!({"op": "Token", "raw_body": "<html>", "status": 502}));
    let reply = send(
        &r.kv,
        "POST",
        &token_path(),
        &[],
        &secret_form("https://vault.azure.net/.default", SECRET),
    );
    assert_eq!(
        (reply.status, reply.body.as_slice()),
        (502, b"<html>".as_slice())
    );
    // dropped; and handled, then dropped: the key exists afterwards
    add(json!([{"op": "CreateKey", "name": "lost", "drop": true},
               {"op": "CreateKey", "name": "made", "drop": true, "processed": true}]));
    for name in ["lost", "made"] {
        let target = format!("/keys/{name}/create?{API}");
        let auth = format!("Bearer {t}");
        let out = send_at(
            &r.kv,
            "POST",
            &target,
            &[("authorization", &auth)],
            json!({"kty": "EC-HSM"}).to_string().as_bytes(),
            now(),
        );
        assert!(out.is_none(), "{name}");
    }
    assert_eq!(
        call(&r.kv, &t, "GET", "/keys/lost", Value::Null).status,
        404
    );
    let made = json_of(&call(&r.kv, &t, "GET", "/keys/made", Value::Null));
    let made = made["key"]["kid"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    // the log names the version made although its answer was lost
    let entry =
        r.kv.log()
            .into_iter()
            .rev()
            .find(|e| e.name.as_deref() == Some("made") && e.fault);
    assert_eq!(entry.unwrap().version.as_deref(), Some(made.as_str()));
    // a delay with nothing else: handled, answered late
    r.kv.add_fault(serde_json::from_value(json!({"op": "GetKey", "delay_ms": 5})).unwrap());
    let auth = format!("Bearer {t}");
    let path = format!("/keys/kek?{API}");
    let hs = [
        ("host".to_string(), HOST.to_string()),
        ("authorization".to_string(), auth),
    ];
    match r.kv.handle(
        &Request {
            method: "GET",
            path: "/keys/kek",
            query: API,
            headers: &hs,
            body: b"",
        },
        now(),
    ) {
        Outcome::Reply { reply, delay } => {
            assert_eq!(
                (reply.status, delay),
                (200, Duration::from_millis(5)),
                "{path}"
            );
        }
        Outcome::Drop { .. } => panic!("dropped"),
    }
    // cleared
    add(json!({"op": "GetKey", "status": 500}));
    assert_eq!(
        send(&r.kv, "DELETE", "/_emulator/faults", &[], b"").status,
        200
    );
    assert_eq!(call(&r.kv, &t, "GET", "/keys/kek", Value::Null).status, 200);
    // the log: faults marked, no token values or secrets in it
    let log = send(&r.kv, "GET", "/_emulator/requests", &[], b"");
    let text = String::from_utf8(log.body).unwrap();
    assert!(!text.contains(&t) && !text.contains(SECRET));
    let log: Vec<Value> = serde_json::from_str(&text).unwrap();
    let faulted: Vec<(&str, &str)> = log
        .iter()
        .filter(|e| e["fault"] == true)
        .map(|e| (e["op"].as_str().unwrap(), e["code"].as_str().unwrap_or("-")))
        .collect();
    assert_eq!(
        faulted,
        [
            ("GetKey", "Throttled"),
            ("GetKey", "Throttled"),
            ("GetKey", "Unauthorized"),
            ("Token", "-"),
            ("CreateKey", "(connection dropped)"),
            ("CreateKey", "(handled; answer dropped)"),
            ("GetKey", "-"),
        ]
    );
    // the control API's view of a key
    let report = json_of(&send(&r.kv, "GET", "/_emulator/keys/kek", &[], b""));
    assert_eq!(report["versions"][0]["key_ops"], json!(["import"]));
    assert_eq!(report["versions"][0]["imported"], false);
}
