//! Sources as typed in, and the idempotency keys derived from them.
//!
//! One rule decides what a source is, for every door: a text that starts with a URL scheme
//! (`letters:`) is a URL, whatever follows, and what is keyed, stored, shown, logged and fetched is
//! the URL as parsed and normalised, never the raw text; anything else is a local path. Local paths
//! come only from the host (the CLI and the manifests it reads, [`LocalPaths`]), made absolute
//! there; a remote client (the API) names `http(s)` URLs only. A source with a control character is
//! refused everywhere: it could forge a line in a log or a listing.
//!
//! The key is what makes submission idempotent: the same video submitted twice is one job. Without
//! `--key`, it is the workflow name plus the normalised source: scheme and host lower-cased, the
//! default port and the fragment dropped, local paths made absolute. Nothing here does I/O: the
//! working directory is read by the caller and handed to [`LocalPaths::base_dir`].

use std::path::{Path, PathBuf};

/// Whether a submission may name local paths, and what relative ones are resolved against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LocalPaths {
    /// Local paths allowed, relative ones resolved against this process's working directory.
    #[default]
    CurrentDir,
    /// Local paths allowed, relative ones resolved against this directory (the submitting
    /// client's, when another process serves the command: `cli::remote`).
    RelativeTo(PathBuf),
    /// `http(s)` URLs only: the submission comes from a remote client (the HTTP API).
    Refused,
}

impl LocalPaths {
    /// The directory relative paths are resolved against, `None` when local paths are refused:
    /// what [`canonical_source`] takes. `working_dir` reads this process's working directory (the
    /// caller's to read: the model reads no environment), asked only for `CurrentDir`, so a
    /// submission asks once for all its sources.
    pub fn base_dir(&self, working_dir: impl FnOnce() -> PathBuf) -> Option<PathBuf> {
        match self {
            LocalPaths::CurrentDir => Some(working_dir()),
            LocalPaths::RelativeTo(dir) => Some(dir.clone()),
            LocalPaths::Refused => None,
        }
    }
}

/// Why a source is refused at submission (a usage error: exit 2, HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("the source is empty")]
    Empty,
    #[error("the source has a control character ({0:?}) at byte {1}: sources are one line of text")]
    ControlCharacter(char, usize),
    #[error(
        "the API takes http(s) URLs only: {0} (local paths and other schemes are refused; use the CLI on the host)"
    )]
    NotHttp(String),
}

impl SourceError {
    /// The stable class a client sees: `unsupported_source` for a source of a kind the door does
    /// not take (as the download step names one), `invalid_source` for text that is no source.
    pub fn class(&self) -> &'static str {
        match self {
            SourceError::NotHttp(_) => "unsupported_source",
            SourceError::Empty | SourceError::ControlCharacter(..) => "invalid_source",
        }
    }
}

/// Refuses a caller's idempotency key (`--key`, the API's `key`) with a control character: it is
/// shown by `show` like a source, and a line break in it would forge a line as well.
pub fn check_key(key: &str) -> Result<(), SourceError> {
    match key.char_indices().find(|(_, c)| c.is_control()) {
        Some((at, control)) => Err(SourceError::ControlCharacter(control, at)),
        None if key.trim().is_empty() => Err(SourceError::Empty),
        None => Ok(()),
    }
}

/// What a source is, by the one rule of this module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceText<'a> {
    /// It starts with a scheme: a URL, parsed (`Err` when it does not parse).
    Url(Result<url::Url, url::ParseError>),
    /// No scheme: a local path, as typed.
    Path(&'a str),
}

/// Classifies a (trimmed) source: a text that starts with `scheme:` is a URL, in any case and
/// whatever follows (`http:/etc/passwd` is the URL `http://etc/passwd`, never a path under a
/// directory named `http:`); anything else is a local path.
pub fn classify(text: &str) -> SourceText<'_> {
    if has_scheme(text) {
        SourceText::Url(url::Url::parse(text))
    } else {
        SourceText::Path(text)
    }
}

