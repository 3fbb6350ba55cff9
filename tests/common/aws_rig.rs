//! A test's AWS side: the emulator, the environment the daemon and the command line find
//! their AWS credentials in, a daemon config with the destination `aws-test` on it, and
//! what tests read back from the emulator.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hsm_bridge::proto::{self, key_ref::Key};
use serde_json::Value;

use super::Fixture;
use super::aws_emulator::AwsEmulator;
use super::daemon::{Daemon, certs, destinations_config};

pub(crate) const DEST: &str = "aws-test";

/// The `[destinations.NAME]` table for `emu`.
pub(crate) fn destination(emu: &AwsEmulator, name: &str, allowed: Option<&str>) -> String {
    let allowed = allowed.map_or(String::new(), |a| {
        format!("allowed_endpoints = [\"{a}\"]\n")
    });
    format!(
        "\n[destinations.{name}]\ncloud = \"aws\"\nregion = \"{}\"\naccount = \"{}\"\nendpoint = \"{}\"\n{allowed}profile = \"{}\"\nca_bundle = \"{}\"\ntimeout_ms = 20000\n",
        emu.region,
        emu.account,
        emu.base,
        emu.profile,
        certs().join("ca.pem").display()
    )
}

/// A daemon config on `fx` whose caller `cckm` may import into `grants`, with the
/// destination `aws-test` on `emu` (its endpoint allowed exactly) and metrics on.
pub(crate) fn config(
    fx: &Fixture,
    emu: &AwsEmulator,
    name: &str,
    grants: &[&str],
) -> (PathBuf, PathBuf) {
    destinations_config(
        fx,
        name,
        grants,
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:0\"\n{}",
            destination(emu, DEST, Some(&emu.base))
        ),
    )
}

/// The environment the daemon and the command line find their AWS credentials in: the
/// emulator's credentials file, no shared config, no instance metadata.
pub(crate) fn aws_env(emu: &AwsEmulator, dir: &Path) -> Vec<(String, String)> {
    vec![
        (
            "AWS_SHARED_CREDENTIALS_FILE".into(),
            emu.credentials_file.display().to_string(),
        ),
        (
            "AWS_CONFIG_FILE".into(),
            dir.join("no-aws-config").display().to_string(),
        ),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
    ]
}

pub(crate) fn borrowed(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

pub(crate) fn start(config: &Path, env: &[(String, String)]) -> Daemon {
    Daemon::start_with_env(config, &borrowed(env))
}

/// A test's emulator (started with `args`; `account`: the destination's account, if not
/// the emulator's), the AWS environment, and a daemon config granting `cckm` the
/// destination.
pub(crate) struct Rig {
    pub emu: AwsEmulator,
    pub env: Vec<(String, String)>,
    pub config: PathBuf,
    pub audit: PathBuf,
}

pub(crate) fn rig(fx: &Fixture, name: &str, args: &[&str], account: Option<&str>) -> Rig {
    let dir = fx.dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut emu = AwsEmulator::start_with(&dir, args);
    if let Some(a) = account {
        emu.account = a.into();
    }
    let env = aws_env(&emu, &dir);
    let (config, audit) = config(fx, &emu, name, &[DEST]);
    Rig {
        emu,
        env,
        config,
        audit,
    }
}

impl Rig {
    pub(crate) fn daemon(&self) -> Daemon {
        start(&self.config, &self.env)
    }
}

pub(crate) fn label(l: &str) -> Option<proto::KeyRef> {
    Some(proto::KeyRef {
        key: Some(Key::Label(l.into())),
    })
}

/// The emulator's signed requests of operation `op`.
pub(crate) async fn calls(emu: &AwsEmulator, op: &str) -> usize {
    emu.requests()
        .await
        .iter()
        .filter(|r| r["op"] == op)
        .count()
}

/// Polls `emu` until `done` says yes about key `arn` (at most 30 s).
pub(crate) async fn until_key(emu: &AwsEmulator, arn: &str, done: impl Fn(&Value) -> bool) {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        if done(&emu.key(arn).await) {
            return;
        }
        assert!(Instant::now() < end, "{}", emu.key(arn).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) fn materials(key: &Value) -> Vec<Value> {
    key["materials"].as_array().cloned().unwrap_or_default()
}
