//! `hsm-bridge migrate` and `hsm-bridge reconcile`, end to end: the real command line on the
//! SoftHSM2 test token with 200 keys of known values, the real `aws-kms-emulator` with faults
//! (throttling, a lost answer) and a key KMS does not take in the plan; the run killed with
//! SIGKILL halfway and run again; two workers on one PostgreSQL journal sharing a plan; a dry
//! run; and reconcile finding a version made outside the daemon and an HSM key deleted after
//! its export.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::aws_rig::*;
use common::postgres::Postgres;
use common::*;
use serde_json::{Value, json};

/// `n` AES-256 keys `PREFIX-000`… of random values on `fx`, by label.
fn make_keys(fx: &Fixture, prefix: &str, id_prefix: u16, n: usize) -> HashMap<String, Vec<u8>> {
    (0..n)
        .map(|i| {
            let label = format!("{prefix}-{i:03}");
            let value = random(32);
            write_aes(fx, &label, &format!("{id_prefix:04x}{i:04x}"), &value, true);
            (label, value)
        })
        .collect()
}

/// A rig whose journal frees a killed run's claims within 2 s, and a plan file.
fn migrate_rig(fx: &Fixture, name: &str) -> Rig {
    let rig = rig(fx, name, &[], None);
    let text = std::fs::read_to_string(&rig.config)
        .unwrap()
        .replace("[journal]\n", "[journal]\nlease_secs = 2\n");
    std::fs::write(&rig.config, text).unwrap();
    rig
}

fn write_plan(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

/// `hsm-bridge migrate` started with the rig's AWS environment.
fn start_migrate(rig: &Rig, config: &Path, plan: &Path, report: &Path, extra: &[&str]) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hsm-bridge"));
    c.arg("migrate");
    // An empty config: through a daemon (`extra` names it).
    if !config.as_os_str().is_empty() {
        c.arg("--config").arg(config);
    }
    c.arg("--plan")
        .arg(plan)
        .arg("--report")
        .arg(report)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in &rig.env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

/// Runs `hsm-bridge migrate` to its end: (success, stdout, stderr, the report).
fn migrate(rig: &Rig, config: &Path, plan: &Path, extra: &[&str]) -> (bool, String, String, Value) {
    let report = plan.with_extension("report.json");
    let out = start_migrate(rig, config, plan, &report, extra)
        .wait_with_output()
        .unwrap();
    let report: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        report,
    )
}

fn rows(report: &Value) -> Vec<Value> {
    report["items"].as_array().unwrap().clone()
}

/// Every KMS key that holds material, and that material, by key id.
async fn holdings(
    rig: &Rig,
    key_ids: impl Iterator<Item = String>,
) -> BTreeMap<String, Vec<Vec<u8>>> {
    let mut out = BTreeMap::new();
    for k in key_ids {
        let key = rig.emu.key(&k).await;
        let mut values = Vec::new();
        for m in materials(&key) {
            let id = m["KeyMaterialId"].as_str().unwrap();
            values.push(rig.emu.material(&k, id).await);
        }
        out.insert(k, values);
    }
    out
}

