//! Runs the `fanoutctl` steps of a page of `docs/runbooks/` against a running gateway, so the
//! pages cannot rot.
//!
//! A page's ```` ```console ```` blocks hold its fanoutctl steps: a line `$ fanoutctl ...` is a
//! command, the lines after it (up to the next `$` line or the block's end) are what the
//! operator should see. Other commands (kubectl, shell) go in ```` ```sh ```` blocks; the test
//! does their part itself between steps. Matching, as an operator reads output:
//! - the shown lines must appear in the output in that order; lines in between may differ
//!   (a page shows the rows that matter);
//! - runs of spaces count as one (column widths follow the data);
//! - `[..]` stands for any text within a line (a count, an age, an id);
//! - a shown line starting with `fanoutctl: ` is an error: the command must fail with it.
//!
//! `$NAME` in a command is a shell variable the page sets in a `sh` block; the test gives its
//! value with [`Runbook::var`]. A command that only reads (status, routes, subscribers,
//! partitions, replays, dlq list) is run again until its output matches, for up to a minute,
//! as an operator re-runs it while things settle; one that changes something runs once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

/// One `$ fanoutctl ...` line of a page and what should follow it.
#[derive(Debug, Clone)]
pub struct Step {
    /// 1-based line of the command in the page.
    pub line: usize,
    pub command: String,
    pub expected: Vec<String>,
}

pub struct Runbook {
    path: PathBuf,
    steps: Vec<Step>,
    next: usize,
    vars: HashMap<String, String>,
    env: Vec<(String, String)>,
}

/// The steps of a page's console blocks.
pub fn parse(text: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut in_console = false;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if !in_console {
            in_console = trimmed == "```console";
            continue;
        }
        if trimmed.starts_with("```") {
            in_console = false;
        } else if let Some(command) = trimmed.strip_prefix("$ ") {
            steps.push(Step { line: i + 1, command: command.trim().to_string(), expected: Vec::new() });
        } else if let Some(step) = steps.last_mut() {
            if !line.trim().is_empty() {
                step.expected.push(line.to_string());
            }
        }
    }
    steps
}

/// `line` with every run of whitespace made one space, trimmed.
fn squeeze(line: &str) -> String {
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether `line` matches `pattern`, where `[..]` stands for any text.
pub fn line_matches(pattern: &str, line: &str) -> bool {
    let (pattern, line) = (squeeze(pattern), squeeze(line));
    let pieces: Vec<&str> = pattern.split("[..]").collect();
    if pieces.len() == 1 {
        return pattern == line;
    }
    let (first, last) = (pieces[0], pieces[pieces.len() - 1]);
    if !line.starts_with(first) || !line[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &line[first.len()..line.len() - last.len()];
    for piece in &pieces[1..pieces.len() - 1] {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    true
}

/// Whether every expected line appears in `output`, in order.
pub fn output_matches(expected: &[String], output: &str) -> bool {
    let mut lines = output.lines();
    expected.iter().all(|want| lines.by_ref().any(|got| line_matches(want, got)))
}

/// Splits a command line into words as a shell would (quotes, no globbing).
pub fn words(command: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in command.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
                any = false;
            }
            (None, c) => word.push(c),
        }
    }
    if any || !word.is_empty() {
        out.push(word);
    }
    out
}

/// Whether a fanoutctl command only reads (and may be run again).
pub fn reads_only(args: &[String]) -> bool {
    let args: Vec<&str> = args.iter().map(String::as_str).filter(|a| !a.starts_with('-')).collect();
    matches!(
        args.as_slice(),
        ["status" | "routes" | "subscribers" | "partitions" | "replays", ..]
            | ["dlq", "list", ..]
            | ["rollout", "status", ..]
    )
}

impl Runbook {
    /// `docs/runbooks/<page>`.
    pub fn open(page: &str) -> Self {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/runbooks").join(page);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let steps = parse(&text);
        assert!(!steps.is_empty(), "{} has no ```console steps", path.display());
        Self { path, steps, next: 0, vars: HashMap::new(), env: Vec::new() }
    }

    /// The value of `$name` in the page's commands.
    pub fn var(mut self, name: &str, value: &str) -> Self {
        self.vars.insert(name.to_string(), value.to_string());
        self
    }

    /// An environment variable for fanoutctl (FANOUT_GATEWAY, FANOUT_ADMIN_TOKEN), as the
    /// operator's shell has it.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// The command of the next step, for a test that wants to check where it is.
    pub fn peek(&self) -> &str {
        self.steps.get(self.next).map_or("(no steps left)", |s| s.command.as_str())
    }

    fn expand(&self, word: &str, at: &Step) -> String {
        let mut out = word.to_string();
        for (name, value) in &self.vars {
            out = out.replace(&format!("${{{name}}}"), value).replace(&format!("${name}"), value);
        }
        assert!(
            !out.contains('$'),
            "{}:{}: `{}` uses a variable the test did not set",
            self.path.display(),
            at.line,
            at.command
        );
        out
    }

    /// Runs the next step (its command must start with `fanoutctl`, and contain `fragment`,
    /// so a test and its page stay in step); returns what fanoutctl printed.
    pub async fn step(&mut self, fragment: &str) -> String {
        let step = self.steps.get(self.next).cloned().unwrap_or_else(|| {
            panic!("{}: no step left, the test expected one with `{fragment}`", self.path.display())
        });
        self.next += 1;
        let at = format!("{}:{}", self.path.display(), step.line);
        assert!(
            step.command.contains(fragment),
            "{at}: the page's next step is `{}`, the test expected `{fragment}`",
            step.command
        );
        let words: Vec<String> = words(&step.command).iter().map(|w| self.expand(w, &step)).collect();
        assert_eq!(
            words.first().map(String::as_str),
            Some("fanoutctl"),
            "{at}: console blocks hold fanoutctl steps; put other commands in ```sh blocks"
        );
        let args = &words[1..];
        let should_fail = step.expected.iter().any(|l| l.trim_start().starts_with("fanoutctl: "));
        let retry = reads_only(args) && !should_fail;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let out = super::fanoutctl_command()
                .args(args)
                .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .output()
                .await
                .expect("fanoutctl runs");
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            let exit_ok = out.status.success() != should_fail;
            if exit_ok && output_matches(&step.expected, &text) {
                return text;
            }
            if !retry || tokio::time::Instant::now() >= deadline {
                panic!(
                    "{at}: `{}` (exit {:?}) did not show what the page says.\n--- page ---\n{}\n--- fanoutctl ---\n{text}",
                    step.command,
                    out.status.code(),
                    step.expected.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Every step of the page was run.
    pub fn finish(self) {
        let left: Vec<&str> = self.steps[self.next..].iter().map(|s| s.command.as_str()).collect();
        assert!(left.is_empty(), "{}: steps the test did not run: {left:?}", self.path.display());
    }
}
