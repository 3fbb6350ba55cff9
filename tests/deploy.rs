//! The deployment files agree with the config they carry: the Kubernetes manifests
//! (deploy/kubernetes/: probes on the health listener, every file the config reads under a
//! mounted volume, Secrets that exist, non-root, the replicas' shared journal) and the
//! systemd unit (deploy/systemd/: hardening, the PIN credential where the config reads it,
//! `systemd-analyze verify` where systemd is installed).

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

    // The install steps in the header leave the config where User= can read it: the folder
    // and the file in the daemon's group (root:root 0750 kept it out).
    let steps: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("#   install "))
        .collect();
    let step = |path: &str| {
        steps
            .iter()
            .find(|l| l.split('#').next().unwrap().trim_end().ends_with(path))
            .unwrap_or_else(|| panic!("no install step for {path}: {steps:?}"))
    };
    let folder = step("/etc/hsm-bridge");
    assert!(
        folder.contains("-g hsm-bridge") && folder.contains("-m 0750"),
        "{folder}"
    );
    let config = step("/etc/hsm-bridge/hsm-bridge.toml");
    assert!(
        config.contains("-g hsm-bridge") && config.contains("-m 0640"),
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
