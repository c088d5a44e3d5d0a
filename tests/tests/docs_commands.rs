//! Every `make`, `cargo` and `target/…` command that README.md and docs/*.md tell a user to
//! run (in shell code blocks, and inline code that starts with `make ` or `cargo `) works:
//!
//! - a make target exists (`make -n`), and the commands it would run pass the checks below;
//! - a cargo command names packages and targets that exist, and every `-p` it names builds
//!   something (cargo applies `--bin` to every package of a command: issue 16's
//!   `cargo build -p egressgw --bin egressgw -p egressgw-bench-runtime` built no benchmark);
//! - a `target/<profile>/<binary>` was built, in that profile, by a command before it in the
//!   same block (or the same make target);
//! - and (ignored test: it builds them) every benchmark binary answers `--help`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use egressgw_tests::control_plane::repo_root;
use serde::Deserialize;

// ---------------------------------------------------------------------------------------------
// The workspace, as cargo sees it

#[derive(Deserialize)]
struct Metadata {
    packages: Vec<Package>,
    target_directory: PathBuf,
}

#[derive(Deserialize)]
struct Package {
    name: String,
    manifest_path: PathBuf,
    targets: Vec<Target>,
}

#[derive(Deserialize)]
struct Target {
    name: String,
    kind: Vec<String>,
}

impl Package {
    fn has(&self, kind: &str, name: Option<&str>) -> bool {
        self.targets
            .iter()
            .any(|t| t.kind.iter().any(|k| k == kind) && name.is_none_or(|n| t.name == n))
    }

    fn bins(&self) -> impl Iterator<Item = &str> {
        self.targets
            .iter()
            .filter(|t| t.kind.iter().any(|k| k == "bin"))
            .map(|t| t.name.as_str())
    }

