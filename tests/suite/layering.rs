//! The layering of `src/` as a test, read from the source the way rust-analyzer keeps its
//! architecture invariants: every `crate::` path in a file of `src/` (grouped `use crate::{...}`,
//! inline paths, paths inside macro calls, `$crate::` in macro definitions) is an arrow from the
//! top-level module the file belongs to, to the top-level module the path names, and the table of
//! layers in docs/ARCHITECTURE.md must allow every arrow. Comments and the insides of string and
//! character literals are not code and name nothing.
//!
//! `src/lib.rs` (which only declares the modules) and `src/main.rs` (the binary, which reaches the
//! library as `narra::` and wires the layers together) are the roots and are not read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The table of docs/ARCHITECTURE.md's "Layers" section.
#[derive(Debug)]
struct Layers {
    /// Each layer and the layers it may use.
    uses: BTreeMap<String, BTreeSet<String>>,
    /// Modules every layer but the model may use; they use at most what their own row says.
    leaves: BTreeSet<String>,
}

impl Layers {
    fn allows(&self, from: &str, to: &str) -> bool {
        from == to
            || self.uses.get(from).is_some_and(|uses| uses.contains(to))
            || (self.leaves.contains(to) && from != "model")
    }

    fn knows(&self, module: &str) -> bool {
        self.uses.contains_key(module)
    }
}

/// Reads the table under `## Layers`: `| `layer` | `a`, `b` |` rows, `nothing` for none, and a
/// row whose first cell starts with `leaves:` naming the leaves, whose second cell is what they use.
fn read_layers(doc: &str) -> Layers {
    let section = doc
        .split("\n## Layers")
        .nth(1)
        .expect("docs/ARCHITECTURE.md has a `## Layers` section");
    let section = section
        .split("\n## ")
        .next()
        .expect("split yields one part");
    let names = |cell: &str| -> BTreeSet<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    };
    let mut layers = Layers {
        uses: BTreeMap::new(),
        leaves: BTreeSet::new(),
    };
    for row in section.lines().filter(|line| line.starts_with("| ")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (layer, uses) = (cells[1], cells[2]);
        if layer == "layer" {
            continue;
        }
        let used = names(uses);
        if let Some(leaves) = layer.strip_prefix("leaves:") {
            for leaf in names(leaves) {
                layers.uses.insert(leaf.clone(), used.clone());
                layers.leaves.insert(leaf);
            }
        } else {
            for name in names(layer) {
                layers.uses.insert(name, used.clone());
            }
        }
    }
    assert!(
        layers.uses.contains_key("model") && !layers.leaves.is_empty(),
        "the Layers table names the model and the leaves: {layers:?}"
    );
    layers
}