/// Whether `text` starts with a URL scheme and its colon (RFC 3986: a letter, then letters,
/// digits, `+`, `-` or `.`).
fn has_scheme(text: &str) -> bool {
    let Some((scheme, _)) = text.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// The source as the job keeps it: a URL parsed and normalised (scheme and host lower-cased,
/// default port and fragment dropped); a local path made absolute against `base_dir`, so the job
/// can be retried from any directory. `base_dir` is `None` for a remote client, whose source must
/// be an `http(s)` URL with a host ([`LocalPaths::base_dir`]). A URL that does not parse is kept as
/// typed (trimmed) when local paths are allowed, so it becomes a job that fails with
/// `unsupported_source` and can be seen.
pub fn canonical_source(input: &str, base_dir: Option<&Path>) -> Result<String, SourceError> {
    // Before trimming: a line break at either end is as much a forged line as one inside.
    if let Some((at, control)) = input.char_indices().find(|(_, c)| c.is_control()) {
        return Err(SourceError::ControlCharacter(control, at));
    }
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(SourceError::Empty);
    }
    match classify(trimmed) {
        SourceText::Url(Ok(url)) => {
            let url = normalized(url);
            if base_dir.is_none()
                && (!matches!(url.scheme(), "http" | "https")
                    || url.host_str().is_none_or(str::is_empty))
            {
                return Err(SourceError::NotHttp(format!(
                    "{:?}",
                    crate::model::redact::redact_url(url.as_str())
                )));
            }
            Ok(url.to_string())
        }
        SourceText::Url(Err(error)) => match base_dir {
            Some(_) => Ok(trimmed.to_string()),
            None => Err(SourceError::NotHttp(format!("not a valid URL ({error})"))),
        },
        SourceText::Path(path) => match base_dir {
            Some(base_dir) => Ok(base_dir.join(path).display().to_string()),
            None => Err(SourceError::NotHttp("a local path".to_string())),
        },
    }
}

fn normalized(mut url: url::Url) -> url::Url {
    // The url crate already lower-cases the scheme and host of special schemes and drops their
    // default ports; the fragment is never sent to a server.
    url.set_fragment(None);
    url
}

/// The default idempotency key of a source under a workflow.
pub fn idempotency_key(source: &str, workflow: &str) -> String {
    format!("{workflow}:{}", normalize_source(source))
}

/// Scheme and host lower-cased, default port and fragment dropped; local paths as `file://` URLs.
pub fn normalize_source(source: &str) -> String {
    let trimmed = source.trim();
    match classify(trimmed) {
        SourceText::Url(Ok(url)) => normalized(url).to_string(),
        SourceText::Url(Err(_)) => trimmed.to_string(),
        SourceText::Path(path) => match url::Url::from_file_path(path) {
            Ok(url) => url.to_string(),
            Err(()) => trimmed.to_string(),
        },
    }
}

