//! `opc-retry-token`: the first answer for a token answers every retry of the same request;
//! the same token with another request is refused, as OCI does.

#[allow(unused_imports)]
use super::*;

impl Emulator {
    /// Runs a create under `opc-retry-token` rules: the same token with the same request
    /// replays the first success; with a different request it is refused.
    pub(super) fn idempotent(
        &self,
        req: &HttpRequest<'_>,
        entry: &mut LogEntry,
        create: impl FnOnce(&Self) -> (Reply, Option<String>),
    ) -> Reply {
        let token = (req.header)("opc-retry-token");
        let fingerprint = (
            req.method.to_string(),
            req.path.to_string(),
            body_sha256(req.body),
        );
        if let Some(t) = &token {
            if t.is_empty() || t.len() > 64 {
                return Reply::error(
                    400,
                    "InvalidParameter",
                    "opc-retry-token must be 1 to 64 characters",
                );
            }
            if let Some(r) = self.lock().retry_tokens.get(t) {
                if r.request != fingerprint {
                    return Reply::error(
                        409,
                        "InvalidatedRetryToken",
                        "the retry token was used for a different request",
                    );
                }
                entry.created = r.created.clone();
                return Reply {
                    status: r.status,
                    content_type: "application/json",
                    headers: vec![("etag", etag(&r.body))],
                    body: r.body.clone(),
                };
            }
        }
        let (mut reply, created) = create(self);
        entry.created = created.clone();
        if reply.status == 200 {
            reply.headers.push(("etag", etag(&reply.body)));
            if let Some(t) = token {
                self.lock().retry_tokens.insert(
                    t,
                    Replay {
                        request: fingerprint,
                        status: reply.status,
                        body: reply.body.clone(),
                        created,
                    },
                );
            }
        }
        reply
    }
}