/// A plan of 200 keys to a new key each, and one AES-128 key KMS does not take, with
/// throttling and a lost answer along the way; killed (SIGKILL) halfway and run again: every
/// importable key lands exactly once as its own value, the refused one is reported with its
/// reason, and the exit status says so. A third run sends nothing new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_killed_halfway_and_run_again_imports_each_key_once() {
    let fx = softhsm();
    let keys = make_keys(fx, "test-mig-a", 0x4d41, 200);
    let rig = migrate_rig(fx, "migrate-a");
    let dir = fx.dir.join("migrate-a");
    let plan = write_plan(
        &dir,
        "plan",
        &format!(
            "name = \"migrate-a\"\n\n[[items]]\nid = \"fleet\"\nsource = \"test-mig-a-*\"\nto = \"{DEST}\"\nnew_key = true\nformat = \"aws:RSAES_OAEP_SHA_1\"\n\n[[items]]\nid = \"small\"\nsource = \"test-aes-128\"\nto = \"{DEST}\"\nnew_key = true\nformat = \"aws:RSAES_OAEP_SHA_1\"\n"
        ),
    );
    rig.emu
        .fault(json!([
            {"op": "CreateKey", "status": 429, "code": "ThrottlingException", "count": 5},
            {"op": "GetParametersForImport", "status": 429, "code": "ThrottlingException", "count": 5},
            {"op": "ImportKeyMaterial", "drop": true, "processed": true, "count": 1}
        ]))
        .await;

    // The first run, killed once about half the keys have their material.
    let report = plan.with_extension("report.json");
    let mut child = start_migrate(&rig, &rig.config, &plan, &report, &["--parallel", "16"]);
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let imported = calls(&rig.emu, "ImportKeyMaterial").await;
        if imported >= 100 {
            break;
        }
        assert!(
            Instant::now() < end && child.try_wait().unwrap().is_none(),
            "the first run ended or stalled before half: {imported} imports"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    // Run again: it finishes; the refused key makes the exit status non-zero.
    let (ok, stdout, stderr, report) = migrate(&rig, &rig.config, &plan, &["--parallel", "16"]);
    assert!(!ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("1 refused"), "{stdout}");
    let s = &report["summary"];
    assert_eq!(s["total"], 201, "{s}");
    assert_eq!(s["refused"], 1, "{s}");
    assert_eq!(s["failed"], 0, "{s}");
    assert_eq!(
        s["imported"].as_u64().unwrap() + s["already_done"].as_u64().unwrap(),
        200,
        "{s}"
    );
    assert!(s["already_done"].as_u64().unwrap() >= 90, "{s}");
    let rows = rows(&report);
    let small = rows.iter().find(|r| r["item"] == "small").unwrap();
    assert_eq!(small["outcome"], "refused", "{small}");
    assert!(
        small["reason"].as_str().unwrap().contains("AES-128"),
        "{small}"
    );
    // JSON lines on stderr (not a terminal): one per import, the last one at the total; then
    // the one line that says why the exit status is not 0.
    // (The AWS SDK may warn on stderr too.)
    let json_lines: Vec<Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(json_lines.len(), 201, "{stderr}");
    assert_eq!(json_lines[200]["done"], 201, "{stderr}");
    let why = stderr.lines().last().unwrap();
    assert!(why.contains("1 refused, 0 failed"), "{stderr}");

    // Every key exactly once, as its own value, in the key the report names.
    let by_label: HashMap<&str, &Value> = rows
        .iter()
        .filter_map(|r| r["source_key_label"].as_str().map(|l| (l, r)))
        .collect();
    let mut seen = 0;
    for (label, value) in &keys {
        let r = by_label[label.as_str()];
        assert!(
            matches!(r["outcome"].as_str(), Some("imported" | "already-done")),
            "{r}"
        );
        let k = r["key_id"].as_str().unwrap();
        assert_eq!(
            &rig.emu.material(k, r["version_id"].as_str().unwrap()).await,
            value,
            "{label}"
        );
        seen += 1;
    }
    assert_eq!(seen, 200);
    let all = holdings(&rig, rig.emu.key_ids().await.into_iter()).await;
    let mut values: Vec<&Vec<u8>> = all.values().flatten().collect();
    values.sort();
    let before = values.len();
    values.dedup();
    assert_eq!(values.len(), before, "a value imported twice");
    assert_eq!(before, 200, "200 keys hold material, one value each");

    // A third run: everything is answered from the journal; nothing is sent to import.
    let imports = calls(&rig.emu, "ImportKeyMaterial").await;
    let creates = calls(&rig.emu, "CreateKey").await;
    let (_, _, _, report) = migrate(&rig, &rig.config, &plan, &["--parallel", "16"]);
    assert_eq!(
        report["summary"]["already_done"], 200,
        "{}",
        report["summary"]
    );
    assert_eq!(calls(&rig.emu, "ImportKeyMaterial").await, imports);
    assert_eq!(calls(&rig.emu, "CreateKey").await, creates);
}

