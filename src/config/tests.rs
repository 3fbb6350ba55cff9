//! The config parser's tests: defaults, unknown keys, bad values, roles, `${VAR}`.

use super::*;

const MIN: &str = r#"
[hsm]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "t"
pin_file = "pin"
"#;

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(text, Path::new("/etc/hb/hsm-bridge.toml")).map_err(|e| e.to_string())
}

#[test]
fn minimal_config_and_defaults() {
    let c = parse(MIN).unwrap();
    assert_eq!(c.hsm.pin_file.as_deref(), Some(Path::new("/etc/hb/pin")));
    assert_eq!(c.hsm.sessions, 4);
    assert_eq!(c.hsm.wrap_mode, WrapModeSetting::Auto);
    assert!(
        c.policy.exportable.is_empty(),
        "nothing leaves unless configured"
    );
    assert_eq!(c.policy.caller_wrapping_keys, CallerWrappingKeys::None);
    assert_eq!(c.policy.min_wrapping_key_bits, 2048);
    assert_eq!(c.audit.path, Path::new("-"));
    assert_eq!(c.server.io_threads, 1);
}

#[test]
fn unknown_key_names_key_and_line() {
    let e = parse(&format!("{MIN}pin = \"1234\"\n")).unwrap_err();
    assert!(e.contains("unknown field `pin`"), "{e}");
    assert!(e.contains("line 6"), "{e}");
    let e = parse(&format!("{MIN}[policy]\nexportables = []\n")).unwrap_err();
    assert!(e.contains("exportables"), "{e}");
    let e = Config::load(Path::new("/nonexistent/x.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/x.toml"), "{e}");
}

#[test]
fn bad_values() {
    let e =
        parse(&MIN.replace("pin_file = \"pin\"", "pin_file = \"p\"\npin_env = \"X\"")).unwrap_err();
    assert!(e.contains("not both"), "{e}");
    let e = parse(&format!("{MIN}wrap_mode = \"fast\"\n")).unwrap_err();
    assert!(e.contains("fast"), "{e}");
    let e = parse(&format!("{MIN}sessions = 0\n")).unwrap_err();
    assert!(e.contains("sessions"), "{e}");
    let e = parse(&format!("{MIN}reinit_interval_secs = 0\n")).unwrap_err();
    assert!(e.contains("reinit_interval_secs"), "{e}");
    let e = parse(&format!("{MIN}[policy]\nmin_wrapping_key_bits = 1024\n")).unwrap_err();
    assert!(e.contains("1024"), "{e}");
    let e = parse(&format!(
        "{MIN}[policy]\npinned_wrapping_keys = [\"abc\"]\n"
    ))
    .unwrap_err();
    assert!(e.contains("abc"), "{e}");
    let e = parse(&format!("{MIN}[oci]\nallowed_endpoints = [\"http://*\"]\n")).unwrap_err();
    assert!(e.contains("https://"), "{e}");
    let e = parse(&format!("{MIN}[server]\nio_threads = 0\n")).unwrap_err();
    assert!(e.contains("server.io_threads"), "{e}");
    assert_eq!(
        parse(&format!("{MIN}[server]\nio_threads = 4\n"))
            .unwrap()
            .server
            .io_threads,
        4
    );
}

#[test]
fn login_roles() {
    assert_eq!(parse(MIN).unwrap().hsm.user_type.ck_user_type(), 1);
    let c = parse(&format!("{MIN}user_type = \"user\"\n")).unwrap();
    assert_eq!(c.hsm.user_type.ck_user_type(), 1);
    let c = parse(&format!("{MIN}user_type = 0x80000001\n")).unwrap();
    assert_eq!(c.hsm.user_type.ck_user_type(), 0x8000_0001);
    let e = parse(&format!("{MIN}user_type = 0\n")).unwrap_err();
    assert!(
        e.contains("hsm.user_type") && e.contains("security officer"),
        "{e}"
    );
    assert!(parse(&format!("{MIN}user_type = \"officer\"\n")).is_err());
}

#[test]
fn env_expansion_and_relative_paths() {
    // SAFETY (test only): a variable no other test reads.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("HB_TEST_TOKEN_LABEL", "from-env")
    };
    let text = MIN.replace("\"t\"", "\"${HB_TEST_TOKEN_LABEL}\"")
        + "module_env = { SOFTHSM2_CONF = \"../s/softhsm2.conf\", OTHER = \"plain\" }\n";
    let c = parse(&text).unwrap();
    assert_eq!(c.hsm.token_label, "from-env");
    assert_eq!(
        c.hsm.module_env["SOFTHSM2_CONF"],
        "/etc/hb/../s/softhsm2.conf"
    );
    assert_eq!(c.hsm.module_env["OTHER"], "plain");
    let e = parse(&MIN.replace("\"t\"", "\"${HB_TEST_SURELY_UNSET}\"")).unwrap_err();
    assert!(
        e.contains("HB_TEST_SURELY_UNSET") && e.contains("hsm.token_label"),
        "{e}"
    );
}

