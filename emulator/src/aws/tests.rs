//! The AWS emulator's rules, driven through its operations and its request handler: the
//! unwraps, material checks, import and rotation rules, signatures, faults.

use std::time::{Duration, SystemTime};

use openssl::cipher::Cipher;
use openssl::cipher_ctx::CipherCtx;
use openssl::pkey::{PKey, Public};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use hsm_bridge::wrap::soft::{OaepHash, kwp_wrap, oaep_encrypt};

use super::keys::Spec;
use super::protocol::AwsError;
use super::unwrap::{Wrap, check_material, kwp_unwrap, unwrap};
use super::*;

const TTL: Duration = Duration::from_secs(3600);

fn kms() -> AwsKms {
    AwsKms::new(Config {
        region: "us-east-1".into(),
        account: "111122223333".into(),
        access_key_id: "AKIDTEST".into(),
        secret_access_key: Zeroizing::new("secret-for-tests".into()),
        session_token: None,
        import_token_ttl: TTL,
        test_oracle: true,
    })
}

fn now() -> SystemTime {
    SystemTime::now()
}

fn call(k: &AwsKms, op: &str, body: Value) -> Result<Value, AwsError> {
    k.op(op, body.as_object().unwrap(), now())
}

fn code(r: Result<Value, AwsError>) -> String {
    r.unwrap_err().code
}

fn kwp_wrap_any(kek: &[u8], plain: &[u8]) -> Vec<u8> {
    let cipher = match kek.len() {
        16 => Cipher::aes_128_wrap_pad(),
        24 => Cipher::aes_192_wrap_pad(),
        _ => Cipher::aes_256_wrap_pad(),
    };
    let mut ctx = CipherCtx::new().unwrap();
    ctx.encrypt_init(Some(cipher), Some(kek), None).unwrap();
    let mut out = vec![0u8; plain.len() + 32];
    let n = ctx.cipher_update(plain, Some(&mut out)).unwrap();
    let m = ctx.cipher_final(&mut out[n..]).unwrap();
    out.truncate(n + m);
    out
}

fn rsa_aes(public: &PKey<Public>, hash: OaepHash, kek: &[u8], plain: &[u8]) -> Vec<u8> {
    let mut out = oaep_encrypt(public, hash, kek).unwrap();
    out.extend(kwp_wrap_any(kek, plain));
    out
}

#[test]
fn rfc5649_vectors_unwrap() {
    let kek = hsm_bridge::wrap::unhex("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8").unwrap();
    let ct =
        hsm_bridge::wrap::unhex("138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a")
            .unwrap();
    assert_eq!(
        hsm_bridge::wrap::hex(&kwp_unwrap(&kek, &ct).unwrap()),
        "c37b7e6492584340bed12207808941155068f738"
    );
    let ct = hsm_bridge::wrap::unhex("afbeb0f07dfbf5419200f2ccb50bb24f").unwrap();
    assert_eq!(
        hsm_bridge::wrap::hex(&kwp_unwrap(&kek, &ct).unwrap()),
        "466f7250617369"
    );
    let mut bad = ct.clone();
    bad[3] ^= 1;
    assert!(kwp_unwrap(&kek, &bad).is_err());
    assert!(
        kwp_unwrap(&kek[..20], &ct)
            .unwrap_err()
            .contains("20 bytes")
    );
}

