//! Secrets in URLs: signed URLs carry credentials in their query (`X-Amz-Signature`, `token`,
//! `sig`, ...) and sometimes in their user-info. They are used to fetch, and redacted everywhere a
//! person or a log can read them: log lines, events, `show`, `jobs`, error messages.

/// Query parameter names (lower-cased) whose values are secrets or tie a URL to a secret.
const SECRET_PARAMS: &[&str] = &[
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "x-goog-signature",
    "x-goog-credential",
    "signature",
    "sig",
    "token",
    "access_token",
    "auth",
    "authorization",
    "key",
    "api_key",
    "apikey",
    "password",
    "secret",
    "policy",
    "key-pair-id",
    "expires",
    "se",
    "sp",
    "sv",
    "st",
    "skoid",
    "sktid",
    "hdnts",
];

pub const REDACTED: &str = "REDACTED";

fn is_secret(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    SECRET_PARAMS.contains(&lower.as_str())
        || lower.ends_with("token")
        || lower.ends_with("signature")
}

/// The URL with secret query values and any password replaced by `REDACTED`. Text that is not a
/// URL with a query or user-info is returned as it is.
pub fn redact_url(text: &str) -> String {
    let Ok(mut url) = url::Url::parse(text) else {
        return text.to_string();
    };
    if url.cannot_be_a_base() {
        return text.to_string();
    }
    let mut changed = false;
    if url.password().is_some() {
        let _ = url.set_password(Some(REDACTED));
        changed = true;
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(name, value)| {
                if is_secret(&name) {
                    changed = true;
                    (name.into_owned(), REDACTED.to_string())
                } else {
                    (name.into_owned(), value.into_owned())
                }
            })
            .collect();
        if changed {
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
    }
    if changed {
        url.to_string()
    } else {
        text.to_string()
    }
}

/// Redacts every URL inside a free text (an error message, a log line).
pub fn redact_text(text: &str) -> String {
    if !text.contains("://") {
        return text.to_string();
    }
    text.split_inclusive(char::is_whitespace)
        .map(|word| {
            let trimmed = word.trim_end();
            let tail = &word[trimmed.len()..];
            let core = trimmed
                .trim_matches(|c: char| matches!(c, '"' | '\'' | '(' | ')' | '<' | '>' | ','));
            if core.contains("://") {
                trimmed.replace(core, &redact_url(core)) + tail
            } else {
                word.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_url_secrets_are_redacted_and_the_rest_kept() {
        let url = "https://bucket.s3.amazonaws.com/v.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F2026&X-Amz-Signature=deadbeef&X-Amz-Expires=300&quality=hd";
        let redacted = redact_url(url);
        assert!(!redacted.contains("deadbeef"), "{redacted}");
        assert!(!redacted.contains("AKIA"), "{redacted}");
        assert!(redacted.contains("quality=hd"), "{redacted}");
        assert!(
            redacted.contains("X-Amz-Algorithm=AWS4-HMAC-SHA256"),
            "{redacted}"
        );
        assert!(
            redacted.starts_with("https://bucket.s3.amazonaws.com/v.mp4?"),
            "{redacted}"
        );
    }

    #[test]
    fn tokens_sigs_and_passwords_are_redacted() {
        let redacted = redact_url(
            "https://user:hunter2@cdn.example.com/a.mp4?token=abc123&sig=zzz&Expires=99",
        );
        for secret in ["hunter2", "abc123", "zzz", "99"] {
            assert!(!redacted.contains(secret), "{secret} in {redacted}");
        }
    }

    #[test]
    fn urls_without_secrets_and_paths_are_unchanged() {
        for text in [
            "https://cdn.example.com/a.mp4?quality=hd",
            "/srv/media/a.mp4",
            "not a url",
        ] {
            assert_eq!(redact_url(text), text);
        }
    }

    #[test]
    fn urls_inside_messages_are_redacted() {
        let message = "request to https://cdn.example.com/a.mp4?token=abc123 failed: reset";
        let redacted = redact_text(message);
        assert!(!redacted.contains("abc123"), "{redacted}");
        assert!(redacted.ends_with("failed: reset"), "{redacted}");
    }
}
