//! Listing a large token page by page, in one run, on a SoftHSM2 token of `--keys` AES-256
//! keys (10,000):
//!
//! - **breakdown**: in this process through `cryptoki`, what one enumeration is made of:
//!   `C_FindObjects` alone (handles only), and reads of every key's attributes, in one call
//!   or in `cryptoki`'s two (sizes first, for a label or an id);
//! - **one enumeration**: `hsm-bridge keys --json` (the whole process: module load, login,
//!   self-test, one listing);
//! - **paged**: the daemon's ListSourceKeys over mutual TLS, page by page (`--page`, 1,000),
//!   the whole walk `--rounds` times, and one walk with a key added and one removed between
//!   pages.
//!
//! A measurement: it asserts nothing.
//!
//!     cargo bench --bench listing [-- --keys N --page N --rounds N]
//!
//! `HSM_BRIDGE_DAEMON_BIN=/path/to/hsm-bridge` runs the CLI and the daemon of another build
//! (the base commit's, for a before and after); only gRPC and the command line are used.
//! The token is made once under target/tmp/listing-softhsm-N/ and kept for later runs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use hsm_bridge::proto;

#[path = "../tests/common/mod.rs"]
mod common;

use common::daemon::{Daemon, daemon_config};
use common::{Fixture, TokenKind};

struct Args {
    keys: usize,
    page: u32,
    rounds: usize,
}

fn args() -> Args {
    let mut a = Args {
        keys: 10_000,
        page: 1000,
        rounds: 3,
    };
    let mut it = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(flag) = it.next() {
        let mut num = |name: &str| -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match flag.as_str() {
            "--keys" => a.keys = num("--keys"),
            "--page" => a.page = num("--page") as u32,
            "--rounds" => a.rounds = num("--rounds").max(1),
            other => panic!("unknown argument {other:?}; use --keys N, --page N, --rounds N"),
        }
    }
    a
}

/// The binary under measurement: `HSM_BRIDGE_DAEMON_BIN`, or this build's.
fn binary() -> PathBuf {
    std::env::var_os("HSM_BRIDGE_DAEMON_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_hsm-bridge").into())
        .into()
}

/// The module, initialised in this process (`SOFTHSM2_CONF` set before any thread).
fn module() -> Pkcs11 {
    let p = Pkcs11::new(common::module()).unwrap();
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    p
}

/// A logged-in session on the token labelled `common::TOKEN`.
fn login(p: &Pkcs11, rw: bool) -> Session {
    let slot = p
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| p.get_token_info(*s).unwrap().label().trim_end() == common::TOKEN)
        .expect("the bench token");
    let s = if rw {
        p.open_rw_session(slot)
    } else {
        p.open_ro_session(slot)
    }
    .unwrap();
    s.login(UserType::User, Some(&AuthPin::new(common::PIN.into())))
        .unwrap();
    s
}

/// The label of the bench's key number `i`: sorted as numbered.
fn label(i: usize) -> String {
    format!("bulk-{i:06}")
}

fn aes_template(i: usize) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(true),
        Attribute::Decrypt(true),
        Attribute::Label(label(i).into_bytes()),
        Attribute::Id((i as u32).to_be_bytes().to_vec()),
        Attribute::Value(common::random(32)),
    ]
}