#[test]
fn destinations_are_checked() {
    let aws = "[destinations.prod]\ncloud = \"aws\"\nregion = \"us-east-1\"\naccount = \"111122223333\"\n";
    let c = parse(&format!("{MIN}{aws}ca_bundle = \"ca.pem\"\n")).unwrap();
    let Destination::Aws(a) = &c.destinations["prod"] else {
        panic!("an AWS destination")
    };
    assert_eq!(a.endpoint_url(), "https://kms.us-east-1.amazonaws.com");
    assert_eq!(a.ca_bundle.as_deref(), Some(Path::new("/etc/hb/ca.pem")));
    assert_eq!(a.wrapping_key_spec, "RSA_4096");
    // the region's FIPS endpoint is allowed by default; another host is not
    parse(&format!(
        "{MIN}{aws}endpoint = \"https://kms-fips.us-east-1.amazonaws.com\"\n"
    ))
    .unwrap();
    for (extra, says) in [
        (
            "endpoint = \"https://kms.evil.example\"\n",
            "allowed_endpoints",
        ),
        (
            "endpoint = \"http://kms.us-east-1.amazonaws.com\"\n",
            "https",
        ),
        ("regoin = \"x\"\n", "regoin"),
        ("wrapping_key_spec = \"RSA_1024\"\n", "RSA_4096"),
        (
            "allowed_endpoints = [\"http://x\"]\nendpoint = \"http://x\"\n",
            "https://",
        ),
    ] {
        let e = parse(&format!("{MIN}{aws}{extra}")).unwrap_err();
        assert!(e.contains(says), "{extra}: {e}");
    }
    for (table, says) in [
        (aws.replace("111122223333", "1111"), "12-digit"),
        (aws.replace("us-east-1", "US East"), "region"),
        (aws.replace("\"aws\"", "\"ibm\""), "ibm"),
        (aws.replace("prod", "\"a b\""), "destination name"),
    ] {
        let e = parse(&format!("{MIN}{table}")).unwrap_err();
        assert!(e.contains(says), "{table}: {e}");
    }
    // a caller may be granted only destinations the config has
    let client =
        "[[server.clients]]\nname = \"c\"\nsubject_cn = \"c\"\noperations = [\"import\"]\n";
    parse(&format!("{MIN}{aws}{client}destinations = [\"prod\"]\n")).unwrap();
    let e = parse(&format!("{MIN}{aws}{client}destinations = [\"test\"]\n")).unwrap_err();
    assert!(e.contains("no [destinations.NAME]"), "{e}");
}

#[test]
fn gcp_destinations_are_checked() {
    let gcp = "[destinations.g]\ncloud = \"gcp\"\nproject = \"acme-keys\"\nlocation = \"us-east1\"\nkey_ring = \"byok\"\n";
    let c = parse(&format!("{MIN}{gcp}credentials_file = \"sa.json\"\n")).unwrap();
    let Destination::Gcp(g) = &c.destinations["g"] else {
        panic!("a Google Cloud destination")
    };
    assert_eq!(
        g.endpoint_base().unwrap(),
        "https://cloudkms.googleapis.com"
    );
    assert_eq!(
        g.key_ring_name(),
        "projects/acme-keys/locations/us-east1/keyRings/byok"
    );
    assert_eq!(g.protection_level, super::destinations::GcpProtection::Hsm);
    assert_eq!(
        g.format().map(|f| f.name),
        Some("gcp:RSA_OAEP_4096_SHA256_AES_256")
    );
    assert_eq!(
        g.credentials_file.as_deref(),
        Some(Path::new("/etc/hb/sa.json"))
    );
    // a regional endpoint is allowed by default; the metadata server is the default credential
    parse(&format!(
        "{MIN}{gcp}endpoint = \"https://cloudkms.us-east1.rep.googleapis.com\"\n"
    ))
    .unwrap();
    for (extra, says) in [
        (
            "endpoint = \"https://kms.evil.example\"\n",
            "allowed_endpoints",
        ),
        ("endpoint = \"http://cloudkms.googleapis.com\"\n", "https"),
        (
            "import_method = \"RSA_OAEP_2048_SHA256\"\n",
            "RSA_OAEP_4096_SHA256_AES_256",
        ),
        ("protection_level = \"EXTERNAL\"\n", "`SOFTWARE`"),
        (
            "credentials_file = \"sa.json\"\nmetadata_endpoint = \"http://127.0.0.1:1\"\n",
            "not both",
        ),
        (
            "metadata_endpoint = \"https://169.254.169.254/x\"\n",
            "http://host",
        ),
        ("job_wait_ms = 10\n", "job_wait_ms"),
        ("key_rnig = \"x\"\n", "key_rnig"),
    ] {
        let e = parse(&format!("{MIN}{gcp}{extra}")).unwrap_err();
        assert!(e.contains(says), "{extra}: {e}");
    }
    for (table, says) in [
        (gcp.replace("acme-keys", "Acme"), "project"),
        (gcp.replace("us-east1", "US East"), "location"),
        (gcp.replace("byok", "by/ok"), "key_ring"),
    ] {
        let e = parse(&format!("{MIN}{table}")).unwrap_err();
        assert!(e.contains(says), "{table}: {e}");
    }
    // a method below the policy's wrapping key size is refused when the config is read
    let e = parse(&format!(
        "{}{gcp}import_method = \"RSA_OAEP_3072_SHA256_AES_256\"\n",
        MIN.replace("[hsm]", "[policy]\nmin_wrapping_key_bits = 4096\n\n[hsm]")
    ))
    .unwrap_err();
    assert!(e.contains("min_wrapping_key_bits"), "{e}");
}

