//! Secrets in URLs: signed URLs carry credentials in their query (`X-Amz-Signature`, `sig`, `jwt`,
//! ...) and in their user info (`https://ghp_token@host/`, `postgres://user:password@host/`). They
//! are used to fetch and to notify, and redacted everywhere a person or a log can read them: log
//! lines, events, `show`, `jobs`, error messages, webhook bodies, the stored manifest, the stored
//! platform metadata and `export` (unless asked to keep them).
//!
//! This module decides what is a secret and rewrites text; it reads and writes nothing. The
//! operator's names (`NARRA_REDACT_PARAMS`) are read by the doors, which install the process's
//! [`Redactor`] once with [`Redactor::install`].
//!
//! The rules: user info (name and password) is always a secret, since a lone user name is often a
//! token; a query or fragment parameter is a secret when its name, percent-decoded (repeatedly, so
//! no encoding hides it) and lower-cased, is one of [`SECRET_PARAMS`], starts with one of
//! [`SECRET_PREFIXES`], ends with one of [`SECRET_SUFFIXES`], or is one the operator named in
//! `NARRA_REDACT_PARAMS` (a comma list, any case). A secret parameter keeps its name and loses its
//! value, so that a reader still sees which URL it was.

use std::borrow::Cow;
use std::sync::OnceLock;

/// Query parameter names (lower-cased, decoded) whose values are secrets or tie a URL to one.
const SECRET_PARAMS: &[&str] = &[
    // AWS query authentication, version 2 (version 4 is every `x-amz-*`).
    "awsaccesskeyid",
    "signature",
    "expires",
    // GCS (V2; V4 is every `x-goog-*`).
    "googleaccessid",
    // Azure shared access signatures.
    "sig",
    "se",
    "sp",
    "sv",
    "sr",
    "st",
    "ss",
    "srt",
    "spr",
    "sip",
    "si",
    "sdd",
    "skoid",
    "sktid",
    "skt",
    "ske",
    "sks",
    "skv",
    "saoid",
    "suoid",
    "scid",
    // CloudFront.
    "policy",
    "key-pair-id",
    // Akamai.
    "hdnts",
    "hdnea",
    "hdntl",
    "__token__",
    // JWT and OAuth.
    "jwt",
    "id_token",
    "code",
    "assertion",
    // Sessions.
    "session",
    "sessionid",
    "session_id",
    "sid",
    "phpsessid",
    "jsessionid",
    "asp.net_sessionid",
    "connect.sid",
    // API keys and plain credentials.
    "key",
    "apikey",
    "authkey",
    "accesskey",
    "auth",
    "authorization",
    "password",
    "passwd",
    "pwd",
    "pass",
    "secret",
    "credential",
    "credentials",
    "hmac",
];

/// Name prefixes whose every parameter belongs to a signature (AWS SigV4, GCS V4).
const SECRET_PREFIXES: &[&str] = &["x-amz-", "x-goog-"];

/// Name endings that mark a credential whatever comes before (`access_token`, `client_secret`,
/// `api_key`, `X-Api-Key`, `auth_key`, `db_password`, `url_signature`).
const SECRET_SUFFIXES: &[&str] = &[
    "token",
    "signature",
    "secret",
    "password",
    "sessionid",
    "session_id",
    "_key",
    "-key",
    "apikey",
];

/// JSON member names (lower-cased) whose string value is a credential itself, not a URL: headers
/// yt-dlp records for a format (`http_headers`) and its cookie jar.
const SECRET_JSON_MEMBERS: &[&str] = &[
    "cookie",
    "cookies",
    "set-cookie",
    "authorization",
    "proxy-authorization",
];

pub const REDACTED: &str = "REDACTED";

/// How many times a name is percent-decoded at most: more than any honest URL needs, and a bound
/// on the work a hostile one can ask for.
const DECODE_ROUNDS_MAX: usize = 4;

/// The redactor [`Redactor::install`] set for this process.
static PROCESS_REDACTOR: OnceLock<Redactor> = OnceLock::new();

/// The built-in rules, with no operator's names.
static BUILT_IN: Redactor = Redactor {
    extra_params: Vec::new(),
};

/// What is secret: the built-in rules plus the operator's names.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// Lower-cased, trimmed, decoded.
    extra_params: Vec<String>,
}