/// The text with comments removed and the insides of string and character literals blanked, so
/// that what remains is code.
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r' && matches!(next, Some('#') | Some('"')) && !ident_before(&chars, i) {
            // A raw string: r"...", r#"..."#, with as many hashes closing as opening.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= chars.len() {
                    break;
                }
                if chars[j] == '"' && (1..=hashes).all(|k| chars.get(j + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A character literal ('a', '\n', '\u{1F600}') or a lifetime ('a): only the first
            // is skipped.
            let close = if next == Some('\\') {
                chars[i + 2..]
                    .iter()
                    .position(|&c| c == '\'')
                    .map(|p| i + 2 + p)
            } else if chars.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match close {
                Some(end) => {
                    out.push_str("' '");
                    i = end + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_before(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

/// The top-level modules a file's code names through `crate::` (or `$crate::`).
fn named_modules(text: &str) -> BTreeSet<String> {
    let code = code_only(text);
    let mut named = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        let after = &rest[at + "crate::".len()..];
        rest = after;
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `mycrate::`, not `crate::`
        }
        let after = after.trim_start();
        if let Some(group) = after.strip_prefix('{') {
            named.extend(group_heads(group));
        } else {
            named.insert(ident(after));
        }
    }
    named.retain(|name| !name.is_empty() && name != "self");
    named
}

/// The first identifier of each item of a `{...}` group (the text just after its `{`), up to
/// its closing brace.
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = vec![ident(group.trim_start())];
    let mut depth = 0usize;
    for (at, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => heads.push(ident(group[at + 1..].trim_start())),
            _ => {}
        }
    }
    heads
}

fn ident(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// The top-level module a file of `src/` belongs to (`engine` for `src/engine/worker.rs`,
/// `failpoint` for `src/failpoint.rs`), or `None` for the roots.
fn layer_of(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" | "main.rs" => None,
        file => Some(file.trim_end_matches(".rs").to_string()),
    }
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

/// Every arrow of one file that the table does not allow, as `file: from -> to`.
fn forbidden(layers: &Layers, relative: &Path, text: &str) -> Vec<String> {
    let Some(from) = layer_of(relative) else {
        return Vec::new();
    };
    let mut wrong = Vec::new();
    if !layers.knows(&from) {
        wrong.push(format!(
            "{}: `{from}` has no row in the Layers table",
            relative.display()
        ));
    }
    for to in named_modules(text) {
        if !layers.allows(&from, &to) {
            wrong.push(format!("{}: {from} -> {to}", relative.display()));
        }
    }
    wrong
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn layers() -> Layers {
    let doc = std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).expect("read doc");
    read_layers(&doc)
}

#[test]
fn every_import_in_src_is_an_arrow_the_architecture_table_allows() {
    let layers = layers();
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 50, "src/ has its files: {}", files.len());
    let mut wrong = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read source");
        let relative = file.strip_prefix(&src).expect("under src/");
        wrong.extend(forbidden(&layers, relative, &text));
    }
    assert!(
        wrong.is_empty(),
        "arrows docs/ARCHITECTURE.md's Layers table does not allow:\n{}",
        wrong.join("\n")
    );
}

/// The crates the model may name: the standard library, serde, url, blake3, ulid and chrono, with
/// thiserror's derive and proptest in its tests. Nothing that does I/O.
const MODEL_CRATES: [&str; 11] = [
    "std",
    "core",
    "alloc",
    "serde",
    "serde_json",
    "url",
    "blake3",
    "ulid",
    "chrono",
    "thiserror",
    "proptest",
];

/// The dependencies of Cargo.toml (all tables) a file's code names as `name::`, beyond `allowed`.
fn other_crates(cargo_toml: &str, text: &str, allowed: &[&str]) -> BTreeSet<String> {
    let crates: BTreeSet<String> = cargo_toml
        .lines()
        .filter_map(|line| line.split_once(" = "))
        .map(|(name, _)| name.trim().replace('-', "_"))
        .filter(|name| !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_'))
        .collect();
    let code = code_only(text);
    let mut named = BTreeSet::new();
    for (at, _) in code.match_indices("::") {
        let before = &code[..at];
        let start = before
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
            .map_or(0, |p| p + 1);
        let name = &before[start..];
        // A path's first segment only: `a::b::c` names `a`.
        let first = !before[..start].ends_with("::");
        if first && crates.contains(name) && !allowed.contains(&name) {
            named.insert(name.to_string());
        }
    }
    named
}

/// What `find` reports of each file of `src/model/`, as `path: what`.
fn in_each_model_file<T: std::fmt::Display>(find: impl Fn(&str) -> BTreeSet<T>) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(&root().join("src/model"), &mut files);
    assert!(files.len() > 5, "src/model/ has its files");
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read source");
        for what in find(&text) {
            found.push(format!("{}: {what}", file.display()));
        }
    }
    found
}

#[test]
fn the_model_names_no_crate_that_does_io() {
    let cargo_toml = std::fs::read_to_string(root().join("Cargo.toml")).expect("read Cargo.toml");
    let wrong = in_each_model_file(|text| other_crates(&cargo_toml, text, &MODEL_CRATES));
    assert!(
        wrong.is_empty(),
        "the model names these crates:\n{}",
        wrong.join("\n")
    );
    // The check itself sees a planted import, an inline path and a path in a macro.
    let planted = "use tokio::sync::Mutex;\nfn f() { let _ = sled::open(\"x\"); \
                   println!(\"{}\", reqwest::Method::GET); let _ = std::fs::read(\"y\"); }";
    assert_eq!(
        other_crates(&cargo_toml, planted, &MODEL_CRATES),
        ["reqwest", "sled", "tokio"].map(String::from).into()
    );
}