/// The host a failure is counted under: the URL's host (and port), `local` for a path or a
/// `file://` URL, `unknown` when there is none.
pub fn source_host(source: &str) -> String {
    if !source.contains("://") {
        return "local".to_string();
    }
    match url::Url::parse(source) {
        Ok(url) if url.scheme() == "file" => "local".to_string(),
        Ok(url) => match (url.host_str(), url.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_string(),
            (None, _) => "unknown".to_string(),
        },
        Err(_) => "unknown".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheme_host_default_port_and_fragment_do_not_change_the_key() {
        let a = idempotency_key("HTTPS://CDN.Example.com:443/Video.mp4#t=10", "ingest");
        let b = idempotency_key("https://cdn.example.com/Video.mp4", "ingest");
        assert_eq!(a, b);
        assert_eq!(b, "ingest:https://cdn.example.com/Video.mp4");
    }

    #[test]
    fn path_and_query_case_do_change_the_key() {
        assert_ne!(
            idempotency_key("https://cdn.example.com/video.mp4", "ingest"),
            idempotency_key("https://cdn.example.com/Video.mp4", "ingest")
        );
        assert_ne!(
            idempotency_key("https://cdn.example.com/v.mp4?a=1", "ingest"),
            idempotency_key("https://cdn.example.com/v.mp4?a=2", "ingest")
        );
    }

    #[test]
    fn the_workflow_is_part_of_the_key() {
        assert_ne!(
            idempotency_key("https://cdn.example.com/v.mp4", "ingest"),
            idempotency_key("https://cdn.example.com/v.mp4", "asr")
        );
    }

    #[test]
    fn local_paths_become_absolute_and_match_their_file_url() {
        let source = canonical_source("media/a.mp4", Some(Path::new("/srv"))).unwrap();
        assert_eq!(source, "/srv/media/a.mp4");
        assert_eq!(
            idempotency_key(&source, "ingest"),
            idempotency_key("file:///srv/media/a.mp4", "ingest")
        );
    }

    #[test]
    fn a_text_with_a_scheme_is_a_url_never_a_path() {
        // The attack this guards against: `http:` without `//` parsed as a URL by the guard, then joined
        // onto the working directory as a path, read a local file.
        let host = Some(Path::new("/srv/narra"));
        for (typed, expected) in [
            ("http:/../../../etc/passwd", "http://../etc/passwd"),
            ("http:/etc/passwd", "http://etc/passwd"),
            ("https:etc/passwd", "https://etc/passwd"),
            ("HTTP://Example.COM/v.mp4#t=3", "http://example.com/v.mp4"),
            ("  https://example.com/v.mp4  ", "https://example.com/v.mp4"),
        ] {
            assert_eq!(canonical_source(typed, host).unwrap(), expected, "{typed}");
            assert_eq!(canonical_source(typed, None).unwrap(), expected, "{typed}");
        }
        assert!(matches!(classify("./http:/x"), SourceText::Path(_)));
        assert_eq!(
            canonical_source("./http:/x", host).unwrap(),
            "/srv/narra/./http:/x"
        );
    }

    #[test]
    fn a_remote_client_names_http_urls_only() {
        for typed in [
            "/etc/passwd",
            "etc/passwd",
            "file:///etc/passwd",
            "FILE:/etc/passwd",
            "ftp://example.com/a.mp4",
            "http://",
            "http:",
            "data:video/mp4;base64,AAAA",
        ] {
            assert!(
                matches!(canonical_source(typed, None), Err(SourceError::NotHttp(_))),
                "{typed} must be refused"
            );
        }
    }

    #[test]
    fn control_characters_are_refused_everywhere() {
        for typed in [
            "https://example.com/a.mp4\nforged line",
            "https://example.com/a\r.mp4",
            "/srv/a\u{1b}[31m.mp4",
            "https://example.com/\u{85}a.mp4",
            "\t",
            "https://example.com/a.mp4\n",
        ] {
            for base_dir in [Some(Path::new("/srv")), None] {
                let refused = canonical_source(typed, base_dir);
                assert!(
                    matches!(
                        refused,
                        Err(SourceError::ControlCharacter(..)) | Err(SourceError::Empty)
                    ),
                    "{typed:?}: {refused:?}"
                );
            }
        }
    }

    #[test]
    fn keys_of_urls_typed_before_and_now_are_the_same() {
        // A job submitted by an earlier version kept the raw text; its key was already the
        // normalised URL, so the same URL submitted now finds it.
        let raw = "HTTPS://CDN.Example.com:443/Video.mp4#t=10";
        let stored_now = canonical_source(raw, Some(Path::new("/srv"))).unwrap();
        assert_eq!(
            idempotency_key(raw, "ingest"),
            idempotency_key(&stored_now, "ingest")
        );
    }

    #[test]
    fn hosts_of_sources() {
        assert_eq!(
            source_host("https://CDN.example.com/a.mp4"),
            "cdn.example.com"
        );
        assert_eq!(source_host("http://127.0.0.1:8080/a.mp4"), "127.0.0.1:8080");
        assert_eq!(source_host("/srv/a.mp4"), "local");
        assert_eq!(source_host("file:///srv/a.mp4"), "local");
    }
}
