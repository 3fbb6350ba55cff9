//! What the self-test found, and the choice of mode it leads to: the report that
//! `hsm-bridge selftest` prints and the daemon logs.

use serde::Serialize;

use super::super::HsmError;
use super::super::modes::{Capabilities, WrapMode};
use super::CK_MECHANISM_TYPE;
use crate::config::WrapModeSetting;

#[derive(Debug, Clone, Serialize)]
pub struct MechanismFinding {
    pub mechanism: String,
    pub number: String,
    pub listed: bool,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModeFinding {
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
pub struct Report {
    pub token: TokenSummary,
    pub mechanisms: Vec<MechanismFinding>,
    pub kwp_mechanism: Option<String>,
    /// "exact", "zero-padded (N bytes on the probe key)", or why it is unknown.
    pub pkcs8_from_kwp: String,
    pub rsa_oaep_sha256: bool,
    pub modes: Vec<ModeFinding>,
    /// How the self-test learnt its session keys' values: imported, or generated in the
    /// token and learnt through its own wraps.
    pub known_values: String,
    pub wrap_mode_setting: String,
    pub chosen_mode: String,
    #[serde(skip)]
    pub chosen: WrapMode,
    pub chosen_because: String,
    #[serde(skip)]
    pub caps: Capabilities,
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenSummary {
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
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "token: {} ({} {}, firmware {})\nmechanisms:\n",
            self.token.label, self.token.manufacturer, self.token.model, self.token.firmware
        );
        for m in &self.mechanisms {
            out += &format!(
                "  {:<28} {:<11} {:<10} {}: {}\n",
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
        for f in &self.modes {
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
        out += &format!(
            "chosen: {} (wrap_mode = {}; {})\n",
            self.chosen_mode, self.wrap_mode_setting, self.chosen_because
        );
        out
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
