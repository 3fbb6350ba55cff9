//! `health`: the daemon's `grpc.health.v1.Health` answer, for a person or a script (exit 0
//! only when SERVING). Plain text without `--ca`; TLS with it, and mutual TLS with `--cert`
//! and `--key`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use super::{Error, io};

#[derive(Debug, Args)]
pub(crate) struct HealthArgs {
    /// The daemon's address, HOST:PORT (e.g. 127.0.0.1:50051).
    #[arg(long, value_name = "HOST:PORT")]
    pub addr: String,
    #[command(flatten)]
    pub tls: Tls,
    /// The service to ask about ("" is the daemon as a whole).
    #[arg(long, default_value = "hsmbridge.v1.KeySourceBridge")]
    pub service: String,
}

/// How the command line's connection to a running daemon is secured.
#[derive(Debug, Clone, Args)]
pub(crate) struct Tls {
    /// CA certificate (PEM) that the daemon's certificate must chain to: connect with TLS.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM), for a daemon that asks for one.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// The name the daemon's certificate must carry (default: the host of --addr).
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
    /// Give up connecting (and, for a health check, waiting) after this many seconds.
    #[arg(long, default_value_t = 5)]
    pub timeout_secs: u64,
}

/// A running daemon, as the command line reaches it.
#[derive(Debug)]
pub(crate) struct Connect {
    pub addr: String,
    pub tls: Tls,
}

pub(super) fn run(a: HealthArgs, out: &mut dyn Write) -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Io(format!("tokio runtime: {e}")))?;
    let status = rt.block_on(check(&a))?;
    writeln!(out, "{}", status.as_str_name()).map_err(io)?;
    if status == ServingStatus::Serving {
        Ok(())
    } else {
        Err(Error::Io(format!(
            "{} is {} ({})",
            a.addr,
            status.as_str_name(),
            if a.service.is_empty() {
                "the daemon"
            } else {
                &a.service
            }
        )))
    }
}

async fn check(a: &HealthArgs) -> Result<ServingStatus, Error> {
    let c = &Connect {
        addr: a.addr.clone(),
        tls: a.tls.clone(),
    };
    let channel = c
        .channel(Some(Duration::from_secs(c.tls.timeout_secs)))
        .await?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: a.service.clone(),
        })
        .await
        .map_err(|s| Error::Io(c.refused(&s)))?;
    Ok(ServingStatus::try_from(answer.into_inner().status).unwrap_or(ServingStatus::Unknown))
}

impl Connect {
    /// A channel to the daemon (TLS with `--ca`, mutual with `--cert`), each call timing
    /// out after `call_timeout`.
    pub(super) async fn channel(
        &self,
        call_timeout: Option<Duration>,
    ) -> Result<tonic::transport::Channel, Error> {
        let read =
            |p: &PathBuf| std::fs::read(p).map_err(|e| Error::Io(format!("{}: {e}", p.display())));
        let scheme = if self.tls.ca.is_some() {
            "https"
        } else {
            "http"
        };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{}", self.addr))
            .map_err(|e| Error::Usage(format!("--addr {}: {e}", self.addr)))?
            .connect_timeout(Duration::from_secs(self.tls.timeout_secs));
        if let Some(t) = call_timeout {
            ep = ep.timeout(t);
        }
        if let Some(ca) = &self.tls.ca {
            let host = self
                .addr
                .rsplit_once(':')
                .map_or(self.addr.as_str(), |(h, _)| h);
            let mut tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read(ca)?))
                .domain_name(
                    self.tls
                        .server_name
                        .clone()
                        .unwrap_or_else(|| host.to_string()),
                );
            if let (Some(cert), Some(key)) = (&self.tls.cert, &self.tls.key) {
                let key = zeroize::Zeroizing::new(read(key)?);
                tls = tls.identity(Identity::from_pem(read(cert)?, &key[..]));
            }
            ep = ep
                .tls_config(tls)
                .map_err(|e| Error::Usage(format!("TLS: {e}")))?;
        }
        ep.connect()
            .await
            .map_err(|e| Error::Io(cannot_connect(self, &e)))
    }

    /// Why a call was answered with `s` rather than by the daemon's service: one line.
    pub(super) fn refused(&self, s: &tonic::Status) -> String {
        refused(self, s)
    }
}

/// Why no connection could be made, and what to do: one line.
fn cannot_connect(a: &Connect, e: &tonic::transport::Error) -> String {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    return format!("nothing listens on {} (connection refused)", a.addr);
                }
                std::io::ErrorKind::TimedOut => {
                    return format!(
                        "{}: no answer within {} s (--timeout-secs)",
                        a.addr, a.tls.timeout_secs
                    );
                }
                _ => {}
            }
        }
        cur = c.source();
    }
    let why = format!("{e}{}", crate::text::causes(e));
    if why.contains("NotValidForName") || why.contains("not valid for name") {
        return format!(
            "{}: the daemon's certificate does not name the host; pass --server-name with a name it carries ({why})",
            a.addr
        );
    }
    if a.tls.ca.is_some()
        && (why.contains("InvalidContentType")
            || why.contains("corrupt message")
            || why.contains("received corrupt"))
    {
        return format!(
            "{}: the daemon does not speak TLS there: leave out --ca (a plain-text listener, e.g. server.health_listen) ({why})",
            a.addr
        );
    }
    if why.contains("invalid peer certificate") {
        return format!(
            "{}: the daemon's certificate is not one --ca vouches for; pass the CA that issued it ({why})",
            a.addr
        );
    }
    format!("{}: cannot connect: {why}", a.addr)
}

/// Why the connection answered no health status, and what to do: one line. A transport
/// failure after connecting is the daemon refusing how we came: TLS, or the certificate.
fn refused(a: &Connect, s: &tonic::Status) -> String {
    // A status the daemon sent comes with its response headers; one made on this side from
    // a broken connection has none.
    let transport = s.metadata().is_empty();
    match (transport, &a.tls.ca, &a.tls.cert) {
        (true, None, _) => format!(
            "{}: the daemon did not answer in plain text; it speaks TLS: pass --ca (the CA of its certificate), and --cert and --key when it asks for a client certificate",
            a.addr
        ),
        (true, Some(_), None) => format!(
            "{}: the daemon asks for a client certificate: pass --cert and --key (one its server.client_ca issued)",
            a.addr
        ),
        (true, Some(_), Some(_)) => format!(
            "{}: the daemon refused the client certificate (not issued by its server.client_ca, revoked, or expired)",
            a.addr
        ),
        _ => format!("{}: {}: {}", a.addr, s.code(), s.message()),
    }
}