    /// A benchmark: a package under `bench/`.
    fn is_benchmark(&self, root: &Path) -> bool {
        self.manifest_path.starts_with(root.join("bench"))
    }
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn metadata() -> Metadata {
    let out = Command::new(cargo())
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(repo_root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata output")
}

// ---------------------------------------------------------------------------------------------
// Finding the commands

/// Commands that run one after the other: a code block, a make target, or one inline span.
#[derive(Debug)]
struct Block {
    /// `docs/BENCHMARKS.md:14`, or `make bench-failover` for a target's commands.
    origin: String,
    lines: Vec<String>,
}

const SHELL_LANGUAGES: [&str; 5] = ["", "sh", "bash", "shell", "console"];

/// The `make`, `cargo` and `target/` commands of one Markdown file.
fn blocks_of(file: &str, text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut prose = String::new();
    let mut fence: Option<(String, Block, bool)> = None; // (language, block, console)
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("```") {
            match fence.take() {
                None => {
                    let language = rest.trim().to_string();
                    let console = language == "console";
                    let block = Block {
                        origin: format!("{file}:{}", i + 1),
                        lines: Vec::new(),
                    };
                    fence = Some((language, block, console));
                }
                Some((language, block, _)) => {
                    if SHELL_LANGUAGES.contains(&language.as_str()) && !block.lines.is_empty() {
                        blocks.push(block);
                    }
                }
            }
            prose.push('\n');
            continue;
        }
        match &mut fence {
            Some((_, block, console)) => {
                let command = if *console {
                    trimmed.strip_prefix("$ ")
                } else {
                    Some(trimmed)
                };
                if let Some(c) = command.map(str::trim).filter(|c| is_ours(c)) {
                    block.lines.push(c.to_string());
                }
                prose.push('\n');
            }
            None => {
                prose.push_str(line);
                prose.push('\n');
            }
        }
    }
    // Inline code outside blocks: the odd pieces between backticks (a span may wrap lines).
    let mut line = 1;
    for (k, piece) in prose.split('`').enumerate() {
        if k % 2 == 1 {
            let code = piece.split_whitespace().collect::<Vec<_>>().join(" ");
            if code.starts_with("make ") || code.starts_with("cargo ") {
                blocks.push(Block {
                    origin: format!("{file}:{line}"),
                    lines: vec![code],
                });
            }
        }
        line += piece.matches('\n').count();
    }
    blocks
}

/// A command this test checks: make, cargo, or a binary under target/.
fn is_ours(command: &str) -> bool {
    let first = command.split_whitespace().next().unwrap_or("");
    first == "make" || first == "cargo" || first.starts_with("target/")
}

fn documented_blocks() -> Vec<Block> {
    let root = repo_root();
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
        .iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(f).expect("read");
            let name = f.strip_prefix(&root).unwrap_or(f).display().to_string();
            blocks_of(&name, &text)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Shell words

/// Splits a command line into simple commands (at `&&`, `||`, `|`, `;`, braces), each a list
/// of words: quotes removed, redirections (`> file`, `2>&1`) dropped, comments cut.
fn simple_commands(line: &str) -> Vec<Vec<String>> {
    let mut commands = vec![Vec::new()];
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    let end_word = |word: &mut String, in_word: &mut bool, commands: &mut Vec<Vec<String>>| {
        if *in_word {
            commands.last_mut().expect("one").push(std::mem::take(word));
            *in_word = false;
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == c {
                        break;
                    }
                    word.push(q);
                }
            }
            '\\' => {
                if let Some(n) = chars.next() {
                    word.push(n);
                    in_word = true;
                }
            }
            '#' if !in_word => break,
            c if c.is_whitespace() => end_word(&mut word, &mut in_word, &mut commands),
            ';' | '|' | '&' | '{' | '}' | '(' | ')' => {
                end_word(&mut word, &mut in_word, &mut commands);
                while chars.peek().is_some_and(|n| "|&".contains(*n)) {
                    chars.next();
                }
                commands.push(Vec::new());
            }
            '>' | '<' => {
                // A file descriptor before it (`2>`) belongs to the redirection.
                if in_word && word.chars().all(|d| d.is_ascii_digit()) {
                    word.clear();
                    in_word = false;
                }
                end_word(&mut word, &mut in_word, &mut commands);
                while chars.peek().is_some_and(|n| *n == '>' || *n == '<') {
                    chars.next();
                }
                if chars.peek() == Some(&'&') {
                    chars.next();
                    while chars
                        .peek()
                        .is_some_and(|n| n.is_ascii_alphanumeric() || *n == '-')
                    {
                        chars.next();
                    }
                } else {
                    while chars.peek().is_some_and(|n| n.is_whitespace()) {
                        chars.next();
                    }
                    while chars
                        .peek()
                        .is_some_and(|n| !n.is_whitespace() && !";|&".contains(*n))
                    {
                        chars.next();
                    }
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    end_word(&mut word, &mut in_word, &mut commands);
    commands.retain(|c| !c.is_empty());
    commands
}

// ---------------------------------------------------------------------------------------------
// The checks

/// What the checks found, and the binaries the blocks run.
#[derive(Default)]
struct Report {
    errors: Vec<String>,
    /// Binaries run as `target/<profile>/<name>`, and where.
    binaries: BTreeMap<String, String>,
    make_targets: BTreeSet<String>,
}

struct Checker<'a> {
    meta: &'a Metadata,
    /// Whether to expand make targets with `make -n` (off for the parser's own tests).
    run_make: bool,
}

/// Cargo subcommands that build, and so take package and target selections.
const BUILDING: [&str; 13] = [
    "build", "b", "run", "r", "bench", "test", "t", "check", "c", "clippy", "doc", "rustc",
    "install",
];
/// Cargo options that take a value (the value is not a positional word).
const WITH_VALUE: [&str; 12] = [
    "--features",
    "-F",
    "-j",
    "--jobs",
    "--target",
    "--target-dir",
    "--manifest-path",
    "--color",
    "--message-format",
    "--config",
    "-Z",
    "--exclude",
];

impl Checker<'_> {
    fn check_block(&self, block: &Block, report: &mut Report) {
        // (profile dir, binary) built so far in this block
        let mut built: BTreeSet<(String, String)> = BTreeSet::new();
        for line in &block.lines {
            for words in simple_commands(line) {
                let at = format!("{} `{line}`", block.origin);
                match words[0].as_str() {
                    "make" => self.check_make(&words, &at, report),
                    "cargo" => self.check_cargo(&words, &at, &mut built, report),
                    w if w.starts_with("target/") => self.check_binary(w, &at, &built, report),
                    _ => {}
                }
            }
        }
    }

    fn check_make(&self, words: &[String], at: &str, report: &mut Report) {
        let vars: Vec<&String> = words[1..].iter().filter(|w| w.contains('=')).collect();
        let targets: Vec<&String> = words[1..]
            .iter()
            .filter(|w| !w.contains('=') && !w.starts_with('-'))
            .collect();
        if targets.is_empty() {
            report.errors.push(format!("{at}: make without a target"));
            return;
        }
        for t in &targets {
            report.make_targets.insert(t.to_string());
        }
        if !self.run_make {
            return;
        }
        let out = Command::new("make")
            .arg("-n")
            .arg("CARGO=cargo")
            .args(&vars)
            .args(&targets)
            .current_dir(repo_root())
            .output()
            .expect("make runs");
        if !out.status.success() {
            report.errors.push(format!(
                "{at}: make -n fails: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            return;
        }
        // What the target would run: its cargo and target/ commands, checked in order.
        let script = String::from_utf8_lossy(&out.stdout)
            .replace("\\\n", " ")
            .replace("${CARGO_TARGET_DIR:-target}", "target");
        let expanded = Block {
            origin: format!(
                "{at} → make {}",
                targets
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            lines: script
                .lines()
                .map(str::trim)
                .filter(|l| is_ours(l) && !l.starts_with("make"))
                .map(String::from)
                .collect(),
        };
        self.check_block(&expanded, report);
    }

    fn check_cargo(
        &self,
        words: &[String],
        at: &str,
        built: &mut BTreeSet<(String, String)>,
        report: &mut Report,
    ) {
        let Some(sub) = words.get(1) else { return };
        if !BUILDING.contains(&sub.as_str()) {
            return;
        }
        let mut packages: Vec<String> = Vec::new();
        let mut workspace = false;
        let mut named: Vec<(&str, String)> = Vec::new(); // (kind, name)
        let mut groups: BTreeSet<&str> = BTreeSet::new(); // --bins, --lib, …
        let mut profile = "debug".to_string();
        let mut it = words[2..].iter();
        while let Some(w) = it.next() {
            let (flag, inline) = match w.split_once('=') {
                Some((f, v)) if f.starts_with('-') => (f, Some(v.to_string())),
                _ => (w.as_str(), None),
            };
            let mut value = || inline.clone().or_else(|| it.next().cloned());
            match flag {
                "--" => break,
                "-p" | "--package" => packages.extend(value()),
                "--workspace" | "--all" => workspace = true,
                "--bin" => named.extend(value().map(|v| ("bin", v))),
                "--example" => named.extend(value().map(|v| ("example", v))),
                "--bench" => named.extend(value().map(|v| ("bench", v))),
                "--test" => named.extend(value().map(|v| ("test", v))),
                "--lib" => {
                    groups.insert("lib");
                }
                "--bins" => {
                    groups.insert("bin");
                }
                "--examples" => {
                    groups.insert("example");
                }
                "--tests" => {
                    groups.insert("test");
                }
                "--benches" => {
                    groups.insert("bench");
                }
                "--all-targets" => {
                    groups.extend(["lib", "bin", "example", "test", "bench"]);
                }
                "--release" | "-r" => profile = "release".into(),
                "--profile" => {
                    if let Some(p) = value() {
                        profile = if p == "dev" || p == "test" {
                            "debug".into()
                        } else {
                            p
                        };
                    }
                }
                f if WITH_VALUE.contains(&f) => {
                    value();
                }
                _ => {}
            }
        }
        let by_name: BTreeMap<&str, &Package> = self
            .meta
            .packages
            .iter()
            .map(|p| (p.name.as_str(), p))
            .collect();
        let mut selected: Vec<&Package> = Vec::new();
        for p in &packages {
            match by_name.get(p.as_str()) {
                Some(pkg) => selected.push(pkg),
                None => report
                    .errors
                    .push(format!("{at}: no package {p:?} in the workspace")),
            }
        }
        if workspace || packages.is_empty() {
            selected = self.meta.packages.iter().collect();
        }
        let mut all_exist = true;
        for (kind, name) in named.iter().filter(|_| !selected.is_empty()) {
            if !selected.iter().any(|p| p.has(kind, Some(name))) {
                all_exist = false;
                report.errors.push(format!(
                    "{at}: no {kind} target {name:?} in {}",
                    selected
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        let filtered = !named.is_empty() || !groups.is_empty();
        if filtered && !workspace && all_exist {
            // Cargo applies the target options to every package of the command: a package
            // with none of the named targets is silently not built.
            for p in packages.iter().filter_map(|p| by_name.get(p.as_str())) {
                let builds_something = named.iter().any(|(k, n)| p.has(k, Some(n)))
                    || groups.iter().any(|k| p.has(k, None));
                if !builds_something {
                    report.errors.push(format!(
                        "{at}: -p {} builds nothing: cargo applies {} to every package of the \
                         command; build it with a command of its own",
                        p.name,
                        named
                            .iter()
                            .map(|(k, n)| format!("--{k} {n}"))
                            .chain(groups.iter().map(|g| format!("--{g}s")))
                            .collect::<Vec<_>>()
                            .join(" ")
                    ));
                }
            }
        }
        // Binaries this leaves in target/<profile>/.
        if ["build", "b", "run", "r"].contains(&sub.as_str()) {
            for p in &selected {
                for bin in p.bins() {
                    let chosen = if filtered {
                        groups.contains("bin") || named.iter().any(|(k, n)| *k == "bin" && n == bin)
                    } else {
                        true
                    };
                    if chosen {
                        built.insert((profile.clone(), bin.to_string()));
                    }
                }
            }
        }
    }

    fn check_binary(
        &self,
        path: &str,
        at: &str,
        built: &BTreeSet<(String, String)>,
        report: &mut Report,
    ) {
        let mut parts = path.split('/').skip(1);
        let (Some(profile), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
            report
                .errors
                .push(format!("{at}: {path} is not target/<profile>/<binary>"));
            return;
        };
        if !self.meta.packages.iter().any(|p| p.has("bin", Some(name))) {
            report
                .errors
                .push(format!("{at}: no binary {name:?} in the workspace"));
            return;
        }
        if !built.contains(&(profile.to_string(), name.to_string())) {
            report.errors.push(format!(
                "{at}: nothing before it in the block builds {path} (a `cargo build{} -p <package> \
                 --bin {name}`)",
                if profile == "release" {
                    " --release"
                } else {
                    ""
                }
            ));
        }
        report
            .binaries
            .entry(name.to_string())
            .or_insert_with(|| at.to_string());
    }
}

fn check_all(meta: &Metadata, blocks: &[Block], run_make: bool) -> Report {
    let checker = Checker { meta, run_make };
    let mut report = Report::default();
    for b in blocks {
        checker.check_block(b, &mut report);
    }
    report
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn every_documented_command_resolves() {
    let meta = metadata();
    let blocks = documented_blocks();
    let report = check_all(&meta, &blocks, true);
    assert!(
        report.errors.is_empty(),
        "documented commands that do not work:\n  {}",
        report.errors.join("\n  ")
    );
    // The finder finds what the docs are known to show (a guard against it finding nothing).
    for target in [
        "test",
        "demo",
        "bench-plan",
        "bench-dataplane",
        "bench-failover",
        "bench-programming",
        "bench-scale",
        "bench-status-write",
    ] {
        assert!(
            report.make_targets.contains(target),
            "the docs no longer mention `make {target}` (found {:?})",
            report.make_targets
        );
    }
    for bin in [
        "bench-dataplane",
        "failover",
        "programming",
        "status-write",
        "bench-scale",
    ] {
        assert!(
            report.binaries.contains_key(bin),
            "no documented command runs {bin} (found {:?})",
            report.binaries.keys()
        );
    }
}

#[test]
#[ignore = "builds every benchmark binary (debug) with cargo, a minute or more on a cold cache"]
fn every_benchmark_binary_answers_help() {
    let meta = metadata();
    let root = repo_root();
    let report = check_all(&meta, &documented_blocks(), true);
    // The benchmark binaries the docs run, by package.
    let mut by_package: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for p in meta.packages.iter().filter(|p| p.is_benchmark(&root)) {
        for bin in p.bins().filter(|b| report.binaries.contains_key(*b)) {
            by_package.entry(&p.name).or_default().push(bin);
        }
    }
    assert!(
        !by_package.is_empty(),
        "no benchmark binary found in the docs"
    );
    for (package, bins) in &by_package {
        let mut build = Command::new(cargo());
        build
            .args(["build", "-q", "-p", package])
            .current_dir(&root);
        for b in bins {
            build.args(["--bin", b]);
        }
        let status = build.status().expect("cargo build runs");
        assert!(status.success(), "cargo build -p {package} failed");
    }
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|d| if d.is_relative() { root.join(d) } else { d })
        .unwrap_or_else(|| meta.target_directory.clone())
        .join("debug");
    for bin in by_package.values().flatten() {
        let out = Command::new(dir.join(bin))
            .arg("--help")
            .output()
            .unwrap_or_else(|e| panic!("running {bin} --help: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.to_lowercase().contains("usage"),
            "{bin} --help (documented at {}): exit {}, stdout:\n{stdout}\nstderr:\n{}",
            report.binaries[*bin],
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The checker itself, on commands with known faults (no make, so no repository state).
mod checker {
    use super::*;

    fn errors(markdown: &str) -> Vec<String> {
        let meta = metadata();
        check_all(&meta, &blocks_of("t.md", markdown), false).errors
    }

    #[test]
    fn the_command_of_issue_16_is_caught() {
        let e = errors(
            "```sh\ncargo build --release -p egressgw --bin egressgw -p egressgw-bench-runtime\n\
             target/release/failover 20        # trials\n```\n",
        );
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(
            e[0].contains("-p egressgw-bench-runtime builds nothing"),
            "{e:#?}"
        );
        assert!(
            e[1].contains("nothing before it in the block builds target/release/failover"),
            "{e:#?}"
        );
    }

    #[test]
    fn a_fixed_command_passes() {
        let e = errors(
            "```sh\ncargo build --release -p egressgw --bin egressgw\n\
             cargo build --release -p egressgw-bench-runtime --bin failover --bin programming\n\
             target/release/failover 20\ntarget/release/programming 1000   # pods\n```\n",
        );
        assert_eq!(e, Vec::<String>::new());
    }

    #[test]
    fn unknown_names_and_the_wrong_profile_are_caught() {
        let e = errors(
            "Run `cargo run -p egressgw-nope --bin x` or `cargo bench -p egressgw --bench nope`.\n\n\
             ```console\n$ cargo build -p egressgw-bench-dataplane\n\
             $ target/release/bench-dataplane --sizes 10\n$ kubectl get egw\n```\n",
        );
        assert_eq!(e.len(), 3, "{e:#?}");
        assert!(e[0].contains("nothing before it"), "{e:#?}");
        assert!(e[1].contains("no package \"egressgw-nope\""), "{e:#?}");
        assert!(
            e[2].contains("no bench target \"nope\" in egressgw"),
            "{e:#?}"
        );
    }

    #[test]
    fn shell_words_split_at_operators_and_drop_redirections() {
        assert_eq!(
            simple_commands(
                r#"cargo run -q -p egressgw --bin egressgw -- crd > crds/x.yaml && make a ARGS="--sizes 1 --repeat 2" 2>&1 | tee y # note"#
            ),
            [
                vec![
                    "cargo", "run", "-q", "-p", "egressgw", "--bin", "egressgw", "--", "crd"
                ],
                vec!["make", "a", "ARGS=--sizes 1 --repeat 2"],
                vec!["tee", "y"],
            ]
        );
        assert_eq!(
            simple_commands("cmd || { echo \"error: x\" >&2; exit 1; }"),
            [vec!["cmd"], vec!["echo", "error: x"], vec!["exit", "1"]]
        );
    }

    #[test]
    fn inline_code_and_console_prompts_are_found() {
        let blocks = blocks_of(
            "t.md",
            "Run `make demo` and\n`cargo bench -p egressgw\n--bench plan`; not `kubectl get egw`.\n\
             ```console\n$ make unit\noutput line\n```\n```yaml\ncargo: no\n```\n",
        );
        let found: Vec<(&str, &str)> = blocks
            .iter()
            .flat_map(|b| b.lines.iter().map(|l| (b.origin.as_str(), l.as_str())))
            .collect();
        assert_eq!(
            found,
            [
                ("t.md:4", "make unit"),
                ("t.md:1", "make demo"),
                ("t.md:2", "cargo bench -p egressgw --bench plan"),
            ]
        );
    }
}
