//! Where the daemon listens, and which listener, TLS and client settings go together.

use std::path::PathBuf;

use super::ServerConfig;

/// Where the daemon listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Listen {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

impl ServerConfig {
    /// Checks that the listener, TLS and clients settings make a safe combination:
    /// plain text only on loopback or a Unix socket and only with `plaintext = true`; TLS
    /// needs a certificate, its key and a client CA, because callers are identified by
    /// their certificate. Errors name the setting.
    pub(crate) fn listen(&self) -> Result<Listen, super::ConfigError> {
        self.listen_text().map_err(super::ConfigError::Listen)
    }

    fn listen_text(&self) -> Result<Listen, String> {
        let listen = match self.listen.strip_prefix("unix:") {
            Some("") => return Err("server.listen = \"unix:\" names no socket path".into()),
            Some(path) => Listen::Unix(PathBuf::from(path)),
            None => Listen::Tcp(self.listen.parse().map_err(|_| {
                format!(
                    "server.listen = {:?} is not host:port with an IP address (e.g. \"127.0.0.1:50051\") or unix:/path",
                    self.listen
                )
            })?),
        };
        let tls_set = self.tls_cert.is_some() || self.tls_key.is_some() || self.client_ca.is_some();
        match (&listen, self.plaintext) {
            (Listen::Unix(_), false) => Err(
                "server.listen is a Unix socket, which is served in plain text only: set server.plaintext = true (the socket is created with mode 0600)".into(),
            ),
            (_, true) if tls_set => Err(
                "server.plaintext = true together with tls_cert/tls_key/client_ca: choose one".into(),
            ),
            (Listen::Tcp(addr), true) if !addr.ip().is_loopback() => Err(format!(
                "server.plaintext = true is allowed only on loopback addresses or Unix sockets, not {addr}"
            )),
            (_, true) => Ok(listen),
            (Listen::Tcp(_), false) => {
                let missing: Vec<&str> = [
                    ("server.tls_cert", self.tls_cert.is_none()),
                    ("server.tls_key", self.tls_key.is_none()),
                    ("server.client_ca", self.client_ca.is_none()),
                ]
                .into_iter()
                .filter_map(|(name, absent)| absent.then_some(name))
                .collect();
                if !missing.is_empty() {
                    return Err(format!(
                        "TLS listener needs {} (callers are identified by client certificate); or, on loopback only, set server.plaintext = true",
                        missing.join(", ")
                    ));
                }
                if !self.clients.iter().any(|c| c.subject_cn.is_some()) {
                    return Err("server.client_ca is set but no [[server.clients]] has a subject_cn: no caller could do anything".into());
                }
                Ok(listen)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClientConfig, Operation};

    fn server(listen: &str, plaintext: bool, tls: bool) -> ServerConfig {
        let mut s = ServerConfig {
            listen: listen.into(),
            plaintext,
            ..ServerConfig::default()
        };
        if tls {
            s.tls_cert = Some("c".into());
            s.tls_key = Some("k".into());
            s.client_ca = Some("ca".into());
            s.clients.push(ClientConfig {
                name: "a".into(),
                subject_cn: Some("a".into()),
                unix_uid: None,
                loopback: false,
                operations: vec![Operation::List],
                keys: vec!["*".into()],
                oci_endpoints: None,
                oci_compartments: None,
                destinations: Vec::new(),
            });
        }
        s
    }

    #[test]
    fn listener_combinations() {
        assert!(server("127.0.0.1:1", true, false).listen().is_ok());
        assert!(server("[::1]:1", true, false).listen().is_ok());
        assert!(server("unix:/run/hb.sock", true, false).listen().is_ok());
        assert!(server("0.0.0.0:1", false, true).listen().is_ok());
        let e = server("0.0.0.0:1", true, false)
            .listen()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("server.plaintext") && e.contains("0.0.0.0:1"),
            "{e}"
        );
        let e = server("unix:/run/hb.sock", false, false)
            .listen()
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.plaintext = true"), "{e}");
        let e = server("127.0.0.1:1", false, false)
            .listen()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("server.tls_cert") && e.contains("server.client_ca"),
            "{e}"
        );
        let e = server("127.0.0.1:1", true, true)
            .listen()
            .unwrap_err()
            .to_string();
        assert!(e.contains("choose one"), "{e}");
        let e = server("localhost:50051", true, false)
            .listen()
            .unwrap_err()
            .to_string();
        assert!(e.contains("IP address"), "{e}");
        let mut no_cn = server("0.0.0.0:1", false, true);
        no_cn.clients[0].subject_cn = None;
        no_cn.clients[0].loopback = true;
        assert!(
            no_cn
                .listen()
                .unwrap_err()
                .to_string()
                .contains("subject_cn")
        );
    }
}
