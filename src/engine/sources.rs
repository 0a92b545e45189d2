//! Sources as typed in, and the idempotency keys derived from them.
//!
//! The key is what makes submission idempotent: the same video submitted twice is one job. Without
//! `--key`, it is the workflow name plus the normalised source: scheme and host lower-cased, the
//! default port and the fragment dropped, local paths made absolute. Nothing here does I/O beyond
//! resolving a relative local path against the current directory.

use std::path::Path;

/// The source as the job keeps it: URLs as given (trimmed), local paths made absolute so that the
/// job can be retried from any directory.
pub fn canonical_source(input: &str, current_dir: &Path) -> String {
    let trimmed = input.trim();
    if trimmed.contains("://") {
        return trimmed.to_string();
    }
    let path = Path::new(trimmed);
    if path.is_absolute() || trimmed.is_empty() {
        trimmed.to_string()
    } else {
        current_dir.join(path).display().to_string()
    }
}

/// The default idempotency key of a source under a workflow.
pub fn idempotency_key(source: &str, workflow: &str) -> String {
    format!("{workflow}:{}", normalize_source(source))
}

/// Scheme and host lower-cased, default port and fragment dropped; local paths as `file://` URLs.
pub fn normalize_source(source: &str) -> String {
    let trimmed = source.trim();
    if !trimmed.contains("://") && trimmed.starts_with('/') {
        return match url::Url::from_file_path(trimmed) {
            Ok(url) => url.to_string(),
            Err(()) => trimmed.to_string(),
        };
    }
    match url::Url::parse(trimmed) {
        Ok(mut url) => {
            // The url crate already lower-cases the scheme and host of special schemes and drops
            // their default ports.
            url.set_fragment(None);
            url.to_string()
        }
        Err(_) => trimmed.to_string(),
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
        let source = canonical_source("media/a.mp4", Path::new("/srv"));
        assert_eq!(source, "/srv/media/a.mp4");
        assert_eq!(
            idempotency_key(&source, "ingest"),
            idempotency_key("file:///srv/media/a.mp4", "ingest")
        );
    }
}