#[test]
fn unwraps_open_what_each_algorithm_makes() {
    let wk = PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
    let public = PKey::public_key_from_der(&wk.public_key_to_der().unwrap()).unwrap();
    let aes = [0x5au8; 32];
    for hash in [OaepHash::Sha1, OaepHash::Sha256] {
        let blob = oaep_encrypt(&public, hash, &aes).unwrap();
        assert_eq!(&unwrap(&wk, Wrap::Oaep(hash), &blob).unwrap()[..], &aes);
        // the other hash does not open it
        assert!(unwrap(&wk, Wrap::Oaep(hash.other()), &blob).is_err());
        // AES-128, -192 and -256 transport keys
        let p8 = wk.private_key_to_pkcs8().unwrap();
        for kek_len in [16, 24, 32] {
            let kek = vec![0x11u8; kek_len];
            let blob = rsa_aes(&public, hash, &kek, &p8);
            assert_eq!(
                &unwrap(&wk, Wrap::RsaAes(hash), &blob).unwrap()[..],
                &p8[..]
            );
        }
        let blob = rsa_aes(&public, hash, &[7u8; 32], &p8);
        assert!(unwrap(&wk, Wrap::RsaAes(hash.other()), &blob).is_err());
        let e = unwrap(&wk, Wrap::RsaAes(hash), &blob[..256]).unwrap_err();
        assert!(e.contains("needs 256 bytes of RSA-OAEP"), "{e}");
        let e = unwrap(&wk, Wrap::RsaAes(hash), &blob[..blob.len() - 8]).unwrap_err();
        assert!(e.contains("does not unwrap"), "{e}");
        // hsm-bridge's own envelope (AES-256 + RFC 5649) is RSA_AES_KEY_WRAP
        let mut env = oaep_encrypt(&public, hash, &[9u8; 32]).unwrap();
        env.extend(kwp_wrap(&[9u8; 32], &aes).unwrap());
        assert_eq!(&unwrap(&wk, Wrap::RsaAes(hash), &env).unwrap()[..], &aes);
    }
}

#[test]
fn material_is_checked_against_the_key_spec() {
    assert!(check_material(Spec::Symmetric, &[0; 32]).is_ok());
    let e = check_material(Spec::Symmetric, &[0; 16]).unwrap_err();
    assert!(e.contains("16 bytes"), "{e}");
    assert!(check_material(Spec::Hmac(224), &[0; 28]).is_ok());
    assert!(check_material(Spec::Hmac(224), &[0; 27]).is_err());
    assert!(check_material(Spec::Hmac(256), &[0; 64]).is_ok());
    assert!(check_material(Spec::Hmac(256), &[0; 65]).is_err());
    assert!(check_material(Spec::Hmac(384), &[0; 128]).is_ok());
    assert!(check_material(Spec::Hmac(512), &[0; 63]).is_err());
    let rsa = PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
    let p8 = rsa.private_key_to_pkcs8().unwrap();
    assert!(check_material(Spec::Rsa(2048), &p8).is_ok());
    let e = check_material(Spec::Rsa(3072), &p8).unwrap_err();
    assert!(e.contains("2048 bits"), "{e}");
    let mut trailing = p8.clone();
    trailing.push(0);
    let e = check_material(Spec::Rsa(2048), &trailing).unwrap_err();
    assert!(e.contains("1 bytes after its DER"), "{e}");
    assert!(check_material(Spec::Ecc(256), &p8).is_err());
    let g = openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::SECP384R1).unwrap();
    let ec = PKey::from_ec_key(openssl::ec::EcKey::generate(&g).unwrap()).unwrap();
    let ec8 = ec.private_key_to_pkcs8().unwrap();
    assert!(check_material(Spec::Ecc(384), &ec8).is_ok());
    let e = check_material(Spec::Ecc(256), &ec8).unwrap_err();
    assert!(e.contains("curve of ECC_NIST_P256"), "{e}");
    assert!(check_material(Spec::Rsa(2048), &ec8).is_err());
    assert!(check_material(Spec::Rsa(2048), &[0x30, 0x03, 1, 2, 3]).is_err());
}

/// An EXTERNAL key of `spec` and `usage`; its key id.
fn external_key(k: &AwsKms, spec: &str, usage: &str) -> String {
    let v = call(
        k,
        "CreateKey",
        json!({"KeySpec": spec, "KeyUsage": usage, "Origin": "EXTERNAL"}),
    )
    .unwrap();
    assert_eq!(v["KeyMetadata"]["KeyState"], "PendingImport");
    assert_eq!(v["KeyMetadata"]["Enabled"], false);
    v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string()
}

