//! What the self-test found, and the choice of mode it leads to: the report that
//! `hsm-bridge selftest` prints and the daemon logs.

use serde::Serialize;

use super::super::modes::{Capabilities, WrapMode, no_direct_oaep};
use super::super::{HsmError, Unsupported};
use super::CK_MECHANISM_TYPE;
use crate::config::WrapModeSetting;
use crate::wrap::soft::OaepHash;
use crate::wrap::{FORMATS, Format, Layout};

#[derive(Debug, Clone, Serialize)]
pub(crate) struct MechanismFinding {
    pub mechanism: String,
    pub number: String,
    pub listed: bool,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ModeFinding {
    pub mode: &'static str,
    pub ok: bool,
    /// Result for an AES-256 target.
    pub aes: String,
    /// Result for an RSA-2048 target.
    pub rsa: String,
    #[serde(skip)]
    pub aes_ok: bool,
    #[serde(skip)]
    pub rsa_ok: bool,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub token: TokenSummary,
    pub mechanisms: Vec<MechanismFinding>,
    pub kwp_mechanism: Option<String>,
    /// "exact", "zero-padded (N bytes on the probe key)", or why it is unknown.
    pub pkcs8_from_kwp: String,
    pub rsa_oaep_sha256: bool,
    pub rsa_oaep_sha1: bool,
    /// The modes tried with OAEP SHA-256 (OCI's formats, and AWS's and Google Cloud's
    /// SHA-256 ones).
    pub modes: Vec<ModeFinding>,
    /// The modes tried with OAEP SHA-1 (AWS's and Google Cloud's SHA-1 formats, Azure's).
    pub modes_sha1: Vec<ModeFinding>,
    /// Each format, and how this token wraps in it or why it cannot.
    pub formats: Vec<FormatFinding>,
    /// How the self-test learnt its session keys' values: imported, or generated in the
    /// token and learnt through its own wraps.
    pub known_values: String,
    pub wrap_mode_setting: String,
    pub chosen_mode: String,
    #[serde(skip)]
    pub chosen: WrapMode,
    pub chosen_because: String,
    /// The mode for the hybrid formats with OAEP SHA-1, or why there is none.
    #[serde(skip)]
    pub chosen_sha1: Result<(WrapMode, String), String>,
    #[serde(skip)]
    pub caps: Capabilities,
}

/// How this token wraps in one format.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FormatFinding {
    pub format: &'static str,
    /// The wrap mode, or `None` when the token cannot wrap in this format.
    pub mode: Option<&'static str>,
    /// How, or why not.
    pub detail: String,
}

/// What each format gets on a token with `caps`, given the mode chosen for each hash.
pub(super) fn formats(
    caps: &Capabilities,
    sha256: (WrapMode, &str),
    sha1: &Result<(WrapMode, String), String>,
) -> Vec<FormatFinding> {
    FORMATS
        .iter()
        .map(|f| {
            let (mode, detail) = match mode_for(f, caps, sha256.0, sha1) {
                Ok(m) => (Some(m.as_str()), mode_detail(f, m)),
                Err(e) => (None, e.to_string()),
            };
            FormatFinding {
                format: f.name,
                mode,
                detail,
            }
        })
        .collect()
}

/// What a format's wrap does in `mode`, for the report.
fn mode_detail(f: &Format, mode: WrapMode) -> String {
    match f.layout {
        Layout::Direct => format!(
            "one C_WrapKey: CKM_RSA_PKCS_OAEP with {} in the token",
            f.hash.as_str()
        ),
        Layout::Hybrid => format!("{mode}, OAEP {}", f.hash.as_str()),
    }
}

