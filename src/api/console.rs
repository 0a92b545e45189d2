//! The admin console and the API's description, both compiled into the binary: one static page of
//! HTML and vanilla JavaScript (`console.html`) that calls the API like any other client, and
//! `openapi.json`. No front-end build is needed to run either.

use axum::http::header;
use axum::response::IntoResponse;

/// The console page.
pub const CONSOLE_HTML: &str = include_str!("console.html");
/// The OpenAPI 3.1 description of the endpoints.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// `GET /`.
pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // The page loads nothing from elsewhere, and no other site may frame it.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self'; frame-ancestors 'none'",
            ),
        ],
        CONSOLE_HTML,
    )
}

/// `GET /openapi.json`.
pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_openapi_description_is_json_and_names_every_route() {
        let value: serde_json::Value = serde_json::from_str(super::OPENAPI_JSON).unwrap();
        let paths = value["paths"].as_object().unwrap();
        for path in [
            "/jobs",
            "/jobs/{id}",
            "/jobs/{id}/events",
            "/jobs/{id}/logs",
            "/jobs/{id}/retry",
            "/jobs/{id}/cancel",
            "/jobs/{id}/reset",
            "/backfills",
            "/backfills/{id}",
            "/verify/{id}",
            "/cleanup",
            "/health",
            "/metrics",
        ] {
            assert!(paths.contains_key(path), "openapi.json lacks {path}");
        }
    }
}
