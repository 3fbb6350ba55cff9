//! A throw-away PostgreSQL server for the journal tests: Debian's `postgresql` binaries
//! (`./softhsm-setup.sh --with-postgres`), a cluster made with initdb under target/tmp/,
//! run by pg_ctl as an unprivileged user (the `postgres` account when the tests run as
//! root: initdb refuses root), listening on 127.0.0.1 and a Unix socket in its folder, and
//! stopped when the test is done. The journal's user has a password (scram-sha-256 over
//! TCP), in a file the daemon reads; the test itself administers through the socket.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};

use super::{process_dir, write_private};

/// The journal's database user.
pub(crate) const USER: &str = "hsm_bridge";

pub(crate) struct Postgres {
    pub dir: PathBuf,
    pub port: u16,
    /// The password, in a file only its owner reads (for `journal.password_file`).
    pub password_file: PathBuf,
    bin: PathBuf,
    data: PathBuf,
    socket: PathBuf,
    run_as: Option<String>,
    /// TLS on (`start_tls`): the server's certificate and key, in its data folder.
    tls: bool,
}

/// The newest installed server's binaries, if any.
fn bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, b)| b)
}

impl Postgres {
    /// Starts a fresh cluster named `name`. Without the server binaries the test fails,
    /// saying how to install them; `HSM_BRIDGE_SKIP_POSTGRES=1` turns that into a skip that
    /// the test run prints (`.ci/run` never sets it).
    pub(crate) fn start(name: &str) -> Option<Postgres> {
        Self::start_with(name, None)
    }

    /// As [`Postgres::start`], with TLS on: `cert` and `key` (PEM) are the server's.
    pub(crate) fn start_tls(
        name: &str,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Option<Postgres> {
        Self::start_with(name, Some((cert, key)))
    }

    fn start_with(
        name: &str,
        tls: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Option<Postgres> {
        let Some(bin) = bin_dir() else {
            let msg = "PostgreSQL server binaries missing (/usr/lib/postgresql/*/bin/initdb): run ./softhsm-setup.sh --with-postgres";
            if std::env::var("HSM_BRIDGE_SKIP_POSTGRES").as_deref() == Ok("1") {
                super::skip_notice(msg);
                return None;
            }
            panic!("{msg} (or set HSM_BRIDGE_SKIP_POSTGRES=1 to skip the PostgreSQL tests)");
        };
        let dir = process_dir(&format!("pg-{name}"));
        let run_as = rustix::process::geteuid()
            .is_root()
            .then(|| "postgres".to_string());
        let data = dir.join("data");
        let socket = dir.join("sock");
        std::fs::create_dir_all(&socket).unwrap();
        let mut pw = [0u8; 12];
        openssl::rand::rand_bytes(&mut pw).unwrap();
        let password = hsm_bridge::wrap::hex(&pw);
        // initdb's copy, readable by the server's user; the daemon's, private to the tests.
        let initdb_pw = dir.join("initdb-password");
        std::fs::write(&initdb_pw, format!("{password}\n")).unwrap();
        let password_file = dir.join("journal-password");
        write_private(&password_file, format!("{password}\n").as_bytes());
        let pg = Postgres {
            port: free_port(),
            dir,
            password_file,
            bin,
            data,
            socket,
            run_as,
            tls: tls.is_some(),
        };
        if let Some(user) = &pg.run_as {
            let out = Command::new("chown")
                .args(["-R", &format!("{user}:{user}")])
                .arg(&pg.dir)
                .output()
                .unwrap();
            assert!(out.status.success(), "chown: {}", text(&out));
            // the daemon's copy stays root's own
            std::os::unix::fs::chown(&pg.password_file, Some(0), Some(0)).unwrap();
        }
        pg.ok(pg
            .cmd("initdb")
            .args(["-D"])
            .arg(&pg.data)
            .args([
                "-U",
                USER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", initdb_pw.display())));
        if let Some((cert, key)) = tls {
            // the server reads its key only if it owns it and nobody else may read it
            for (from, to) in [(cert, "server.crt"), (key, "server.key")] {
                let to = pg.data.join(to);
                std::fs::copy(from, &to).unwrap();
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
                if let Some(user) = &pg.run_as {
                    let out = Command::new("chown")
                        .arg(format!("{user}:{user}"))
                        .arg(&to)
                        .output()
                        .unwrap();
                    assert!(out.status.success(), "chown: {}", text(&out));
                }
            }
        }
        pg.start_again();
        Some(pg)
    }

    /// A command of the server's, run as its user.
    fn cmd(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    fn ok(&self, c: &mut Command) -> Output {
        let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
        assert!(out.status.success(), "{c:?}: {}", text(&out));
        out
    }

    /// Starts the server (again, after [`Postgres::stop`]) on the same port and data.
    pub(crate) fn start_again(&self) {
        self.ok(self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off{}",
                self.port,
                self.socket.display(),
                if self.tls { " -c ssl=on" } else { "" }
            ))
            .args(["-w", "-t", "60", "start"]));
    }

    /// Stops the server (fast: open connections are closed).
    pub(crate) fn stop(&self) {
        self.ok(self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"]));
    }

    /// Runs SQL as the journal's user through the Unix socket.
    pub(crate) fn sql(&self, db: &str, sql: &str) -> String {
        let out = self.ok(self
            .cmd("psql")
            .arg("-h")
            .arg(&self.socket)
            .args(["-p", &self.port.to_string(), "-U", USER, "-d", db])
            .args(["-v", "ON_ERROR_STOP=1", "-At", "-c", sql]));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A new, empty database.
    pub(crate) fn create_db(&self, db: &str) {
        self.sql("postgres", &format!("CREATE DATABASE {db}"));
    }

    /// The `[journal]` lines of a daemon config on database `db`.
    pub(crate) fn journal_lines(&self, db: &str) -> String {
        format!(
            "url = \"postgres://{USER}@127.0.0.1:{}/{db}\"\npassword_file = \"{}\"\n",
            self.port,
            self.password_file.display()
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