/// The ways code reads the process's environment: its variables, arguments and working directory.
/// The model reads none of them: the doors read them and hand the values in.
const ENVIRONMENT_READS: [&str; 3] = ["std::env", "env::", "current_dir"];

/// The environment reads a file's code makes (comments and string literals name nothing).
fn environment_reads(text: &str) -> BTreeSet<&'static str> {
    let code = code_only(text);
    ENVIRONMENT_READS
        .into_iter()
        .filter(|read| {
            code.match_indices(read).any(|(at, _)| {
                // `env::` as a path's own segment, not the end of `myenv::`.
                !code[..at]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_')
            })
        })
        .collect()
}

#[test]
fn the_model_reads_no_environment() {
    let wrong = in_each_model_file(environment_reads);
    assert!(
        wrong.is_empty(),
        "the model reads the environment:\n{}",
        wrong.join("\n")
    );
    // The check itself sees a planted read in every form, and not one in a comment or a string.
    let planted = "use std::{env, fs};\n// std::env::current_dir() in a comment reads nothing\n\
                   fn f() -> String { let _ = fs::read(\"std::env\"); env::var(\"X\").unwrap() }";
    assert_eq!(environment_reads(planted), ["env::"].into());
    let planted = "fn g() { let _ = std::env::current_dir(); let _ = myenv::x(); }";
    assert_eq!(
        environment_reads(planted),
        ["current_dir", "env::", "std::env"].into()
    );
    assert!(environment_reads("fn h() { let _ = myenv::var(); }").is_empty());
}

#[test]
fn the_check_finds_a_planted_forbidden_import_in_every_form() {
    let layers = layers();
    let planted = r##"
        //! A step that reaches the CLI: crate::api in a doc comment names nothing.
        use crate::{
            model::job::Job,
            cli::views::{self, show},
        };
        use crate::workflow::{DownloadParams, Workflow};
        /* crate::store in a block comment names nothing */
        fn f() -> String {
            let quoted = "crate::engine::Engine";
            let raw = r#"crate::views"#;
            let c = '"';
            format!("{quoted}{raw}{c}{}", crate::api::router())
        }
        macro_rules! m { () => { $crate::store::open() }; }
    "##;
    let wrong = forbidden(&layers, Path::new("steps/planted.rs"), planted);
    assert_eq!(
        wrong,
        vec![
            "steps/planted.rs: steps -> api".to_string(),
            "steps/planted.rs: steps -> cli".to_string(),
            "steps/planted.rs: steps -> store".to_string(),
        ]
    );
    assert_eq!(
        named_modules(planted),
        ["api", "cli", "model", "store", "workflow"]
            .map(String::from)
            .into(),
        "the model and the workflow are read too, and allowed"
    );
    // The model uses nothing, not even a leaf; a module the table lacks is named.
    assert_eq!(
        forbidden(&layers, Path::new("model/x.rs"), "use crate::failpoint;"),
        vec!["model/x.rs: model -> failpoint".to_string()]
    );
    assert_eq!(
        forbidden(&layers, Path::new("newthing.rs"), ""),
        vec!["newthing.rs: `newthing` has no row in the Layers table".to_string()]
    );
    assert!(forbidden(&layers, Path::new("lib.rs"), "use crate::cli;").is_empty());
}

#[test]
fn the_table_is_the_one_the_architecture_promises() {
    let layers = layers();
    let row =
        |layer: &str| -> Vec<&str> { layers.uses[layer].iter().map(String::as_str).collect() };
    assert!(row("model").is_empty());
    for layer in ["workflow", "storage", "store", "views"] {
        assert_eq!(row(layer), ["model"], "{layer}");
    }
    assert_eq!(row("steps"), ["model", "storage", "workflow"]);
    let below_engine = ["model", "steps", "storage", "store", "views", "workflow"];
    assert_eq!(row("engine"), below_engine);
    for door in ["cli", "api"] {
        let mut expected = below_engine.to_vec();
        expected.push("engine");
        expected.sort();
        assert_eq!(
            row(door),
            expected,
            "{door}: everything below, never the other door"
        );
    }
    assert_eq!(
        layers.leaves,
        ["failpoint", "logging", "private_files", "wire"]
            .map(String::from)
            .into()
    );
}
