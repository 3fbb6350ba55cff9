//! The deployment files agree with the config they carry: the Kubernetes manifests
//! (deploy/kubernetes/: probes on the health listener, every file the config reads under a
//! mounted volume, Secrets that exist, non-root, the replicas' shared journal) and the
//! systemd unit (deploy/systemd/: hardening, the PIN credential where the config reads it,
//! `systemd-analyze verify` where systemd is installed).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hsm_bridge::config::Config;
use yaml_rust2::{Yaml, YamlLoader};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml(name: &str) -> Vec<Yaml> {
    let path = root().join("deploy/kubernetes").join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn s(y: &Yaml) -> &str {
    y.as_str().unwrap_or_else(|| panic!("not a string: {y:?}"))
}

fn port_of(addr: &str) -> i64 {
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

#[test]
fn kubernetes_manifests_agree_with_the_config() {
    let kustomization = &yaml("kustomization.yaml")[0];
    for r in kustomization["resources"].as_vec().unwrap() {
        assert!(
            root().join("deploy/kubernetes").join(s(r)).is_file(),
            "{r:?}"
        );
    }
    let cm = &yaml("configmap.yaml")[0];
    let text = s(&cm["data"]["hsm-bridge.toml"]);
    let cfg = Config::parse(text, Path::new("/etc/hsm-bridge/hsm-bridge.toml"))
        .unwrap_or_else(|e| panic!("the ConfigMap's config: {e}"));
    assert!(
        cfg.journal.url.starts_with("postgres://"),
        "replicas share one journal"
    );
    // over TLS that nothing on the way can turn off: the daemon requires it (ca_file), and
    // the URL says so to whoever reads or copies it
    assert!(cfg.journal.postgres_tls(), "{}", cfg.journal.url);
    assert!(
        cfg.journal.url.ends_with("?sslmode=require"),
        "{}",
        cfg.journal.url
    );
    let health = cfg
        .server
        .health_listen
        .as_deref()
        .expect("a plain-text health listener for the kubelet");

    let d = &yaml("deployment.yaml")[0];
    assert_eq!(s(&d["kind"]), "Deployment");
    assert!(d["spec"]["replicas"].as_i64().unwrap() >= 2);
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert!(!c["resources"]["requests"]["cpu"].is_badvalue());
    assert!(!c["resources"]["requests"]["memory"].is_badvalue());
    let args: Vec<&str> = c["args"].as_vec().unwrap().iter().map(s).collect();
    assert_eq!(
        args[..3],
        ["serve", "--config", "/etc/hsm-bridge/hsm-bridge.toml"]
    );

    // ports and probes
    let ports: HashMap<&str, i64> = c["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|p| (s(&p["name"]), p["containerPort"].as_i64().unwrap()))
        .collect();
    assert_eq!(ports["grpc"], port_of(&cfg.server.listen));
    assert_eq!(ports["health"], port_of(health));
    assert_eq!(
        ports["metrics"],
        port_of(cfg.metrics.listen.as_deref().unwrap())
    );

    // The NetworkPolicy: the gRPC and metrics ports each from named peers only, and no rule
    // for the plain-text probe port (the kubelet reaches it from the node).
    let np = &yaml("networkpolicy.yaml")[0];
    assert_eq!(s(&np["kind"]), "NetworkPolicy");
    assert_eq!(
        np["spec"]["podSelector"]["matchLabels"],
        d["spec"]["selector"]["matchLabels"]
    );
    assert!(
        np["spec"]["policyTypes"]
            .as_vec()
            .unwrap()
            .iter()
            .any(|t| s(t) == "Ingress")
    );
    let mut opened = Vec::new();
    for rule in np["spec"]["ingress"].as_vec().unwrap() {
        let from = rule["from"].as_vec().expect("every rule names its peers");
        assert!(!from.is_empty(), "{rule:?}");
        for p in rule["ports"].as_vec().expect("every rule names its ports") {
            opened.push(s(&p["port"]).to_string());
        }
    }
    opened.sort();
    assert_eq!(opened, ["grpc", "metrics"]);
    for (probe, service) in [
        ("readinessProbe", "hsmbridge.v1.KeySourceBridge"),
        ("livenessProbe", "hsm-bridge.process"),
        ("startupProbe", "hsm-bridge.process"),
    ] {
        let g = &c[probe]["grpc"];
        assert_eq!(g["port"].as_i64(), Some(port_of(health)), "{probe}");
        assert_eq!(s(&g["service"]), service, "{probe}");
    }

    // every file the config reads is in a mounted volume, and every volume's source exists
    let mounts: Vec<(&str, &str, Option<&str>)> = c["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|m| (s(&m["name"]), s(&m["mountPath"]), m["subPath"].as_str()))
        .collect();
    let under = |path: &Path| {
        mounts.iter().find(|(_, at, sub)| match sub {
            Some(_) => path == Path::new(at),
            None => path.starts_with(at),
        })
    };
    let luna = PathBuf::from(&cfg.hsm.module_env["ChrystokiConfigurationPath"]);
    let mut read: Vec<PathBuf> = vec![
        cfg.path.clone(),
        cfg.hsm.pin_file.clone().unwrap(),
        cfg.server.tls_cert.clone().unwrap(),
        cfg.server.tls_key.clone().unwrap(),
        cfg.server.client_ca.clone().unwrap(),
        cfg.journal.password_file.clone().unwrap(),
        cfg.journal.ca_file.clone().unwrap(),
        cfg.journal.pin_marker.clone().unwrap(),
        luna.join("Chrystoki.conf"),
    ];
    read.extend(cfg.oci.connections.values().map(|c| c.config_file.clone()));
    let secrets: HashMap<String, Vec<String>> = yaml("secrets.example.yaml")
        .iter()
        .map(|y| {
            let keys = y["stringData"]
                .as_hash()
                .unwrap()
                .keys()
                .map(|k| s(k).to_string())
                .collect();
            (s(&y["metadata"]["name"]).to_string(), keys)
        })
        .collect();
    let volumes: HashMap<&str, &Yaml> = pod["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|v| (s(&v["name"]), v))
        .collect();
    for path in &read {
        let (name, at, sub) =
            under(path).unwrap_or_else(|| panic!("{} is in no volume", path.display()));
        let v = volumes[name];
        if let Some(secret) = v["secret"]["secretName"].as_str() {
            let keys = secrets
                .get(secret)
                .unwrap_or_else(|| panic!("no Secret {secret}"));
            let file = path
                .strip_prefix(at)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            assert!(
                keys.contains(&file),
                "{}: Secret {secret} has no key {file}",
                path.display()
            );
            // root's, 0440, the pod's group: what the daemon's secret-file check accepts
            assert_eq!(v["secret"]["defaultMode"].as_i64(), Some(0o440), "{name}");
        } else if let Some(map) = v["configMap"]["name"].as_str() {
            assert_eq!(map, s(&cm["metadata"]["name"]));
            assert_eq!(*sub, Some("hsm-bridge.toml"));
        } else {
            assert!(!v["emptyDir"].is_badvalue(), "{name}");
        }
    }
    // the OCI API key the profile names is in the oci Secret too
    assert!(secrets["hsm-bridge-oci"].contains(&"api_key.pem".to_string()));

    // the Service and the PDB select the pods
    let labels = &d["spec"]["template"]["metadata"]["labels"];
    let svc = &yaml("service.yaml")[0];
    assert_eq!(svc["spec"]["selector"], *labels);
    for p in svc["spec"]["ports"].as_vec().unwrap() {
        assert!(ports.contains_key(s(&p["targetPort"])), "{p:?}");
    }
    let pdb = &yaml("pdb.yaml")[0];
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], *labels);
    assert_eq!(d["spec"]["selector"]["matchLabels"], *labels);
}

/// `key=value` lines of a unit file (repeated keys collected).
fn unit_keys(text: &str) -> HashMap<String, Vec<String>> {
    let mut keys: HashMap<String, Vec<String>> = HashMap::new();
    for l in text.lines().map(str::trim) {
        if l.starts_with('#') || l.starts_with('[') || l.is_empty() {
            continue;
        }
        let (k, v) = l
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {l}"));
        keys.entry(k.into()).or_default().push(v.into());
    }
    keys
}

#[test]
fn the_systemd_unit_is_hardened_and_matches_its_config() {
    let unit = std::fs::read_to_string(root().join("deploy/systemd/hsm-bridge.service")).unwrap();
    let k = unit_keys(&unit);
    let one = |key: &str| {
        k.get(key)
            .map(|v| v[0].as_str())
            .unwrap_or_else(|| panic!("no {key}="))
    };
    for (key, want) in [
        ("Type", "notify"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("LimitCORE", "0"),
        ("MemoryDenyWriteExecute", "yes"),
        ("User", "hsm-bridge"),
        ("StateDirectory", "hsm-bridge"),
        ("LogsDirectory", "hsm-bridge"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
    ] {
        assert_eq!(one(key), want, "{key}");
    }
    assert!(!one("WatchdogSec").is_empty());
    let exec = one("ExecStart");
    assert!(
        exec.contains(" serve --config /etc/hsm-bridge/hsm-bridge.toml"),
        "{exec}"
    );
    let (credential, _) = one("LoadCredential").split_once(':').unwrap();

    // The install steps leave the config where User= can read it: the folder and the file
    // in the daemon's group (root:root 0750 kept it out). (They are run in full by
    // the_systemd_install_steps_start_the_service.)
    assert!(
        unit.contains("deploy/systemd/install.sh"),
        "the unit's header names the steps"
    );
    let script = std::fs::read_to_string(root().join("deploy/systemd/install.sh")).unwrap();
    let step = |path: &str| {
        script
            .lines()
            .find(|l| l.trim_start().starts_with("install ") && l.contains(path))
            .unwrap_or_else(|| panic!("no install step for {path}"))
    };
    let folder = step("\"$ROOT/etc/hsm-bridge\" ");
    assert!(
        folder.contains("-g \"$user\"") && folder.contains("-m 0750"),
        "{folder}"
    );
    let config = step("\"$ROOT/etc/hsm-bridge/hsm-bridge.toml\"");
    assert!(
        config.contains("-g \"$user\"") && config.contains("-m 0640"),
        "{config}"
    );

    // The config it runs: the PIN from the credential, state and logs in the unit's folders.
    let text = std::fs::read_to_string(root().join("deploy/systemd/hsm-bridge.toml")).unwrap();
    let creds = "/run/credentials/hsm-bridge.service";
    let cfg = Config::parse(
        &text.replace("${CREDENTIALS_DIRECTORY}", creds),
        Path::new("/etc/hsm-bridge/hsm-bridge.toml"),
    )
    .unwrap_or_else(|e| panic!("deploy/systemd/hsm-bridge.toml: {e}"));
    assert!(text.contains("${CREDENTIALS_DIRECTORY}"));
    assert_eq!(cfg.hsm.pin_file.unwrap(), Path::new(creds).join(credential));
    assert!(cfg.journal.url.starts_with("sqlite:/var/lib/hsm-bridge/"));
    assert!(cfg.audit.path.starts_with("/var/log/hsm-bridge/"));

    // systemd's own check, where systemd is installed (the binary path made real)
    if Path::new("/usr/bin/systemd-analyze").exists() {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("hsm-bridge.service");
        std::fs::write(
            &copy,
            unit.replace(
                "/usr/local/bin/hsm-bridge",
                env!("CARGO_BIN_EXE_hsm-bridge"),
            ),
        )
        .unwrap();
        let out = std::process::Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copy)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "systemd-analyze verify: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The header's `kubectl create secret` commands make exactly the Secrets and keys the
/// Deployment mounts (`kubectl create secret tls` cannot add `ca.crt`); the trial journal
/// database is the one the ConfigMap's URL names, and speaks TLS with SCRAM only.
#[test]
fn the_secrets_commands_and_the_trial_journal_agree_with_the_manifests() {
    let text =
        std::fs::read_to_string(root().join("deploy/kubernetes/secrets.example.yaml")).unwrap();
    let mut commands: Vec<String> = Vec::new();
    for line in text.lines().take_while(|l| l.starts_with('#')) {
        let l = line.trim_start_matches('#').trim();
        if l.starts_with("kubectl create secret") {
            commands.push(l.trim_end_matches('\\').to_string());
        } else if let Some(last) = commands.last_mut()
            && last.ends_with(' ')
            && l.starts_with("--from-file")
        {
            last.push_str(l.trim_end_matches('\\'));
        }
    }
    let made: HashMap<String, Vec<String>> = commands
        .iter()
        .map(|c| {
            let words: Vec<&str> = c.split_whitespace().collect();
            assert_eq!(words[3], "generic", "{c}");
            let keys = words
                .iter()
                .filter_map(|w| w.strip_prefix("--from-file="))
                .map(|f| f.split('=').next().unwrap().to_string())
                .filter(|k| k != "...")
                .collect();
            (words[4].to_string(), keys)
        })
        .collect();
    for y in yaml("secrets.example.yaml") {
        let name = s(&y["metadata"]["name"]);
        let want: Vec<String> = y["stringData"]
            .as_hash()
            .unwrap()
            .keys()
            .map(|k| s(k).to_string())
            .collect();
        assert_eq!(made.get(name), Some(&want), "the command for {name}");
    }

    // the trial journal database: where the ConfigMap's URL points, TLS and SCRAM only
    let cm = &yaml("configmap.yaml")[0];
    let cfg = Config::parse(
        s(&cm["data"]["hsm-bridge.toml"]),
        Path::new("/etc/hsm-bridge/hsm-bridge.toml"),
    )
    .unwrap();
    let Some(hsm_bridge::config::JournalStore::Postgres(pg)) = &cfg.journal.store else {
        panic!("a PostgreSQL journal")
    };
    let host = match &pg.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        other => panic!("{other:?}"),
    };
    let trial = YamlLoader::load_from_str(
        &std::fs::read_to_string(root().join("deploy/kubernetes/trial/journal-postgres.yaml"))
            .unwrap(),
    )
    .unwrap();
    let kind = |k: &str| trial.iter().find(|y| s(&y["kind"]) == k).unwrap();
    let service = kind("Service");
    assert_eq!(s(&service["metadata"]["name"]), host);
    assert_eq!(
        service["spec"]["ports"][0]["port"].as_i64(),
        Some(pg.get_ports()[0] as i64)
    );
    let hba = s(&kind("ConfigMap")["data"]["pg_hba.conf"]);
    for line in hba
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let w: Vec<&str> = line.split_whitespace().collect();
        assert!(
            w[0] == "local" || (w[0] == "hostssl" && w[4] == "scram-sha-256"),
            "{line}"
        );
    }
    let pod = &kind("StatefulSet")["spec"]["template"]["spec"];
    let args: Vec<&str> = pod["containers"][0]["args"]
        .as_vec()
        .unwrap()
        .iter()
        .map(s)
        .collect();
    assert!(args.contains(&"ssl=on"), "{args:?}");
    let env: HashMap<&str, &str> = pod["containers"][0]["env"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|e| (s(&e["name"]), e["value"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(Some(env["POSTGRES_USER"]), pg.get_user());
    assert_eq!(Some(env["POSTGRES_DB"]), pg.get_dbname());
}

/// A system user made for one test, removed when it ends.
struct ScratchUser(String);

impl Drop for ScratchUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("userdel").arg(&self.0).output();
    }
}

/// The systemd install steps, followed in order (deploy/systemd/install.sh, in a scratch
/// root, for a user of its own), give a daemon that an unprivileged user starts and that
/// answers SERVING: every file where the config says, each readable by the daemon and its
/// secret-file check content. Only what cannot be on this machine is put in by hand: a
/// SoftHSM2 token instead of the Luna client, the scratch root's paths in the config, and
/// the credential systemd would hand over.
#[test]
fn the_systemd_install_steps_start_the_service() {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;
    if !rustix::process::geteuid().is_root() {
        common::skip_notice("the systemd install steps: they create a user, which needs root");
        return;
    }
    let user = ScratchUser(format!("hsmb{}", std::process::id()));
    let root = common::process_dir("systemd-root");
    let inputs = root.join("inputs");
    std::fs::create_dir_all(&inputs).unwrap();
    let certs = common::daemon::certs();
    // the operator's OCI identity, its key_file where the steps put it
    let id = common::emulator::api_identity(&inputs, "oci");
    let oci_config = inputs.join("oci-config");
    let text = std::fs::read_to_string(&id.config).unwrap();
    std::fs::write(
        &oci_config,
        text.replace(
            &format!("key_file={}", id.key.private_pem.display()),
            "key_file=/etc/hsm-bridge/oci/api_key.pem",
        ),
    )
    .unwrap();
    let pin = inputs.join("pin");
    common::write_private(&pin, format!("{}\n", common::PIN).as_bytes());
    let steps = Command::new("bash")
        .arg(root_dir().join("deploy/systemd/install.sh"))
        .env("ROOT", &root)
        .env("DAEMON_USER", &user.0)
        .env("BINARY", env!("CARGO_BIN_EXE_hsm-bridge"))
        .env("TLS_CERT", certs.join("server.pem"))
        .env("TLS_KEY", certs.join("server.key"))
        .env("CLIENT_CA", certs.join("ca.pem"))
        .env("OCI_CONFIG", &oci_config)
        .env("OCI_KEY", &id.key.private_pem)
        .env("PIN_FILE", &pin)
        .output()
        .unwrap();
    assert!(
        steps.status.success(),
        "{}{}",
        String::from_utf8_lossy(&steps.stdout),
        String::from_utf8_lossy(&steps.stderr)
    );

    // A token the daemon's user owns, with its journal record key, instead of a Luna.
    let tokens = root.join("var/lib/softhsm/tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = root.join("var/lib/softhsm/softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    let init = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            "systemd-test",
            "--so-pin",
            "so-pin-1",
            "--pin",
            common::PIN,
        ])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let key = common::pkcs11_tool(
        &common::module(),
        ("SOFTHSM2_CONF", &conf),
        "systemd-test",
        common::PIN,
        &[
            "--keygen",
            "--key-type",
            "GENERIC:32",
            "--label",
            common::RECORD_KEY,
            "--sensitive",
            "--private",
            "--usage-sign",
        ],
    );
    assert!(
        key.status.success(),
        "{}",
        String::from_utf8_lossy(&key.stderr)
    );
    assert!(
        Command::new("chown")
            .arg("-R")
            .arg(format!("{0}:{0}", user.0))
            .arg(root.join("var/lib/softhsm"))
            .status()
            .unwrap()
            .success()
    );

    // The installed config, pointed at the scratch root and the token.
    let etc = root.join("etc/hsm-bridge");
    let config = etc.join("hsm-bridge.toml");
    let installed = std::fs::read_to_string(&config).unwrap();
    let mut text = installed.clone();
    for dir in [
        "/etc/hsm-bridge",
        "/var/lib/hsm-bridge",
        "/var/log/hsm-bridge",
    ] {
        text = text.replace(&format!("\"{dir}"), &format!("\"{}{dir}", root.display()));
    }
    text = text
        .replace("listen = \"0.0.0.0:50051\"", "listen = \"127.0.0.1:0\"")
        .replace("listen = \"127.0.0.1:9464\"", "listen = \"127.0.0.1:0\"")
        .replace(
            "\"/usr/safenet/lunaclient/lib/libCryptoki2_64.so\"",
            &format!("{:?}", common::module()),
        )
        .replace(
            "{ ChrystokiConfigurationPath = \"/etc\" }",
            &format!("{{ SOFTHSM2_CONF = {:?} }}", conf.display().to_string()),
        )
        .replace(
            "token_label = \"bridge-partition\"",
            "token_label = \"systemd-test\"",
        );
    assert_ne!(text, installed);
    std::fs::write(&config, text).unwrap(); // keeps the installed owner and mode
    let api_key = etc.join("oci/config");
    let t = std::fs::read_to_string(&api_key).unwrap();
    std::fs::write(
        &api_key,
        t.replace(
            "key_file=/etc/hsm-bridge",
            &format!("key_file={}/etc/hsm-bridge", root.display()),
        ),
    )
    .unwrap();

    // What LoadCredential= does: the PIN copied where only the service reads it.
    let creds = root.join("run/credentials/hsm-bridge.service");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::copy(etc.join("credentials/pin"), creds.join("pin")).unwrap();
    std::fs::set_permissions(creds.join("pin"), std::fs::Permissions::from_mode(0o400)).unwrap();
    assert!(
        Command::new("chown")
            .arg("-R")
            .arg(format!("{0}:{0}", user.0))
            .arg(&creds)
            .status()
            .unwrap()
            .success()
    );

    // The service, as its user.
    // setpriv execs the daemon in its own process (runuser would wait in another).
    let mut daemon = Command::new("setpriv")
        .arg(format!("--reuid={}", user.0))
        .arg(format!("--regid={}", user.0))
        .args(["--init-groups", "--"])
        .arg(root.join("usr/local/bin/hsm-bridge"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("CREDENTIALS_DIRECTORY", &creds)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(root.join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    let line = common::first_lines(&mut daemon, 1, std::time::Duration::from_secs(60))
        .pop()
        .unwrap_or_default();
    let log = std::fs::read_to_string(root.join("daemon.log")).unwrap_or_default();
    let Some(addr) = line.strip_prefix("hsm-bridge: listening on ") else {
        let _ = daemon.kill();
        panic!("the installed service did not start: {line:?}\n{log}");
    };
    let health = Command::new(root.join("usr/local/bin/hsm-bridge"))
        .args(["health", "--addr", addr, "--ca"])
        .arg(certs.join("ca.pem"))
        .arg("--cert")
        .arg(certs.join("cckm.pem"))
        .arg("--key")
        .arg(certs.join("cckm.key"))
        .output()
        .unwrap();
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert_eq!(
        String::from_utf8_lossy(&health.stdout).trim(),
        "SERVING",
        "{}\n{log}",
        String::from_utf8_lossy(&health.stderr)
    );
    assert!(!log.contains("running as root"), "{log}");
}

fn root_dir() -> PathBuf {
    root()
}

/// The Containerfile makes the image the Deployment expects: built in one stage, run from
/// another with no build tools, as the Deployment's uid, `hsm-bridge` as the entrypoint
/// (the Deployment gives only the arguments), the Luna client's mount point where the
/// config loads it from; the build context never holds the dev tokens' secrets. Where
/// podman or buildah is installed, the image is built.
#[test]
fn the_containerfile_makes_the_image_the_deployment_runs() {
    let text = std::fs::read_to_string(root().join("Containerfile")).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .collect();
    let stages: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("FROM "))
        .map(|(i, _)| i)
        .collect();
    assert!(stages.len() >= 2, "a build stage and a run stage");
    let last = lines[*stages.last().unwrap()..].join("\n");
    for tool in [
        "cargo",
        "rustc",
        "gcc",
        "build-essential",
        "-dev",
        "pkg-config",
    ] {
        let run_lines: Vec<&str> = last
            .lines()
            .filter(|l| !l.starts_with("COPY") && !l.starts_with("ENTRYPOINT"))
            .collect();
        assert!(
            !run_lines.iter().any(|l| l.contains(tool)),
            "no {tool} in the image: {last}"
        );
    }
    assert!(last.contains("COPY --from="), "{last}");

    let d = &yaml("deployment.yaml")[0];
    let pod = &d["spec"]["template"]["spec"];
    let uid = pod["securityContext"]["runAsUser"].as_i64().unwrap();
    assert!(
        last.lines().any(|l| l.starts_with(&format!("USER {uid}"))),
        "runs as the Deployment's uid {uid}: {last}"
    );
    let c = &pod["containers"][0];
    assert!(
        c["command"].is_badvalue(),
        "the Deployment gives only the arguments"
    );
    let entry = last
        .lines()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .expect("an ENTRYPOINT");
    let entry: Vec<String> = serde_json::from_str(entry).unwrap();
    assert!(
        entry.len() == 1 && entry[0].ends_with("/hsm-bridge"),
        "{entry:?}"
    );
    assert!(
        last.contains(&format!("COPY --from=build /hsm-bridge {}", entry[0])),
        "{last}"
    );
    // the Luna client where the ConfigMap's config loads it from
    let cm = &yaml("configmap.yaml")[0];
    let cfg = Config::parse(
        s(&cm["data"]["hsm-bridge.toml"]),
        Path::new("/etc/hsm-bridge/hsm-bridge.toml"),
    )
    .unwrap();
    let client = cfg.hsm.module.parent().unwrap().parent().unwrap();
    assert!(
        last.contains(client.to_str().unwrap()),
        "the Luna client's mount point {}: {last}",
        client.display()
    );
    // the build context holds no dev secrets and no build output
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    for never in [".softhsm", "target", ".kryoptic"] {
        assert!(
            ignore.lines().any(|l| l.trim() == never),
            "{never} in .dockerignore"
        );
    }

    let tool = ["podman", "buildah"].into_iter().find(|t| {
        std::process::Command::new(t)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let Some(tool) = tool else {
        common::skip_notice("the container build: neither podman nor buildah is installed");
        return;
    };
    let args: &[&str] = match tool {
        "podman" => &["build", "-t", "hsm-bridge-test", "-f", "Containerfile", "."],
        _ => &["bud", "-t", "hsm-bridge-test", "-f", "Containerfile", "."],
    };
    let out = std::process::Command::new(tool)
        .current_dir(root())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{tool} build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