/// Two workers on two configs sharing one PostgreSQL journal run one plan at the same time:
/// each key is imported once, by one of them; the other reports it done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_one_postgres_journal_share_a_plan() {
    let Some(pg) = Postgres::start("migrate") else {
        return;
    };
    pg.create_db("migrate");
    let fx = softhsm();
    let keys = make_keys(fx, "test-mig-pg", 0x5047, 60);
    let rig = migrate_rig(fx, "migrate-pg");
    let journal = pg.journal_lines("migrate");
    let configs: Vec<PathBuf> = ["a", "b"]
        .iter()
        .map(|w| {
            let text = std::fs::read_to_string(&rig.config).unwrap();
            let text = text
                .lines()
                .map(|l| match l.starts_with("url = \"sqlite:") {
                    true => journal.trim_end().to_string(),
                    false => l.to_string(),
                })
                .collect::<Vec<_>>()
                .join("\n");
            let p = rig.config.with_file_name(format!("migrate-pg-{w}.toml"));
            std::fs::write(&p, text).unwrap();
            p
        })
        .collect();
    let dir = fx.dir.join("migrate-pg");
    let plan = write_plan(
        &dir,
        "plan",
        &format!(
            "name = \"migrate-pg\"\n\n[[items]]\nsource = \"test-mig-pg-*\"\nto = \"{DEST}\"\nnew_key = true\nformat = \"aws:RSAES_OAEP_SHA_1\"\n"
        ),
    );
    let reports = [dir.join("a.json"), dir.join("b.json")];
    let children: Vec<Child> = configs
        .iter()
        .zip(&reports)
        .map(|(c, r)| start_migrate(&rig, c, &plan, r, &["--parallel", "8"]))
        .collect();
    let mut imported = 0;
    for (child, report) in children.into_iter().zip(&reports) {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap();
        let s = &report["summary"];
        assert_eq!(
            s["imported"].as_u64().unwrap() + s["already_done"].as_u64().unwrap(),
            60,
            "{s}"
        );
        imported += s["imported"].as_u64().unwrap();
    }
    assert_eq!(imported, 60, "each key imported by exactly one worker");
    assert_eq!(calls(&rig.emu, "ImportKeyMaterial").await, 60);
    assert_eq!(calls(&rig.emu, "CreateKey").await, 60);
    let all = holdings(&rig, rig.emu.key_ids().await.into_iter()).await;
    let mut values: Vec<&Vec<u8>> = all.values().flatten().collect();
    values.sort();
    let mut expected: Vec<&Vec<u8>> = keys.values().collect();
    expected.sort();
    assert_eq!(values, expected);
}

/// A dry run checks every import as far as it goes without the cloud: nothing is created,
/// asked for or wrapped (and so nothing is audited); what would be refused is reported with
/// its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_checks_without_calling_the_cloud() {
    let fx = softhsm();
    let rig = migrate_rig(fx, "migrate-dry");
    let dir = fx.dir.join("migrate-dry");
    let plan = write_plan(
        &dir,
        "plan",
        &format!(
            "name = \"dry\"\n\n[[items]]\nsource = \"test-aes-256\"\nto = \"{DEST}\"\nnew_key = true\nformat = \"aws:RSAES_OAEP_SHA_1\"\n\n[[items]]\nid = \"sha256\"\nsource = \"test-aes-256\"\nto = \"{DEST}\"\nnew_key = true\n\n[[items]]\nid = \"nowhere\"\nsource = \"test-aes-256\"\nto = \"no-such-destination\"\nnew_key = true\n\n[[items]]\nid = \"missing\"\nsource = \"test-none-*\"\nto = \"{DEST}\"\nnew_key = true\n\n[[items]]\nid = \"locked\"\nsource = \"test-locked-aes-256\"\nto = \"{DEST}\"\nnew_key = true\n"
        ),
    );
    let (ok, stdout, _, report) = migrate(&rig, &rig.config, &plan, &["--dry-run", "--json"]);
    assert!(!ok);
    let printed: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(printed, report);
    let by_item: HashMap<String, Value> = rows(&report)
        .into_iter()
        .map(|r| (r["item"].as_str().unwrap().to_string(), r))
        .collect();
    assert_eq!(by_item["1"]["outcome"], "checked", "{report}");
    for (item, says) in [
        // SoftHSM2 2.6 cannot wrap with OAEP-SHA256 (the default for AES).
        ("sha256", "OAEP"),
        ("nowhere", "no-such-destination"),
        ("missing", "matches"),
        ("locked", "test-locked-aes-256"),
    ] {
        let r = &by_item[item];
        assert_eq!(r["outcome"], "refused", "{r}");
        assert!(r["reason"].as_str().unwrap().contains(says), "{r}");
    }
    assert!(
        rig.emu.requests().await.is_empty(),
        "a dry run calls no cloud"
    );
    // Nothing left the token: no export is audited.
    assert!(
        std::fs::read_to_string(&rig.audit)
            .unwrap_or_default()
            .is_empty(),
        "a dry run exports nothing"
    );
}

