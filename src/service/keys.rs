//! ListSourceKeys and GetSourceKey, and what a caller may see of the token's keys: only
//! keys its label patterns match; a key named by id that it may not use answers as a
//! missing one does.

use tonic::{Request, Response, Status};

use super::Bridge;
use super::auth::Caller;
use super::request::{deadline, key_ref, page_token, parse_page_token, shape};
use crate::config::Operation;
use crate::export::caller::hide_by_id;
use crate::hsm::{Hsm, KeyInfo};
use crate::proto;
use crate::wrap;

/// Default and largest ListSourceKeys page.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

impl Bridge {
    pub(super) async fn list_source_keys_inner(
        &self,
        req: Request<proto::ListSourceKeysRequest>,
    ) -> Result<Response<proto::ListSourceKeysResponse>, Status> {
        let caller = self.caller(&self.settings(), &req, None)?;
        let deadline = deadline(&req);
        if !caller.may(Operation::List) {
            return Err(denied("ListSourceKeys", &caller));
        }
        let body = req.into_inner();
        let page = match body.page_size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let after = parse_page_token(&body.page_token)?;
        // A later page reuses what the first page read of keys still there; which keys are
        // on the token is searched afresh for every page (src/hsm/listing.rs).
        let keys = match after {
            None => self.on_hsm(deadline, |hsm, d| hsm.list_keys(d)).await?,
            Some(_) => {
                self.on_hsm(deadline, |hsm, d| hsm.list_keys_again(d))
                    .await?
            }
        };
        let mut visible = keys
            .iter()
            .filter(|k| caller.may_touch(&k.label))
            .filter(|k| !body.exportable_only || self.hsm.exportable(k).is_ok())
            .filter(|k| {
                after
                    .as_ref()
                    .is_none_or(|(l, i)| (&k.label, &k.id) > (l, i))
            })
            .peekable();
        let out: Vec<&KeyInfo> = visible.by_ref().take(page).collect();
        let next_page_token = match (visible.peek(), out.last()) {
            (Some(_), Some(last)) => page_token(last),
            _ => String::new(),
        };
        Ok(Response::new(proto::ListSourceKeysResponse {
            keys: out.into_iter().map(|k| source_key(&self.hsm, k)).collect(),
            next_page_token,
        }))
    }

    pub(super) async fn get_source_key_inner(
        &self,
        req: Request<proto::GetSourceKeyRequest>,
    ) -> Result<Response<proto::SourceKey>, Status> {
        let caller = self.caller(&self.settings(), &req, None)?;
        let deadline = deadline(&req);
        if !caller.may(Operation::List) {
            return Err(denied("GetSourceKey", &caller));
        }
        let key = key_ref(req.get_ref().source_key.as_ref())?;
        if let Some(l) = key.label_named()
            && !caller.may_touch(l)
        {
            return Err(Status::permission_denied(
                caller.may_not_touch(l).to_string(),
            ));
        }
        let info = self
            .on_hsm(deadline, move |hsm, d| {
                hsm.find_key(&key, d)
                    .and_then(|info| {
                        caller.permit(&info)?;
                        Ok(info)
                    })
                    .map_err(|e| hide_by_id(&key, e))
            })
            .await?;
        Ok(Response::new(source_key(&self.hsm, &info)))
    }
}

pub(super) fn source_key(hsm: &Hsm, k: &KeyInfo) -> proto::SourceKey {
    let check = hsm.exportable(k);
    proto::SourceKey {
        label: k.label.clone(),
        id_hex: wrap::hex(&k.id),
        shape: k.shape().map(shape),
        key_type: k.key_type_name(),
        extractable: k.extractable,
        sensitive: k.sensitive,
        exportable: check.is_ok(),
        not_exportable_reason: check.err().map(|e| e.to_string()).unwrap_or_default(),
    }
}

pub(super) fn denied(op: &str, caller: &Caller) -> Status {
    Status::permission_denied(format!(
        "{} may not call {op}; the operator grants operations in server.clients",
        caller.display
    ))
}