/// The mode `format` wraps in, or why it cannot run on this token. A direct format is one
/// `C_WrapKey` in the token (reported as hsm-native: no key material on the host) and needs
/// OAEP with its hash there; a hybrid one uses the mode the self-test chose for its hash.
pub(crate) fn mode_for(
    format: &'static Format,
    caps: &Capabilities,
    sha256: WrapMode,
    sha1: &Result<(WrapMode, String), String>,
) -> Result<WrapMode, HsmError> {
    match (format.layout, format.hash) {
        (Layout::Direct, h) if caps.oaep.get(h) => Ok(WrapMode::HsmNative),
        (Layout::Direct, _) => Err(no_direct_oaep(format)),
        (Layout::Hybrid, OaepHash::Sha256) => Ok(sha256),
        (Layout::Hybrid, OaepHash::Sha1) => match sha1 {
            Ok((m, _)) => Ok(*m),
            Err(why) => Err(Unsupported::NoModeFor {
                format: format.name,
                why: format!("no wrap mode works with OAEP SHA-1 on this token: {why}"),
            }
            .into()),
        },
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct TokenSummary {
    pub label: String,
    pub manufacturer: String,
    pub model: String,
    pub serial: String,
    pub firmware: String,
    /// The slot it is in.
    pub slot_id: u64,
}

impl MechanismFinding {
    /// A finding for mechanism `name` (`number`), from the result of testing it.
    pub(super) fn new(
        name: &str,
        number: CK_MECHANISM_TYPE,
        listed: &[CK_MECHANISM_TYPE],
        r: &Result<String, String>,
    ) -> Self {
        let (ok, detail) = match r {
            Ok(s) => (true, s.clone()),
            Err(s) => (false, s.clone()),
        };
        MechanismFinding {
            mechanism: name.into(),
            number: format!("{number:#x}"),
            listed: listed.contains(&number),
            ok,
            detail,
        }
    }
}

impl ModeFinding {
    /// A mode that could not be tried, and why.
    pub(super) fn rejected(mode: WrapMode, why: String) -> Self {
        ModeFinding {
            mode: mode.as_str(),
            ok: false,
            aes: why.clone(),
            rsa: why,
            aes_ok: false,
            rsa_ok: false,
        }
    }
}

pub(super) fn choose(
    found: &[ModeFinding],
    setting: WrapModeSetting,
) -> Result<(WrapMode, String), HsmError> {
    let finding = |m: WrapMode| {
        found
            .iter()
            .find(|f| f.mode == m.as_str())
            .expect("all modes tested")
    };
    let forced = match setting {
        WrapModeSetting::Auto => None,
        WrapModeSetting::HsmNative => Some(WrapMode::HsmNative),
        WrapModeSetting::HsmTwoStep => Some(WrapMode::HsmTwoStep),
        WrapModeSetting::Hybrid => Some(WrapMode::Hybrid),
    };
    if let Some(m) = forced {
        let f = finding(m);
        if !f.aes_ok {
            return Err(HsmError::SelfTest(format!(
                "wrap_mode = \"{m}\" is configured, but this token cannot do it: {}",
                f.aes
            )));
        }
        let because = if f.rsa_ok {
            "configured".to_string()
        } else {
            format!("configured; RSA keys will be refused: {}", f.rsa)
        };
        return Ok((m, because));
    }
    if let Some(m) = WrapMode::ALL.into_iter().find(|&m| finding(m).ok) {
        return Ok((m, "first mode, in the order hsm-native, hsm-two-step, hybrid, that passed for AES and RSA".into()));
    }
    if let Some(m) = WrapMode::ALL.into_iter().find(|&m| finding(m).aes_ok) {
        let why = format!(
            "no mode passed for RSA; RSA keys will be refused: {}",
            finding(m).rsa
        );
        return Ok((m, why));
    }
    let reasons: Vec<String> = found
        .iter()
        .map(|f| format!("{}: {}", f.mode, f.aes))
        .collect();
    Err(HsmError::SelfTest(format!(
        "no wrap mode works on this token ({})",
        reasons.join("; ")
    )))
}

/// One line per mode tried.
fn modes_text(found: &[ModeFinding]) -> String {
    let mut out = String::new();
    for f in found {
        out += &if f.aes_ok {
            format!(
                "  {:<13} {:<8} AES: {}; RSA: {}\n",
                f.mode,
                if f.ok { "ok" } else { "partial" },
                f.aes,
                f.rsa
            )
        } else {
            format!("  {:<13} rejected {}\n", f.mode, f.aes)
        };
    }
    out
}

pub(super) fn setting_name(s: WrapModeSetting) -> &'static str {
    match s {
        WrapModeSetting::Auto => "auto",
        WrapModeSetting::HsmNative => "hsm-native",
        WrapModeSetting::HsmTwoStep => "hsm-two-step",
        WrapModeSetting::Hybrid => "hybrid",
    }
}

impl Report {
    /// The human form printed by `hsm-bridge selftest`.
    pub(crate) fn to_text(&self) -> String {
        let mut out = format!(
            "token: {} ({} {}, firmware {})\nmechanisms:\n",
            self.token.label, self.token.manufacturer, self.token.model, self.token.firmware
        );
        for m in &self.mechanisms {
            out += &format!(
                "  {:<31} {:<11} {:<10} {}: {}\n",
                m.mechanism,
                m.number,
                if m.listed { "listed" } else { "not listed" },
                if m.ok { "ok" } else { "rejected" },
                m.detail
            );
        }
        out += &format!("session keys: {}\n", self.known_values);
        out += &format!(
            "RFC 5649 mechanism: {}\nPKCS#8 from RFC 5649 wrap: {}\nRSA_OAEP_SHA256 (AES keys): {}\nmodes:\n",
            self.kwp_mechanism.as_deref().unwrap_or("none"),
            self.pkcs8_from_kwp,
            if self.rsa_oaep_sha256 {
                "available"
            } else {
                "unavailable: the token does not do OAEP with SHA-256"
            }
        );
        out += &modes_text(&self.modes);
        out += &format!(
            "chosen: {} (wrap_mode = {}; {})\n",
            self.chosen_mode, self.wrap_mode_setting, self.chosen_because
        );
        out += "modes with OAEP SHA-1:\n";
        out += &modes_text(&self.modes_sha1);
        out += &match &self.chosen_sha1 {
            Ok((m, because)) => format!("chosen with OAEP SHA-1: {m} ({because})\n"),
            Err(why) => format!("chosen with OAEP SHA-1: none ({why})\n"),
        };
        out += "formats:\n";
        for f in &self.formats {
            out += &match f.mode {
                Some(_) => format!("  {:<34} ok: {}\n", f.format, f.detail),
                None => format!("  {:<34} unavailable: {}\n", f.format, f.detail),
            };
        }
        out
    }

    /// The mode `format` wraps in on this token, or why it cannot.
    pub(crate) fn mode_for(&self, format: &'static Format) -> Result<WrapMode, HsmError> {
        mode_for(format, &self.caps, self.chosen, &self.chosen_sha1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(mode: WrapMode, aes: bool, rsa: bool) -> ModeFinding {
        ModeFinding {
            mode: mode.as_str(),
            ok: aes && rsa,
            aes: if aes { "exact".into() } else { "no".into() },
            rsa: if rsa { "exact".into() } else { "pads".into() },
            aes_ok: aes,
            rsa_ok: rsa,
        }
    }

    #[test]
    fn auto_prefers_hsm_modes_that_do_everything() {
        let f = [
            finding(WrapMode::HsmNative, false, false),
            finding(WrapMode::HsmTwoStep, true, true),
            finding(WrapMode::Hybrid, true, true),
        ];
        assert_eq!(
            choose(&f, WrapModeSetting::Auto).unwrap().0,
            WrapMode::HsmTwoStep
        );
        // A token that pads PKCS#8: two-step cannot do RSA, hybrid can.
        let f = [
            finding(WrapMode::HsmNative, false, false),
            finding(WrapMode::HsmTwoStep, true, false),
            finding(WrapMode::Hybrid, true, true),
        ];
        assert_eq!(
            choose(&f, WrapModeSetting::Auto).unwrap().0,
            WrapMode::Hybrid
        );
        // Same, hybrid forbidden: two-step, with RSA refused and said so.
        let f = [
            finding(WrapMode::HsmNative, false, false),
            finding(WrapMode::HsmTwoStep, true, false),
            finding(WrapMode::Hybrid, false, true),
        ];
        let (m, why) = choose(&f, WrapModeSetting::Auto).unwrap();
        assert_eq!(m, WrapMode::HsmTwoStep);
        assert!(why.contains("RSA keys will be refused"), "{why}");
    }

    #[test]
    fn forced_mode_must_work() {
        let f = [
            finding(WrapMode::HsmNative, false, false),
            finding(WrapMode::HsmTwoStep, false, false),
            finding(WrapMode::Hybrid, true, true),
        ];
        let e = choose(&f, WrapModeSetting::HsmTwoStep)
            .unwrap_err()
            .to_string();
        assert!(e.contains("hsm-two-step") && e.contains("cannot"), "{e}");
        assert_eq!(
            choose(&f, WrapModeSetting::Hybrid).unwrap().0,
            WrapMode::Hybrid
        );
        let none = [
            finding(WrapMode::HsmNative, false, false),
            finding(WrapMode::HsmTwoStep, false, false),
            finding(WrapMode::Hybrid, false, false),
        ];
        assert!(choose(&none, WrapModeSetting::Auto).is_err());
    }
}