/// GetParametersForImport: (token, public key).
fn params(k: &AwsKms, key: &str, alg: &str, spec: &str) -> (String, PKey<Public>) {
    let v = call(
        k,
        "GetParametersForImport",
        json!({"KeyId": key, "WrappingAlgorithm": alg, "WrappingKeySpec": spec}),
    )
    .unwrap();
    let der = openssl::base64::decode_block(v["PublicKey"].as_str().unwrap()).unwrap();
    (
        v["ImportToken"].as_str().unwrap().to_string(),
        PKey::public_key_from_der(&der).unwrap(),
    )
}

/// Imports `material` (direct OAEP-SHA-256) with `extra` members.
fn import(k: &AwsKms, key: &str, material: &[u8], extra: Value) -> Result<Value, AwsError> {
    let (token, public) = params(k, key, "RSAES_OAEP_SHA_256", "RSA_2048");
    let blob = oaep_encrypt(&public, OaepHash::Sha256, material).unwrap();
    let mut body = json!({
        "KeyId": key,
        "ImportToken": token,
        "EncryptedKeyMaterial": openssl::base64::encode_block(&blob),
        "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE",
    });
    for (n, v) in extra.as_object().unwrap() {
        body[n] = v.clone();
    }
    call(k, "ImportKeyMaterial", body)
}