/// `hsm-bridge` with the rig's AWS environment: (success, stdout, stderr).
fn cli(rig: &Rig, args: &[&str]) -> (bool, String, String) {
    let out = hsm_bridge_with_env(args, &borrowed(&rig.env));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Reconcile after three imports: one whose key later got a version from outside (an import
/// through another journal), one whose HSM key was deleted afterwards, one as it should be;
/// and a key never exported. It names each, and exits non-zero for what is out of place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_finds_outside_versions_and_deleted_hsm_keys() {
    let fx = softhsm();
    let keys = make_keys(fx, "test-rec", 0x5245, 4);
    let rig = migrate_rig(fx, "reconcile");
    let config = rig.config.to_str().unwrap();
    let mut arns = Vec::new();
    for label in ["test-rec-000", "test-rec-001", "test-rec-002"] {
        let k = rig
            .emu
            .create_key("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT")
            .await;
        let k = k["Arn"].as_str().unwrap().to_string();
        let (ok, _, err) = cli(
            &rig,
            &[
                "import",
                "--config",
                config,
                "--label",
                label,
                "--to",
                DEST,
                "--target",
                &k,
                "--format",
                "aws:RSAES_OAEP_SHA_1",
                "--wait",
            ],
        );
        assert!(ok, "{err}");
        arns.push(k);
    }
    // New material for the first key through a config with a journal of its own: this
    // journal never hears of it.
    let other = rig.config.with_file_name("reconcile-other.toml");
    let text = std::fs::read_to_string(&rig.config)
        .unwrap()
        .replace(".sqlite\"\n", "-other.sqlite\"\n");
    assert!(text.contains("-other.sqlite"), "{text}");
    std::fs::write(&other, text).unwrap();
    let (ok, _, err) = cli(
        &rig,
        &[
            "import",
            "--config",
            other.to_str().unwrap(),
            "--label",
            "test-rec-003",
            "--to",
            DEST,
            "--target",
            &arns[0],
            "--format",
            "aws:RSAES_OAEP_SHA_1",
            "--wait",
        ],
    );
    assert!(ok, "{err}");
    // The second key's HSM key is deleted after its export.
    let out = p11(
        fx,
        &[
            "--delete-object",
            "--type",
            "secrkey",
            "--label",
            "test-rec-001",
        ],
    );
    assert!(out.status.success(), "{out:?}");

    let (ok, stdout, stderr) = cli(
        &rig,
        &["reconcile", "--config", config, "--to", DEST, "--json"],
    );
    assert!(!ok, "drift makes the exit status non-zero");
    assert!(stderr.contains("out of place"), "{stderr}");
    let r: Value = serde_json::from_str(&stdout).unwrap();
    let imports = r["imports"].as_array().unwrap();
    let row = |label: &str| {
        imports
            .iter()
            .find(|i| i["source_key_label"] == label)
            .unwrap_or_else(|| panic!("{label}: {r}"))
            .clone()
    };
    let first = row("test-rec-000");
    assert_eq!(first["hsm_key"], "present", "{first}");
    assert_eq!(first["version_state"], "NON_CURRENT", "{first}");
    assert_eq!(first["current"], false, "{first}");
    let deleted = row("test-rec-001");
    assert_eq!(deleted["hsm_key"], "missing", "{deleted}");
    assert!(
        deleted["problem"]
            .as_str()
            .unwrap()
            .contains("no longer on the token")
    );
    let fine = row("test-rec-002");
    assert_eq!(
        (&fine["hsm_key"], &fine["version_state"], &fine["current"]),
        (&json!("present"), &json!("CURRENT"), &json!(true)),
        "{fine}"
    );
    assert!(fine.get("problem").is_none(), "{fine}");
    // The version made outside: on the first key, current, explained by no record.
    let outside = r["unexplained_versions"].as_array().unwrap();
    assert_eq!(outside.len(), 1, "{r}");
    assert_eq!(outside[0]["key_id"], arns[0].as_str());
    assert_eq!(outside[0]["current"], true);
    let material = rig
        .emu
        .material(&arns[0], outside[0]["version_id"].as_str().unwrap())
        .await;
    assert_eq!(
        material, keys["test-rec-003"],
        "the outside version is test-rec-003"
    );
    // test-rec-003 went there through the other journal: this one says it never did.
    let never: Vec<&str> = r["never_exported"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["label"].as_str())
        .collect();
    assert!(never.contains(&"test-rec-003"), "{never:?}");
    assert!(!never.contains(&"test-rec-000"), "{never:?}");
    assert_eq!(r["problems"], 2, "{r}");

    // The table says the same for a person.
    let (_, table, _) = cli(&rig, &["reconcile", "--config", config, "--to", DEST]);
    assert!(table.contains("no longer on the token"), "{table}");
    assert!(
        table.contains("versions no journal record explains"),
        "{table}"
    );
}

/// The same plan through a running daemon (gRPC `Import`, as the caller its certificate
/// names) instead of in process: every key imported once, and a second run answered by the
/// daemon's journal with nothing sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_through_the_daemon_imports_each_key_once() {
    let fx = softhsm();
    let keys = make_keys(fx, "test-mig-d", 0x4444, 20);
    let rig = migrate_rig(fx, "migrate-daemon");
    let daemon = rig.daemon();
    let dir = fx.dir.join("migrate-daemon");
    let plan = write_plan(
        &dir,
        "plan",
        &format!(
            "name = \"through\"\n\n[[items]]\nsource = \"test-mig-d-*\"\nto = \"{DEST}\"\nnew_key = true\nformat = \"aws:RSAES_OAEP_SHA_1\"\n"
        ),
    );
    let tls = common::daemon::certs();
    let path = |f: &str| tls.join(f).display().to_string();
    let (ca, cert, key) = (path("ca.pem"), path("cckm.pem"), path("cckm.key"));
    let args = [
        "--addr",
        daemon.addr.as_str(),
        "--ca",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
        "--server-name",
        "localhost",
        "--parallel",
        "8",
    ];
    let (ok, stdout, stderr, report) = migrate(&rig, Path::new(""), &plan, &args);
    assert!(ok, "{stdout}\n{stderr}");
    assert_eq!(report["summary"]["imported"], 20, "{}", report["summary"]);
    for r in rows(&report) {
        let label = r["source_key_label"].as_str().unwrap();
        let value = rig
            .emu
            .material(
                r["key_id"].as_str().unwrap(),
                r["version_id"].as_str().unwrap(),
            )
            .await;
        assert_eq!(&value, &keys[label], "{label}");
    }
    let imports = calls(&rig.emu, "ImportKeyMaterial").await;
    assert_eq!(imports, 20);
    let (ok, _, stderr, report) = migrate(&rig, Path::new(""), &plan, &args);
    assert!(ok, "{stderr}");
    assert_eq!(
        report["summary"]["already_done"], 20,
        "{}",
        report["summary"]
    );
    assert_eq!(calls(&rig.emu, "ImportKeyMaterial").await, imports);
    // The daemon audited them, as its caller's.
    drop(daemon);
    let recs = common::daemon::audit_records(&rig.audit);
    let imports: Vec<&Value> = recs.iter().filter(|r| r["operation"] == "Import").collect();
    assert_eq!(imports.len(), 40, "{recs:?}");
    assert!(
        imports
            .iter()
            .all(|r| r["caller"].as_str().unwrap().starts_with("cckm"))
    );
}
