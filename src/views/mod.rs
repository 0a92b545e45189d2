//! The shapes of jobs and reports that people and programs see: the JSON of `--json`, the API and
//! the webhook notices, and the lines of text the CLI prints.

#[cfg(test)]
mod golden;