/// Initialises a token in `dir` (PINs set through the module, never on a command line) and
/// creates `n` AES-256 keys and the journal's record key in it; kept, with a stamp, for the
/// next run.
fn token(dir: &Path, n: usize) {
    let stamp = dir.join("MADE");
    let want = format!("{n} AES-256 keys and the journal's record key\n");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        return;
    }
    let _ = std::fs::remove_dir_all(dir.join("tokens"));
    std::fs::create_dir_all(dir.join("tokens")).unwrap();
    let t = Instant::now();
    let p = module();
    let free = p
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| !p.get_token_info(*s).unwrap().token_initialized())
        .expect("a free SoftHSM2 slot");
    let so = AuthPin::new(hex(&common::random(16)).into());
    p.init_token(free, &so, common::TOKEN).unwrap();
    {
        let slot = p
            .get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|s| p.get_token_info(*s).unwrap().label().trim_end() == common::TOKEN)
            .unwrap();
        let s = p.open_rw_session(slot).unwrap();
        s.login(UserType::So, Some(&so)).unwrap();
        s.init_pin(&AuthPin::new(common::PIN.into())).unwrap();
        s.logout().unwrap();
    }
    let s = login(&p, true);
    for i in 0..n {
        s.create_object(&aes_template(i)).unwrap();
    }
    // The daemon's journal needs its record key (tests/common/mod.rs, make_record_key).
    s.create_object(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Label(common::RECORD_KEY.as_bytes().to_vec()),
        Attribute::Value(common::random(32)),
    ])
    .unwrap();
    drop(s);
    p.finalize().unwrap();
    common::write_private(
        &dir.join("user-pin"),
        format!("{}\n", common::PIN).as_bytes(),
    );
    std::fs::write(&stamp, want).unwrap();
    println!(
        "token   {n} AES-256 keys made in {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What the listing asks of a secret key (src/hsm/keys.rs), and the nine attributes the
/// base commit asked of every key (CKA_MODULUS is invalid for a secret key).
const SECRET_ATTRS: [AttributeType; 7] = [
    AttributeType::KeyType,
    AttributeType::Label,
    AttributeType::Id,
    AttributeType::Extractable,
    AttributeType::Sensitive,
    AttributeType::WrapWithTrusted,
    AttributeType::ValueLen,
];
/// Those of fixed size: `cryptoki` reads them in one call.
const FIXED_ATTRS: [AttributeType; 6] = [
    AttributeType::Class,
    AttributeType::KeyType,
    AttributeType::Extractable,
    AttributeType::Sensitive,
    AttributeType::WrapWithTrusted,
    AttributeType::ValueLen,
];
const BASE_ATTRS: [AttributeType; 9] = [
    AttributeType::Class,
    AttributeType::KeyType,
    AttributeType::Label,
    AttributeType::Id,
    AttributeType::Extractable,
    AttributeType::Sensitive,
    AttributeType::WrapWithTrusted,
    AttributeType::ValueLen,
    AttributeType::Modulus,
];

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The in-process breakdown: each step timed alone, twice (the first loads the token's
/// objects into the module's memory).
fn breakdown(n: usize) {
    let p = module();
    let s = login(&p, false);
    let find = |class: ObjectClass| {
        s.find_objects(&[Attribute::Class(class), Attribute::Token(true)])
            .unwrap()
    };
    for round in 1..=2 {
        let t = Instant::now();
        let secret = find(ObjectClass::SECRET_KEY);
        let f_secret = t.elapsed();
        let t = Instant::now();
        let private = find(ObjectClass::PRIVATE_KEY);
        let f_private = t.elapsed();
        let t = Instant::now();
        let all = s.find_objects(&[Attribute::Token(true)]).unwrap();
        let f_all = t.elapsed();
        let t = Instant::now();
        s.find_objects(&[]).unwrap();
        let f_empty = t.elapsed();
        let read = |handles: &[ObjectHandle], attrs: &[AttributeType]| {
            let t = Instant::now();
            for h in handles {
                s.get_attributes(*h, attrs).unwrap();
            }
            t.elapsed()
        };
        let r_base = read(&secret, &BASE_ATTRS);
        let r_class = read(&secret, &[AttributeType::Class]);
        let r_fixed = read(&secret, &FIXED_ATTRS);
        let r_secret = read(&secret, &SECRET_ATTRS);
        let r_label = read(&secret, &[AttributeType::Label, AttributeType::Id]);
        println!(
            "breakdown, round {round}, {} secret keys, {} private keys of {} token objects (of {n} made):",
            secret.len(),
            private.len(),
            all.len()
        );
        for (what, d) in [
            ("C_FindObjects, CKO_SECRET_KEY", f_secret),
            ("C_FindObjects, CKO_PRIVATE_KEY", f_private),
            ("C_FindObjects, every token object", f_all),
            ("C_FindObjects, empty template", f_empty),
            ("read 9 attributes (2 calls, base commit)", r_base),
            ("read CKA_CLASS (1 call)", r_class),
            ("read 6 fixed-size attributes (1 call)", r_fixed),
            ("read 7 attributes of a secret key (2 calls)", r_secret),
            ("read CKA_LABEL, CKA_ID (2 calls)", r_label),
        ] {
            println!("  {what:<44} {:>7.3} s", secs(d));
        }
    }
    drop(s);
    p.finalize().unwrap();
}

/// One `hsm-bridge keys --json`: wall time and the number of keys it printed.
fn enumeration(fx: &Fixture) -> (Duration, usize) {
    let _login = common::token_login_lock();
    let t = Instant::now();
    let out = Command::new(binary())
        .args(["keys", "--json", "--config"])
        .arg(&fx.config)
        .env_remove("SOFTHSM2_CONF")
        .output()
        .unwrap();
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "hsm-bridge keys: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (took, v.as_array().map_or(0, Vec::len))
}

/// One walk through ListSourceKeys, page by page: its time, the time of each page, the
/// labels listed. `between` runs after each page (keys added or removed).
async fn walk(
    d: &Daemon,
    page: u32,
    mut between: impl FnMut(usize),
) -> (Duration, Vec<Duration>, Vec<String>) {
    let mut c = d.client("cckm").await;
    let mut token = String::new();
    let mut labels = Vec::new();
    let mut pages = Vec::new();
    let mut busy = Duration::ZERO;
    loop {
        let t = Instant::now();
        let r = c
            .list_source_keys(proto::ListSourceKeysRequest {
                page_size: page,
                page_token: token.clone(),
                exportable_only: false,
            })
            .await
            .unwrap()
            .into_inner();
        let took = t.elapsed();
        busy += took;
        pages.push(took);
        labels.extend(r.keys.into_iter().map(|k| k.label));
        if r.next_page_token.is_empty() {
            break;
        }
        between(pages.len());
        token = r.next_page_token;
    }
    (busy, pages, labels)
}

fn main() {
    let a = args();
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("listing-softhsm-{}", a.keys));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            dir.join("tokens").display()
        ),
    )
    .unwrap();
    // This process's own module loads: set now, while this is the only thread.
    hsm_bridge::hsm::raw::set_module_env([(
        &"SOFTHSM2_CONF".to_string(),
        &conf.to_string_lossy().into_owned(),
    )]);
    println!(
        "hsm-bridge listing bench: {} keys, pages of {}, {} rounds, binary {}",
        a.keys,
        a.page,
        a.rounds,
        binary().display()
    );
    token(&dir, a.keys);
    let mut fx = Fixture {
        kind: TokenKind::SoftHsm,
        dir: dir.clone(),
        module: common::module(),
        conf,
        config: PathBuf::new(),
        aes: Default::default(),
        wk: common::wrapping_keys(),
    };
    fx.config = common::write_config(&fx, "hsm-bridge.toml", |c| c);

    breakdown(a.keys);

    let mut enums = Vec::new();
    for _ in 0..a.rounds {
        let (took, n) = enumeration(&fx);
        println!(
            "enumeration  hsm-bridge keys --json: {n} keys in {:.2} s",
            secs(took)
        );
        enums.push(took);
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (config, _audit) = daemon_config(&fx, "listing", "", None);
    let d = Daemon::start(&config, &[]);
    let mut walks = Vec::new();
    let mut firsts = Vec::new();
    for round in 1..=a.rounds {
        let (busy, pages, labels) = rt.block_on(walk(&d, a.page, |_| {}));
        let first = pages.first().copied().unwrap_or_default();
        let rest: Duration = pages.iter().skip(1).sum();
        println!(
            "paged   round {round}: {} keys in {} pages, {:.2} s (first page {:.2} s, the other {} {:.2} s)",
            labels.len(),
            pages.len(),
            secs(busy),
            secs(first),
            pages.len() - 1,
            secs(rest)
        );
        walks.push(busy);
        firsts.push(first);
    }

    // A walk while the token changes: after the second page, a key is added past the cursor
    // and the last key is removed; both undone after the walk.
    let p = module();
    let s = login(&p, true);
    let mut added = None;
    let last = label(a.keys - 1);
    let (busy, pages, labels) = rt.block_on(walk(&d, a.page, |n| {
        if n == 2 {
            added = Some(s.create_object(&aes_template(a.keys)).unwrap());
            let gone = s
                .find_objects(&[Attribute::Label(last.clone().into_bytes())])
                .unwrap();
            for h in gone {
                s.destroy_object(h).unwrap();
            }
        }
    }));
    println!(
        "paged   with one key added and one removed after page 2: {} keys in {} pages, {:.2} s; added listed {}, removed listed {}",
        labels.len(),
        pages.len(),
        secs(busy),
        labels.iter().filter(|l| **l == label(a.keys)).count(),
        labels.iter().filter(|l| **l == last).count()
    );
    if let Some(h) = added {
        s.destroy_object(h).unwrap();
    }
    s.create_object(&aes_template(a.keys - 1)).unwrap();
    drop(s);
    p.finalize().unwrap();

    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (e, w, f) = (median(enums), median(walks), median(firsts));
    println!(
        "\nmedian: one enumeration (hsm-bridge keys --json) {:.2} s; a first page {:.2} s; the whole listing in pages of {} {:.2} s; ratio to the enumeration {:.2}, to a first page {:.2}",
        secs(e),
        secs(f),
        a.page,
        secs(w),
        secs(w) / secs(e),
        secs(w) / secs(f)
    );
}