impl Redactor {
    /// The built-in rules plus `extra` names (a comma list, as `NARRA_REDACT_PARAMS` holds).
    pub fn with_params(extra: &str) -> Redactor {
        Redactor {
            extra_params: extra
                .split(',')
                .map(normalise_name)
                .filter(|name| !name.is_empty())
                .collect(),
        }
    }

    /// Makes `redactor` the process's, once: the first call wins and later ones change nothing,
    /// so every door of a process may call it with the same operator's names.
    pub fn install(redactor: Redactor) {
        let _first_wins = PROCESS_REDACTOR.set(redactor);
    }

    /// The process's redactor: the one installed, or the built-in rules alone until one is.
    pub fn global() -> &'static Redactor {
        PROCESS_REDACTOR.get().unwrap_or(&BUILT_IN)
    }

    /// Whether a query parameter of this name (as written in the URL, or decoded) holds a secret.
    pub fn is_secret_param(&self, name: &str) -> bool {
        let name = normalise_name(name);
        SECRET_PARAMS.contains(&name.as_str())
            || SECRET_PREFIXES
                .iter()
                .any(|prefix| name.starts_with(prefix))
            || SECRET_SUFFIXES.iter().any(|suffix| name.ends_with(suffix))
            || self.extra_params.contains(&name)
    }

    /// The URL with its user info and secret parameter values replaced by `REDACTED`. Text that is
    /// not a URL is returned as it is; text that looks like one (`scheme://...`) but does not
    /// parse is redacted by its shape.
    pub fn redact_url(&self, text: &str) -> String {
        let Ok(mut url) = url::Url::parse(text) else {
            return if text.contains("://") {
                self.redact_unparsed(text)
            } else {
                text.to_string()
            };
        };
        if url.cannot_be_a_base() {
            return text.to_string();
        }
        let mut changed = false;
        if !url.username().is_empty() {
            changed |= url.set_username(REDACTED).is_ok();
        }
        if url.password().is_some() {
            changed |= url.set_password(Some(REDACTED)).is_ok();
        }
        if let Some(query) = url.query()
            && let Cow::Owned(redacted) = self.redact_pairs(query)
        {
            url.set_query(Some(&redacted));
            changed = true;
        }
        if let Some(fragment) = url.fragment()
            && let Cow::Owned(redacted) = self.redact_pairs(fragment)
        {
            url.set_fragment(Some(&redacted));
            changed = true;
        }
        if changed {
            url.to_string()
        } else {
            text.to_string()
        }
    }

    /// Every URL inside a free text (an error message, a log line, a key such as
    /// `ingest:https://...`) redacted; the rest of the text kept.
    pub fn redact_text(&self, text: &str) -> String {
        if !text.contains("://") {
            return text.to_string();
        }
        let next_url = |rest: &str| {
            let at = rest.find("://")?;
            Some((scheme_start(&rest[..at]), at + url_length(&rest[at..])))
        };
        rewrite_spans(text, next_url, |url| self.redact_url(url))
    }

    /// Every string in a JSON document (yt-dlp's description of a page, an export record) with its
    /// URLs redacted, and the values of members that are credentials themselves (`Cookie`,
    /// `Authorization`) replaced.
    pub fn redact_json(&self, value: &mut serde_json::Value) {
        match value {
            serde_json::Value::String(text) => {
                if text.contains("://") {
                    *text = self.redact_text(text);
                }
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    self.redact_json(item);
                }
            }
            serde_json::Value::Object(members) => {
                for (name, member) in members.iter_mut() {
                    let lower = name.to_ascii_lowercase();
                    if member.is_string() && SECRET_JSON_MEMBERS.contains(&lower.as_str()) {
                        *member = serde_json::Value::String(REDACTED.to_string());
                    } else {
                        self.redact_json(member);
                    }
                }
            }
            serde_json::Value::Null | serde_json::Value::Bool(_) | serde_json::Value::Number(_) => {
            }
        }
    }

    /// A serialized JSON document with the URLs in every string redacted, everything else byte
    /// for byte: for records whose numbers `serde_json::Value` cannot hold (u128 ids).
    pub fn redact_json_text(&self, json: &str) -> String {
        if !json.contains("://") {
            return json.to_string();
        }
        // An unterminated string ends the search: the rest is not JSON, and is left as it is.
        let next_string = |rest: &str| {
            let open = rest.find('"')?;
            let close = closing_quote(&rest[open + 1..])?;
            Some((open, open + close + 2))
        };
        rewrite_spans(json, next_string, |token| {
            match serde_json::from_str::<String>(token) {
                Ok(text) if text.contains("://") => {
                    serde_json::to_string(&self.redact_text(&text)).expect("a string serializes")
                }
                _ => token.to_string(),
            }
        })
    }

    /// `name=value&...` with the secret values replaced, the rest byte for byte as written (so a
    /// URL that holds no secret reads the same). Borrowed when nothing was secret.
    fn redact_pairs<'a>(&self, pairs: &'a str) -> Cow<'a, str> {
        if !pairs.contains('=') {
            return Cow::Borrowed(pairs);
        }
        let mut changed = false;
        let redacted: Vec<Cow<'a, str>> = pairs
            .split(['&', ';'])
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if self.is_secret_param(name) => {
                    changed = true;
                    Cow::Owned(format!("{name}={REDACTED}"))
                }
                _ => Cow::Borrowed(pair),
            })
            .collect();
        if !changed {
            return Cow::Borrowed(pairs);
        }
        // Rejoin with the separators as they were.
        let mut out = String::with_capacity(pairs.len());
        let separators = pairs.chars().filter(|c| matches!(c, '&' | ';'));
        let mut separators = separators.map(Some).chain(std::iter::repeat(None));
        for part in redacted {
            out.push_str(&part);
            if let Some(Some(separator)) = separators.next() {
                out.push(separator);
            }
        }
        Cow::Owned(out)
    }

    /// A URL-shaped text the parser refused (a bad port, a stray character): its user info and
    /// secret parameters are redacted by position, so a malformed URL in an error message leaks
    /// nothing either.
    fn redact_unparsed(&self, text: &str) -> String {
        let Some(scheme_end) = text.find("://") else {
            return text.to_string();
        };
        let authority_start = scheme_end + 3;
        let after = &text[authority_start..];
        let authority_len = after.find(['/', '?', '#']).unwrap_or(after.len());
        let authority = &after[..authority_len];
        let mut out = text[..authority_start].to_string();
        match authority.rfind('@') {
            Some(at) => {
                out.push_str(REDACTED);
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        let tail = &after[authority_len..];
        match tail.find(['?', '#']) {
            Some(query_at) => {
                out.push_str(&tail[..=query_at]);
                out.push_str(&self.redact_pairs(&tail[query_at + 1..]));
            }
            None => out.push_str(tail),
        }
        out
    }
}

/// `text` with each span `next_span` finds in what is left (its start and end there) replaced by
/// `rewrite` of it; the text between spans kept.
fn rewrite_spans(
    text: &str,
    next_span: impl Fn(&str) -> Option<(usize, usize)>,
    rewrite: impl Fn(&str) -> String,
) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((start, end)) = next_span(rest) {
        out.push_str(&rest[..start]);
        out.push_str(&rewrite(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Where the JSON string whose body starts `body` ends: the first quote no backslash escapes.
fn closing_quote(body: &str) -> Option<usize> {
    let mut escaped = false;
    for (index, c) in body.char_indices() {
        match c {
            '\\' => escaped = !escaped,
            '"' if !escaped => return Some(index),
            _ => escaped = false,
        }
    }
    None
}

/// Lower-cased, percent-decoded until it no longer changes (`%2561` is `%61` is `a`), `+` read as
/// a space as forms write it, and trimmed: the name a server's parser would act on, however the URL
/// spelled it.
fn normalise_name(name: &str) -> String {
    let mut name = name.replace('+', " ");
    for _ in 0..DECODE_ROUNDS_MAX {
        let decoded = percent_decode(&name);
        if decoded == name {
            break;
        }
        name = decoded;
    }
    name.trim().trim_end_matches("[]").trim().to_lowercase()
}

/// `%XX` sequences replaced by their byte, once; anything else kept (a lone `%` too).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escaped = (bytes[index] == b'%')
            .then(|| bytes.get(index + 1..index + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                decoded.push(byte);
                index += 3;
            }
            None => {
                decoded.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// Where the scheme ending just before `://` starts in `before`: back over the characters a
/// scheme may hold, forward to its first letter.
fn scheme_start(before: &str) -> usize {
    let start = before
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        .last()
        .map_or(before.len(), |(index, _)| index);
    // A scheme starts with a letter: `1http://` is `http://` after a digit.
    before[start..]
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or(before.len(), |offset| start + offset)
}

/// How long the URL starting at `text` (at its `://`) runs: to the first space, quote or angle
/// bracket, less closing punctuation that ends a sentence or a bracket around it.
fn url_length(text: &str) -> usize {
    let end = text
        .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`'))
        .unwrap_or(text.len());
    let trimmed = text[..end].trim_end_matches([')', ']', '}', ',', '.', ';']);
    trimmed.len().max(3)
}

/// [`Redactor::redact_url`] with the process's rules.
pub fn redact_url(text: &str) -> String {
    Redactor::global().redact_url(text)
}

/// [`Redactor::redact_text`] with the process's rules.
pub fn redact_text(text: &str) -> String {
    Redactor::global().redact_text(text)
}

/// [`Redactor::redact_json_text`] with the process's rules.
pub fn redact_json_text(json: &str) -> String {
    Redactor::global().redact_json_text(json)
}

/// [`Redactor::redact_json`] with the process's rules.
pub fn redact_json(value: &mut serde_json::Value) {
    Redactor::global().redact_json(value)
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
        assert!(redacted.contains("X-Amz-Signature=REDACTED"), "{redacted}");
        assert!(
            redacted.starts_with("https://bucket.s3.amazonaws.com/v.mp4?"),
            "{redacted}"
        );
    }

    #[test]
    fn tokens_sigs_user_names_and_passwords_are_redacted() {
        for url in [
            "https://user:hunter2@cdn.example.com/a.mp4?token=abc123&sig=zzz&Expires=99",
            "http://ghp_hunter2@cdn.example.com/a.mp4",
            "https://cdn.example.com/a.mp4?JWT=hunter2",
            "https://cdn.example.com/a.mp4?Auth_Key=hunter2&sessionid=abc123",
            "https://cdn.example.com/a.mp4?%61uth%5Fkey=hunter2&%2573id=abc123",
            "https://cdn.example.com/a.mp4#access_token=hunter2&state=zzz99",
            "https://cdn.example.com/a.mp4?hdnts=exp%3D1~hmac%3Dhunter2&__token__=abc123",
        ] {
            let redacted = redact_url(url);
            for secret in ["hunter2", "abc123"] {
                assert!(!redacted.contains(secret), "{secret} in {redacted}");
            }
        }
    }

    #[test]
    fn urls_without_secrets_and_paths_are_unchanged() {
        for text in [
            "https://cdn.example.com/a.mp4?quality=hd",
            "https://cdn.example.com/a.mp4?quality=h%20d&x=1;y=2",
            "/srv/media/a.mp4",
            "not a url",
            "mailto:someone@example.com",
        ] {
            assert_eq!(redact_url(text), text);
        }
    }

    #[test]
    fn operator_names_are_secret_in_any_case() {
        let redactor = Redactor::with_params(" X-Tenant-Seal ,, other ");
        let redacted = redactor.redact_url("https://h/a?x-tenant-SEAL=hunter2&OTHER=abc123&q=1");
        assert_eq!(
            redacted,
            "https://h/a?x-tenant-SEAL=REDACTED&OTHER=REDACTED&q=1"
        );
        assert!(
            Redactor::default()
                .redact_url("https://h/a?x-tenant-seal=hunter2")
                .contains("hunter2"),
            "not a built-in name"
        );
    }

    #[test]
    fn postgres_uris_lose_their_password_in_both_places() {
        let redacted =
            redact_url("postgres://narra:hunter2@db:5432/narra?password=abc123&pool_max=4");
        assert_eq!(
            redacted,
            "postgres://REDACTED:REDACTED@db:5432/narra?password=REDACTED&pool_max=4"
        );
    }

    #[test]
    fn urls_inside_messages_and_keys_are_redacted() {
        let redactor = Redactor::default();
        for (text, expected) in [
            (
                "request to https://cdn.example.com/a.mp4?token=abc123 failed: reset",
                "request to https://cdn.example.com/a.mp4?token=REDACTED failed: reset",
            ),
            (
                "ingest:http://hunter2@h/a.mp4",
                "ingest:http://REDACTED@h/a.mp4",
            ),
            (
                "error sending request for url (http://u:hunter2@h/a?sig=x).",
                "error sending request for url (http://REDACTED:REDACTED@h/a?sig=REDACTED).",
            ),
            (
                "url=\"http://h:99999/a?jwt=abc123\" and http://u@[bad/x",
                "url=\"http://h:99999/a?jwt=REDACTED\" and http://REDACTED@[bad/x",
            ),
        ] {
            assert_eq!(redactor.redact_text(text), expected);
        }
    }

    #[test]
    fn json_strings_and_credential_members_are_redacted() {
        let mut description = serde_json::json!({
            "title": "a clip",
            "url": "https://cdn.example.com/v.mp4?Signature=hunter2&Key-Pair-Id=abc123",
            "formats": [{
                "url": "https://cdn.example.com/v.m3u8?hdnea=hunter2",
                "http_headers": {"Cookie": "sid=hunter2", "User-Agent": "yt-dlp"},
                "filesize": 10,
            }],
        });
        Redactor::default().redact_json(&mut description);
        let text = description.to_string();
        for secret in ["hunter2", "abc123"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(description["title"], "a clip");
        assert_eq!(
            description["formats"][0]["http_headers"]["User-Agent"],
            "yt-dlp"
        );
    }

    #[test]
    fn json_text_strings_are_redacted_and_numbers_kept() {
        let json = r#"{"id":340282366920938463463374607431768211455,"key":"ingest:http://hunter2@h/a?sig=abc123","note":"say \"http://h/?jwt=abc123\" \\","n":[1,"x"]}"#;
        let redacted = Redactor::default().redact_json_text(json);
        assert_eq!(
            redacted,
            r#"{"id":340282366920938463463374607431768211455,"key":"ingest:http://REDACTED@h/a?sig=REDACTED","note":"say \"http://h/?jwt=REDACTED\" \\","n":[1,"x"]}"#
        );
    }
}

#[cfg(test)]
mod proptests {
    //! Secrets in every position of random URLs: user, password, each listed parameter in any
    //! letter case, repeated, percent-encoded, in the query and the fragment. None survives.

    use proptest::prelude::*;

    use super::*;

    /// Every secret value holds this (any case); nothing else generated does.
    const MARKER: &str = "zq9secret";

    /// The names signers use, family by family, as they spell them, written out here rather than
    /// taken from `SECRET_PARAMS` so that a name dropped from the rules is caught; and the
    /// operator's name the tests configure.
    #[rustfmt::skip]
    const LISTED: &[&[&str]] = &[
        &["X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token", "AWSAccessKeyId"],
        &["X-Goog-Signature", "X-Goog-Credential", "GoogleAccessId", "Signature", "Expires"],
        &["sig", "se", "sp", "sv", "sr", "st", "ss", "srt", "spr", "sip", "si", "skoid", "sktid"],
        &["Policy", "Key-Pair-Id", "hdnts", "hdnea", "hdntl", "__token__"],
        &["jwt", "id_token", "access_token", "refresh_token", "token", "code"],
        &["session", "sessionid", "session_id", "sid", "PHPSESSID", "JSESSIONID", "connect.sid"],
        &["key", "api_key", "apikey", "X-Api-Key", "auth_key", "authkey", "access_key"],
        &["client_secret", "secret", "password", "passwd", "pwd", "auth", "authorization"],
        &["tenant_seal"],
    ];

    fn listed() -> Vec<&'static str> {
        LISTED
            .iter()
            .flat_map(|family| family.iter().copied())
            .collect()
    }

    /// The name in a random letter case, some characters percent-encoded (once or twice).
    fn spelled(name: &'static str) -> impl Strategy<Value = String> {
        proptest::collection::vec((any::<bool>(), 0u8..6), name.len()).prop_map(move |choices| {
            name.chars()
                .zip(choices)
                .map(|(c, (upper, encode))| {
                    let c = if upper {
                        c.to_ascii_uppercase()
                    } else {
                        c.to_ascii_lowercase()
                    };
                    match encode {
                        0 => format!("%{:02X}", c as u32),
                        1 => format!("%25{:02X}", c as u32),
                        _ => c.to_string(),
                    }
                })
                .collect()
        })
    }

    /// A secret value: the marker in some case, maybe percent-encoded, among URL-safe noise.
    fn secret() -> impl Strategy<Value = String> {
        (
            "[A-Za-z0-9._~-]{0,8}",
            any::<bool>(),
            any::<bool>(),
            "[A-Za-z0-9]{0,8}",
        )
            .prop_map(|(before, upper, encoded, after)| {
                let marker = if upper {
                    MARKER.to_uppercase()
                } else {
                    MARKER.to_string()
                };
                let marker = if encoded {
                    marker.bytes().map(|b| format!("%{b:02X}")).collect()
                } else {
                    marker
                };
                format!("{before}{marker}{after}")
            })
    }

    /// A pair that is no secret: a name no rule covers and a plain value.
    fn plain_pair() -> impl Strategy<Value = String> {
        ("q[0-9]{1,3}[a-z]{0,2}", "[a-z0-9]{1,8}")
            .prop_map(|(name, value)| format!("{name}={value}"))
    }

    /// A listed name with a secret value, sometimes repeated with another (`sig=a&sig=b`: which
    /// one a server reads is its choice, so neither may show).
    fn secret_pair() -> impl Strategy<Value = String> {
        (
            proptest::sample::select(listed()).prop_flat_map(spelled),
            secret(),
            proptest::option::of(secret()),
        )
            .prop_map(|(name, value, again)| match again {
                Some(again) => format!("{name}={value}&{name}={again}"),
                None => format!("{name}={value}"),
            })
    }

    prop_compose! {
        fn secret_url()(
            scheme in proptest::sample::select(&["http", "https", "postgres", "s3"][..]),
            user in proptest::option::of(secret()),
            password in proptest::option::of(secret()),
            host in proptest::sample::select(&["cdn.example.com", "127.0.0.1", "[::1]", "h"][..]),
            port in proptest::option::of(1u16..),
            path in "(/[a-z0-9.]{0,6}){0,3}",
            query in proptest::collection::vec(
                prop_oneof![plain_pair(), secret_pair(), secret_pair()], 0..8),
            separator in proptest::sample::select(&["&", ";"][..]),
            fragment in proptest::collection::vec(
                prop_oneof![plain_pair(), secret_pair()], 0..3),
        ) -> String {
            let mut url = format!("{scheme}://");
            match (&user, &password) {
                (Some(user), Some(password)) => url.push_str(&format!("{user}:{password}@")),
                (Some(user), None) => url.push_str(&format!("{user}@")),
                (None, Some(password)) => url.push_str(&format!(":{password}@")),
                (None, None) => {}
            }
            url.push_str(host);
            if let Some(port) = port {
                url.push_str(&format!(":{port}"));
            }
            url.push_str(&path);
            if !query.is_empty() {
                url.push('?');
                url.push_str(&query.join(separator));
            }
            if !fragment.is_empty() {
                url.push('#');
                url.push_str(&fragment.join("&"));
            }
            url
        }
    }

    /// The text as a reader could decode it, in lower case: a secret hidden by encoding shows.
    fn readable(text: &str) -> String {
        let mut text = text.to_string();
        for _ in 0..3 {
            text = percent_decode(&text);
        }
        text.to_lowercase()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn no_secret_survives_redact_url(url in secret_url()) {
            let redactor = Redactor::with_params("Tenant_Seal");
            let redacted = redactor.redact_url(&url);
            prop_assert!(!readable(&redacted).contains(MARKER), "{url}\n-> {redacted}");
            // Inside a message, and twice in one, too.
            let message = format!("fetching {url} failed (see {url}).");
            let redacted = redactor.redact_text(&message);
            prop_assert!(!readable(&redacted).contains(MARKER), "{message}\n-> {redacted}");
        }

        #[test]
        fn pairs_that_are_no_secret_are_kept(
            pairs in proptest::collection::vec(plain_pair(), 1..6),
            secrets in proptest::collection::vec(secret_pair(), 0..4),
        ) {
            let url = format!("https://cdn.example.com/a?{}&{}", pairs.join("&"), secrets.join("&"));
            let redacted = Redactor::with_params("Tenant_Seal").redact_url(&url);
            for pair in &pairs {
                prop_assert!(redacted.contains(pair.as_str()), "{pair} lost: {url}\n-> {redacted}");
            }
        }
    }
}
