//! The expiry-notice webhook (`--notify-webhook`): where, and the secret its events are signed
//! with. Loaded at start into the state; the housekeeping round delivers through it.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// The webhook: where, and the HMAC secret. `Debug` never shows the secret.
pub struct Notifier {
    pub(crate) url: String,
    secret: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").field("url", &self.url).field("secret", &"[redacted]").finish()
    }
}

impl Notifier {
    /// The configured webhook, if any: its secret from `TESSERA_NOTIFY_SECRET` or
    /// `--notify-secret-file` (at least 32 bytes; required with a webhook).
    pub fn load(config: &crate::config::Config) -> Result<Option<Notifier>, String> {
        let Some(url) = &config.notify_webhook else { return Ok(None) };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("--notify-webhook {url:.100}: an http:// or https:// URL"));
        }
        let secret = match (std::env::var("TESSERA_NOTIFY_SECRET"), &config.notify_secret_file) {
            (Ok(s), _) => Zeroizing::new(s.into_bytes()),
            (Err(_), Some(path)) => Zeroizing::new(
                std::fs::read(path).map_err(|e| format!("--notify-secret-file {}: {e}", path.display()))?,
            ),
            (Err(_), None) => {
                return Err(
                    "--notify-webhook needs a secret: TESSERA_NOTIFY_SECRET or --notify-secret-file".into()
                )
            }
        };
        let trimmed = Zeroizing::new(secret.trim_ascii().to_vec());
        if trimmed.len() < 32 {
            return Err("the webhook secret must be at least 32 bytes".into());
        }
        Ok(Some(Notifier { url: url.clone(), secret: trimmed }))
    }

    /// `sha256=<hex HMAC-SHA256 of the body>`, as sent in `X-Tessera-Signature`.
    pub fn sign(&self, body: &[u8]) -> String {
        // HMAC takes keys of any length: this cannot fail.
        let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.secret) else {
            return String::new();
        };
        mac.update(body);
        let tag = mac.finalize().into_bytes();
        format!("sha256={}", tag.iter().map(|b| format!("{b:02x}")).collect::<String>())
    }
}