fn rotations(k: &AwsKms, key: &str, include: &str) -> Vec<Value> {
    call(
        k,
        "ListKeyRotations",
        json!({"KeyId": key, "IncludeKeyMaterial": include}),
    )
    .unwrap()["Rotations"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn symmetric_import_reimport_and_rotation() {
    let k = kms();
    let key = external_key(&k, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT");
    let arn = format!("arn:aws:kms:us-east-1:111122223333:key/{key}");
    let first = [1u8; 32];
    let v = import(&k, &key, &first, json!({})).unwrap();
    assert_eq!(v["KeyId"], arn);
    let first_id = v["KeyMaterialId"].as_str().unwrap().to_string();
    assert_eq!(first_id, keys::material_id(&arn, &first));
    let meta = &call(&k, "DescribeKey", json!({"KeyId": arn})).unwrap()["KeyMetadata"];
    assert_eq!(
        (meta["KeyState"].as_str(), meta["Enabled"].as_bool()),
        (Some("Enabled"), Some(true))
    );
    assert_eq!(meta["CurrentKeyMaterialId"], first_id.as_str());
    assert_eq!(meta["ExpirationModel"], "KEY_MATERIAL_DOES_NOT_EXPIRE");
    // the same material again (the default is now EXISTING), also with its id named
    let v = import(&k, &key, &first, json!({"KeyMaterialId": first_id})).unwrap();
    assert_eq!(v["KeyMaterialId"], first_id.as_str());
    // other material, by default or as EXISTING
    let second = [2u8; 32];
    assert_eq!(
        code(import(&k, &key, &second, json!({}))),
        "IncorrectKeyMaterialException"
    );
    let e = import(&k, &key, &second, json!({"KeyMaterialId": first_id})).unwrap_err();
    assert_eq!(e.code, "IncorrectKeyMaterialException");
    // NEW with material the key has
    let e = import(&k, &key, &first, json!({"ImportType": "NEW_KEY_MATERIAL"})).unwrap_err();
    assert!(e.message.contains("already associated"), "{e:?}");
    // NEW with a KeyMaterialId is malformed
    let e = import(
        &k,
        &key,
        &second,
        json!({"ImportType": "NEW_KEY_MATERIAL", "KeyMaterialId": first_id}),
    )
    .unwrap_err();
    assert_eq!(e.code, "ValidationException");
    // rotation needs pending material
    let e = call(&k, "RotateKeyOnDemand", json!({"KeyId": key})).unwrap_err();
    assert!(
        e.code == "KMSInvalidStateException" && e.message.contains("PENDING_ROTATION"),
        "{e:?}"
    );
    // NEW material waits in PENDING_ROTATION
    let v = import(
        &k,
        &key,
        &second,
        json!({"ImportType": "NEW_KEY_MATERIAL", "KeyMaterialDescription": "second one"}),
    )
    .unwrap();
    let second_id = v["KeyMaterialId"].as_str().unwrap().to_string();
    assert_eq!(rotations(&k, &key, "ROTATIONS_ONLY"), Vec::<Value>::new());
    let all = rotations(&k, &key, "ALL_KEY_MATERIAL");
    assert_eq!(all.len(), 2);
    assert_eq!(all[0]["KeyMaterialState"], "CURRENT");
    assert_eq!(all[1]["KeyMaterialState"], "PENDING_ROTATION");
    assert_eq!(all[1]["KeyMaterialDescription"], "second one");
    assert_eq!(all[1]["ImportState"], "IMPORTED");
    assert!(all[1].get("RotationDate").is_none());
    // a second NEW while one is pending
    assert_eq!(
        code(import(
            &k,
            &key,
            &[3u8; 32],
            json!({"ImportType": "NEW_KEY_MATERIAL"})
        )),
        "KMSInvalidStateException"
    );
    let v = call(&k, "RotateKeyOnDemand", json!({"KeyId": arn})).unwrap();
    assert_eq!(v["KeyId"], key.as_str());
    let all = rotations(&k, &key, "ALL_KEY_MATERIAL");
    assert_eq!(
        all.iter()
            .map(|r| r["KeyMaterialState"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["NON_CURRENT", "CURRENT"]
    );
    let only = rotations(&k, &key, "ROTATIONS_ONLY");
    assert_eq!(only.len(), 1);
    assert_eq!(only[0]["KeyMaterialId"], second_id.as_str());
    assert_eq!(only[0]["RotationType"], "ON_DEMAND");
    assert!(only[0]["RotationDate"].is_f64());
    let meta = &call(&k, "DescribeKey", json!({"KeyId": key})).unwrap()["KeyMetadata"];
    assert_eq!(meta["CurrentKeyMaterialId"], second_id.as_str());
    // both materials can be imported again; every call was counted
    import(&k, &key, &first, json!({})).unwrap();
    import(&k, &key, &second, json!({})).unwrap();
    let inner = k.lock();
    let kk = &inner.keys[&key];
    assert_eq!(kk.rotate_calls, 2);
    assert_eq!(kk.import_calls, 10);
    assert_eq!(kk.rotations, 1);
}

#[test]
fn rotations_page_and_stop_at_25() {
    let k = kms();
    let key = external_key(&k, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT");
    import(&k, &key, &[0u8; 32], json!({})).unwrap();
    for i in 1..=25u8 {
        import(
            &k,
            &key,
            &[i; 32],
            json!({"ImportType": "NEW_KEY_MATERIAL"}),
        )
        .unwrap();
        call(&k, "RotateKeyOnDemand", json!({"KeyId": key})).unwrap();
    }
    import(
        &k,
        &key,
        &[26u8; 32],
        json!({"ImportType": "NEW_KEY_MATERIAL"}),
    )
    .unwrap();
    assert_eq!(
        code(call(&k, "RotateKeyOnDemand", json!({"KeyId": key}))),
        "LimitExceededException"
    );
    let page = call(&k, "ListKeyRotations", json!({"KeyId": key, "Limit": 10})).unwrap();
    assert_eq!(
        (
            page["Rotations"].as_array().unwrap().len(),
            &page["Truncated"]
        ),
        (10, &json!(true))
    );
    let next = page["NextMarker"].as_str().unwrap();
    let rest = call(
        &k,
        "ListKeyRotations",
        json!({"KeyId": key, "Limit": 100, "Marker": next}),
    )
    .unwrap();
    assert_eq!(
        (
            rest["Rotations"].as_array().unwrap().len(),
            &rest["Truncated"]
        ),
        (15, &json!(false))
    );
    assert_eq!(
        code(call(
            &k,
            "ListKeyRotations",
            json!({"KeyId": key, "Marker": "x"})
        )),
        "InvalidMarkerException"
    );
    assert_eq!(k.lock().keys[&key].rotate_calls, 26);
}

#[test]
fn tokens_are_bound_to_their_key_and_expire() {
    let k = kms();
    let a = external_key(&k, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT");
    let b = external_key(&k, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT");
    let (token, public) = params(&k, &a, "RSAES_OAEP_SHA_1", "RSA_2048");
    let blob =
        openssl::base64::encode_block(&oaep_encrypt(&public, OaepHash::Sha1, &[4u8; 32]).unwrap());
    let body = |key: &str| {
        json!({"KeyId": key, "ImportToken": token, "EncryptedKeyMaterial": blob,
               "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"})
    };
    assert_eq!(
        code(call(&k, "ImportKeyMaterial", body(&b))),
        "InvalidImportTokenException"
    );
    let mut unknown = body(&a);
    unknown["ImportToken"] = json!(openssl::base64::encode_block(&[1u8; 64]));
    assert_eq!(
        code(call(&k, "ImportKeyMaterial", unknown)),
        "InvalidImportTokenException"
    );
    let later = now() + TTL + Duration::from_secs(1);
    let e = k
        .op("ImportKeyMaterial", body(&a).as_object().unwrap(), later)
        .unwrap_err();
    assert_eq!(e.code, "ExpiredImportTokenException");
    // the algorithm is the token's: SHA-256 material does not open under a SHA-1 token
    let mut wrong = body(&a);
    wrong["EncryptedKeyMaterial"] = json!(openssl::base64::encode_block(
        &oaep_encrypt(&public, OaepHash::Sha256, &[4u8; 32]).unwrap()
    ));
    assert_eq!(
        code(call(&k, "ImportKeyMaterial", wrong)),
        "InvalidCiphertextException"
    );
    call(&k, "ImportKeyMaterial", body(&a)).unwrap();
}

#[test]
fn expiring_material_and_expiration_rules() {
    let k = kms();
    let key = external_key(&k, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT");
    let e = import(
        &k,
        &key,
        &[1u8; 32],
        json!({"ExpirationModel": "KEY_MATERIAL_EXPIRES"}),
    )
    .unwrap_err();
    assert!(
        e.code == "ValidationException" && e.message.contains("ValidTo is required"),
        "{e:?}"
    );
    let secs = |d: u64| {
        json!(
            now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                + d
        )
    };
    let e = import(&k, &key, &[1u8; 32], json!({"ValidTo": secs(3600)})).unwrap_err();
    assert!(e.message.contains("must not be set"), "{e:?}");
    let e = import(
        &k,
        &key,
        &[1u8; 32],
        json!({"ExpirationModel": "KEY_MATERIAL_EXPIRES", "ValidTo": secs(366 * 86_400)}),
    )
    .unwrap_err();
    assert!(e.message.contains("365 days"), "{e:?}");
    import(
        &k,
        &key,
        &[1u8; 32],
        json!({"ExpirationModel": "KEY_MATERIAL_EXPIRES", "ValidTo": secs(3600)}),
    )
    .unwrap();
    let meta = &call(&k, "DescribeKey", json!({"KeyId": key})).unwrap()["KeyMetadata"];
    assert_eq!(meta["ExpirationModel"], "KEY_MATERIAL_EXPIRES");
    assert!(meta["ValidTo"].is_f64());
    // two hours on, the material is gone and the key waits for it again
    let later = now() + Duration::from_secs(7200);
    let meta = &k
        .op(
            "DescribeKey",
            json!({"KeyId": key}).as_object().unwrap(),
            later,
        )
        .unwrap()["KeyMetadata"];
    assert_eq!(
        (meta["KeyState"].as_str(), meta["Enabled"].as_bool()),
        (Some("PendingImport"), Some(false))
    );
    let inner = k.lock();
    assert_eq!(
        inner.keys[&key].materials[0].import_state(),
        "PENDING_IMPORT"
    );
}

#[test]
fn asymmetric_and_hmac_keys_keep_their_material() {
    let k = kms();
    let key = external_key(&k, "RSA_2048", "SIGN_VERIFY");
    let e = call(&k, "GetParametersForImport", json!({"KeyId": key, "WrappingAlgorithm": "RSAES_OAEP_SHA_256", "WrappingKeySpec": "RSA_4096"})).unwrap_err();
    assert!(
        e.code == "ValidationException" && e.message.contains("cannot wrap RSA"),
        "{e:?}"
    );
    let v = call(&k, "GetParametersForImport", json!({"KeyId": key, "WrappingAlgorithm": "RSA_AES_KEY_WRAP_SHA_256", "WrappingKeySpec": "RSA_2048"})).unwrap();
    let public = PKey::public_key_from_der(
        &openssl::base64::decode_block(v["PublicKey"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    let rsa = PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
    let p8 = rsa.private_key_to_pkcs8().unwrap();
    let body = json!({"KeyId": key, "ImportToken": v["ImportToken"],
        "EncryptedKeyMaterial": openssl::base64::encode_block(&rsa_aes(&public, OaepHash::Sha256, &[3u8; 16], &p8)),
        "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"});
    let mut with_type = body.clone();
    with_type["ImportType"] = json!("NEW_KEY_MATERIAL");
    assert_eq!(
        code(call(&k, "ImportKeyMaterial", with_type)),
        "ValidationException"
    );
    call(&k, "ImportKeyMaterial", body.clone()).unwrap();
    call(&k, "ImportKeyMaterial", body).unwrap();
    let other = PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap())
        .unwrap()
        .private_key_to_pkcs8()
        .unwrap();
    let body = json!({"KeyId": key, "ImportToken": v["ImportToken"],
        "EncryptedKeyMaterial": openssl::base64::encode_block(&rsa_aes(&public, OaepHash::Sha256, &[3u8; 32], &other)),
        "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"});
    assert_eq!(
        code(call(&k, "ImportKeyMaterial", body)),
        "IncorrectKeyMaterialException"
    );
    assert_eq!(
        code(call(&k, "RotateKeyOnDemand", json!({"KeyId": key}))),
        "UnsupportedOperationException"
    );
    // HMAC: the spec's range
    let h = external_key(&k, "HMAC_256", "GENERATE_VERIFY_MAC");
    assert_eq!(
        code(import(&k, &h, &[1u8; 31], json!({}))),
        "IncorrectKeyMaterialException"
    );
    import(&k, &h, &[1u8; 48], json!({})).unwrap();
    let meta = &call(&k, "DescribeKey", json!({"KeyId": h})).unwrap()["KeyMetadata"];
    assert_eq!(meta["MacAlgorithms"], json!(["HMAC_SHA_256"]));
}

#[test]
fn requests_are_validated_as_aws_does() {
    let k = kms();
    let e = call(
        &k,
        "GetParametersForImport",
        json!({"WrappingAlgorithm": "RSAES_OAEP_SHA_9"}),
    )
    .unwrap_err();
    assert_eq!(e.code, "ValidationException");
    assert!(e.message.starts_with("3 validation errors detected: Value null at 'keyId' failed to satisfy constraint: Member must not be null; Value 'RSAES_OAEP_SHA_9' at 'wrappingAlgorithm' failed to satisfy constraint: Member must satisfy enum value set: [RSAES_PKCS1_V1_5,"), "{}", e.message);
    assert_eq!(
        code(call(&k, "DescribeKey", json!({"KeyId": 7}))),
        "SerializationException"
    );
    let key = external_key(&k, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT");
    let e = call(&k, "GetParametersForImport", json!({"KeyId": key, "WrappingAlgorithm": "RSAES_PKCS1_V1_5", "WrappingKeySpec": "RSA_2048"})).unwrap_err();
    assert_eq!(e.code, "ValidationException");
    let e = call(
        &k,
        "DescribeKey",
        json!({"KeyId": format!("arn:aws:kms:eu-west-1:111122223333:key/{key}")}),
    )
    .unwrap_err();
    assert_eq!(e.code, "NotFoundException");
    let e = call(
        &k,
        "DescribeKey",
        json!({"KeyId": format!("arn:aws:kms:us-east-1:444455556666:key/{key}")}),
    )
    .unwrap_err();
    assert_eq!(e.code, "NotFoundException");
    assert_eq!(
        code(call(&k, "DescribeKey", json!({"KeyId": uuid()}))),
        "NotFoundException"
    );
    let e = import(
        &k,
        &key,
        &[1u8; 32],
        json!({"KeyMaterialDescription": "no*stars", "KeyMaterialId": "ABC"}),
    )
    .unwrap_err();
    assert!(
        e.message.starts_with("3 validation errors detected"),
        "{}",
        e.message
    );
    let kms_key = call(&k, "CreateKey", json!({})).unwrap()["KeyMetadata"].clone();
    assert_eq!(
        (kms_key["Origin"].as_str(), kms_key["KeyState"].as_str()),
        (Some("AWS_KMS"), Some("Enabled"))
    );
    assert_eq!(
        code(call(
            &k,
            "GetParametersForImport",
            json!({"KeyId": kms_key["KeyId"], "WrappingAlgorithm": "RSAES_OAEP_SHA_256", "WrappingKeySpec": "RSA_2048"})
        )),
        "UnsupportedOperationException"
    );
    assert_eq!(
        code(call(&k, "CreateKey", json!({"KeySpec": "HMAC_256"}))),
        "ValidationException"
    );
    assert_eq!(
        code(call(
            &k,
            "CreateKey",
            json!({"KeySpec": "ML_DSA_44", "KeyUsage": "SIGN_VERIFY"})
        )),
        "UnsupportedOperationException"
    );
    assert_eq!(
        code(call(&k, "Encrypt", json!({}))),
        "UnknownOperationException"
    );
}

/// A request signed as botocore signs it.
fn signed(k: &AwsKms, op: &str, body: &Value, secret: &str) -> (Vec<(String, String)>, Vec<u8>) {
    let body = serde_json::to_vec(body).unwrap();
    let mut headers: Vec<(String, String)> = [
        ("content-type", "application/x-amz-json-1.1"),
        ("host", "localhost:8444"),
        ("x-amz-date", &sigv4::amz_date(now())),
        ("x-amz-target", &format!("TrentService.{op}")),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();
    let creds = sigv4::Credentials {
        access_key_id: &k.cfg.access_key_id,
        secret_access_key: secret,
        session_token: None,
        region: "us-east-1",
        service: "kms",
    };
    let req = Request {
        method: "POST",
        path: "/",
        query: "",
        headers: &headers,
        body: &body,
    };
    let auth = sigv4::authorization(&creds, &req, &sigv4::amz_date(now()));
    headers.push(("authorization".into(), auth));
    (headers, body)
}

fn send(k: &AwsKms, op: &str, body: &Value, secret: &str) -> Outcome {
    let (headers, body) = signed(k, op, body, secret);
    k.handle(
        &Request {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            body: &body,
        },
        now(),
    )
}

fn reply(o: Outcome) -> (Reply, Duration) {
    match o {
        Outcome::Reply { reply, delay } => (reply, delay),
        Outcome::Drop { .. } => panic!("dropped"),
    }
}

#[test]
fn the_handler_checks_signatures_logs_and_injects_faults() {
    let k = kms();
    let key = external_key(&k, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT");
    let (r, _) = reply(send(
        &k,
        "DescribeKey",
        &json!({"KeyId": key}),
        "secret-for-tests",
    ));
    assert_eq!(r.status, 200);
    assert!(
        r.headers
            .iter()
            .any(|(n, v)| *n == "x-amzn-RequestId" && v.len() == 36)
    );
    let (r, _) = reply(send(&k, "DescribeKey", &json!({"KeyId": key}), "wrong"));
    assert_eq!(r.status, 400);
    assert_eq!(error_code(&r).as_deref(), Some("InvalidSignatureException"));
    // a 503 for the next RotateKeyOnDemand of this key: not handled, not counted
    k.add_fault(
        serde_json::from_value(json!({"op": "RotateKeyOnDemand", "key_id": key, "status": 503}))
            .unwrap(),
    );
    let (r, _) = reply(send(
        &k,
        "DescribeKey",
        &json!({"KeyId": key}),
        "secret-for-tests",
    ));
    assert_eq!(r.status, 200);
    let (r, _) = reply(send(
        &k,
        "RotateKeyOnDemand",
        &json!({"KeyId": key}),
        "secret-for-tests",
    ));
    assert_eq!(
        (r.status, error_code(&r).as_deref()),
        (503, Some("ServiceUnavailableException"))
    );
    assert_eq!(k.lock().keys[&key].rotate_calls, 0);
    // handled, then dropped: counted
    k.add_fault(
        serde_json::from_value(json!({"op": "RotateKeyOnDemand", "drop": true, "processed": true}))
            .unwrap(),
    );
    assert!(matches!(
        send(
            &k,
            "RotateKeyOnDemand",
            &json!({"KeyId": key}),
            "secret-for-tests"
        ),
        Outcome::Drop { .. }
    ));
    assert_eq!(k.lock().keys[&key].rotate_calls, 1);
    // a delay alone: handled first, answered late
    k.add_fault(
        serde_json::from_value(json!({"op": "RotateKeyOnDemand", "delay_ms": 250})).unwrap(),
    );
    let (r, delay) = reply(send(
        &k,
        "RotateKeyOnDemand",
        &json!({"KeyId": key}),
        "secret-for-tests",
    ));
    assert_eq!(
        (error_code(&r).as_deref(), delay),
        (Some("KMSInvalidStateException"), Duration::from_millis(250))
    );
    assert_eq!(k.lock().keys[&key].rotate_calls, 2);
    let log = k.log();
    let ops: Vec<(Option<&str>, u16)> = log.iter().map(|e| (e.op.as_deref(), e.status)).collect();
    assert_eq!(
        ops,
        [
            (Some("DescribeKey"), 200),
            (Some("DescribeKey"), 400),
            (Some("DescribeKey"), 200),
            (Some("RotateKeyOnDemand"), 503),
            (Some("RotateKeyOnDemand"), 400),
            (Some("RotateKeyOnDemand"), 400),
        ]
    );
    assert!(
        log.iter()
            .all(|e| e.key_id.as_deref() == Some(key.as_str()))
    );
    assert_eq!(log[4].code.as_deref(), Some("(handled; answer dropped)"));
}

#[test]
fn the_control_api_reports_keys_and_the_oracle() {
    let k = kms();
    let get = |path: &str| {
        let (r, _) = reply(k.handle(
            &Request {
                method: "GET",
                path,
                query: "",
                headers: &[],
                body: b"",
            },
            now(),
        ));
        (r.status, serde_json::from_slice::<Value>(&r.body).unwrap())
    };
    let (r, _) = reply(k.handle(
        &Request { method: "POST", path: "/_emulator/keys", query: "", headers: &[],
                   body: br#"{"KeySpec":"SYMMETRIC_DEFAULT","KeyUsage":"ENCRYPT_DECRYPT","Origin":"EXTERNAL"}"# },
        now(),
    ));
    let meta: Value = serde_json::from_slice(&r.body).unwrap();
    let key = meta["KeyId"].as_str().unwrap().to_string();
    let material = [0x42u8; 32];
    let id = import(
        &k,
        &key,
        &material,
        json!({"KeyMaterialDescription": "first"}),
    )
    .unwrap()["KeyMaterialId"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, v) = get(&format!("/_emulator/keys/{key}"));
    assert_eq!(status, 200);
    assert_eq!(v["KeyMetadata"]["KeyState"], "Enabled");
    assert_eq!(v["materials"][0]["KeyMaterialId"], id.as_str());
    assert_eq!(v["materials"][0]["KeyMaterialDescription"], "first");
    assert_eq!(v["import_calls"], 1);
    assert_eq!(v["rotate_on_demand_calls"], 0);
    let (status, v) = get(&format!("/_emulator/material/{key}/{id}"));
    assert_eq!(
        (status, v["material_hex"].as_str()),
        (200, Some(hsm_bridge::wrap::hex(&material).as_str()))
    );
    assert_eq!(
        get(&format!("/_emulator/material/{key}/{}", "0".repeat(64))).0,
        404
    );
}