#[test]
fn azure_destinations_are_checked() {
    let azure = "[destinations.az]\ncloud = \"azure\"\nvault = \"https://contoso.vault.azure.net\"\ntenant = \"72f988bf-86f1-41af-91ab-2d7cd011db47\"\nclient_id = \"00000000-0000-0000-0000-000000000001\"\nclient_secret_file = \"azure-secret\"\n";
    let kek = "kek = \"https://contoso.vault.azure.net/keys/byok-kek/0123abcd\"\n";
    let c = parse(&format!("{MIN}{azure}{kek}")).unwrap();
    let Destination::Azure(a) = &c.destinations["az"] else {
        panic!("an Azure destination")
    };
    assert_eq!(a.kind(), Some(super::AzureKind::KeyVault));
    assert_eq!(
        a.client_secret_file.as_deref(),
        Some(Path::new("/etc/hb/azure-secret"))
    );
    assert_eq!(
        a.authority_base().unwrap(),
        "https://login.microsoftonline.com"
    );
    let mhsm = azure.replace("contoso.vault", "contoso.managedhsm");
    let c = parse(&format!(
        "{MIN}{mhsm}kek_name = \"kek\"\nkek_create = true\n"
    ))
    .unwrap();
    let Destination::Azure(a) = &c.destinations["az"] else {
        panic!("an Azure destination")
    };
    assert_eq!(a.kind(), Some(super::AzureKind::ManagedHsm));
    for (table, says) in [
        (azure.to_string(), "kek_name"),
        (
            format!("{azure}kek = \"https://other.vault.azure.net/keys/k/1\"\n"),
            "same vault",
        ),
        (
            format!("{azure}kek = \"https://contoso.vault.azure.net/keys/k\"\n"),
            "versioned",
        ),
        (format!("{azure}{kek}kek_name = \"k\"\n"), "not both"),
        (
            format!("{azure}{kek}kek_create = true\n"),
            "kek_create needs kek_name",
        ),
        (
            azure.replace("https://contoso.vault.azure.net", "https://evil.example") + kek,
            "allowed_endpoints",
        ),
        (
            azure.replace("https://contoso", "http://contoso") + kek,
            "https",
        ),
        (
            format!("{azure}{kek}authority = \"https://login.evil.example\"\n"),
            "allowed_authorities",
        ),
        (
            // the vault's hosts are not where a client secret may go
            format!("{azure}{kek}authority = \"https://evil.vault.azure.net\"\n"),
            "allowed_authorities",
        ),
        (
            format!("{azure}{kek}kind = \"managed_hsm\"\n"),
            "is an Azure Key Vault",
        ),
        (
            format!("{azure}{kek}workload_identity = true\n"),
            "exactly one of",
        ),
        (
            azure.replace("00000000-0000-0000-0000-000000000001", "app") + kek,
            "GUID",
        ),
    ] {
        let e = parse(&format!("{MIN}{table}")).unwrap_err();
        assert!(e.contains(says), "{table}: {e}");
    }
    // a host that says neither kind must say which
    let local = azure.replace("https://contoso.vault.azure.net", "https://localhost:8443")
        + "allowed_endpoints = [\"https://localhost:8443\"]\nkek = \"https://localhost:8443/keys/k/1\"\n";
    let e = parse(&format!("{MIN}{local}")).unwrap_err();
    assert!(e.contains("kind"), "{e}");
    parse(&format!("{MIN}{local}kind = \"managed_hsm\"\n")).unwrap();
}
