//! The test-control API, unauthenticated, under `/_emulator/`: the request log, faults
//! (per call, and one-shot ones for the next import job or import), and (with
//! `--test-oracle`) what a version was imported as.

use serde_json::json;

use super::faults::JobFaults;
use super::protocol::{GcpError, json_reply};
use super::{Fault, GcpKms, Reply, Request};

impl GcpKms {
    pub(super) fn control(&self, req: &Request<'_>) -> Reply {
        let rest = &req.path["/_emulator/".len()..];
        match (req.method, rest) {
            ("GET", "requests") => json_reply(200, &json!(self.log())),
            ("POST", "faults") => {
                let parsed = serde_json::from_slice::<Vec<Fault>>(req.body)
                    .or_else(|_| serde_json::from_slice::<Fault>(req.body).map(|f| vec![f]));
                match parsed {
                    Ok(faults) => {
                        let n = faults.len();
                        self.lock().faults.extend(faults);
                        json_reply(200, &json!({ "added": n }))
                    }
                    Err(e) => GcpError::invalid(format!("a fault: {e}")).reply(),
                }
            }
            ("POST", "job-faults") => match serde_json::from_slice::<JobFaults>(req.body) {
                Ok(f) => {
                    self.add_job_faults(f);
                    json_reply(200, &json!(self.lock().job_faults))
                }
                Err(e) => GcpError::invalid(format!("job faults: {e}")).reply(),
            },
            ("DELETE", "faults") => {
                let mut inner = self.lock();
                inner.faults.clear();
                inner.job_faults = JobFaults::default();
                json_reply(200, &json!({}))
            }
            ("GET", r) if r.starts_with("material/") => {
                if !self.cfg.test_oracle {
                    return GcpError::not_found(
                        "start the emulator with --test-oracle to read imported material",
                    )
                    .reply();
                }
                match self.material(&r["material/".len()..]) {
                    Some(m) => {
                        json_reply(200, &json!({ "material_hex": hsm_bridge::wrap::hex(&m) }))
                    }
                    None => GcpError::not_found("no such version with material").reply(),
                }
            }
            _ => GcpError::not_found("no such emulator control route").reply(),
        }
    }
}
