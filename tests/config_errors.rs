//! A config file's problems as the operator sees them from the binary: `check-config` and
//! `serve` name every problem at once with file, line and column, quote the line, suggest
//! the near miss; `check-config` passes the shipped examples and needs no Kafka.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `fanout-gateway` with `args` in `dir`, without the environment that would change
/// which file is read or how problems print.
fn gateway(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fanout-gateway"))
        .args(args)
        .current_dir(dir)
        .env_remove("FANOUT_CONFIG")
        .env_remove("FANOUT_LOG_FORMAT")
        .env_remove("FANOUT_BOOTSTRAP_SERVERS")
        .env_remove("FANOUT_GROUP_INSTANCE_ID")
        .env_remove("RUST_LOG")
        .output()
        .expect("the gateway binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write the config");
    path
}

/// Three kinds of problem in one file: a misspelt field, a value of the wrong type, and two
/// that only validation finds (all-zero weights, a selector that does not parse).
const MIXED: &str = r#"[kafka]
bootstrap_servers = "kafka-0:9092"

[[routes]]
name = "orders"
topics = ["orders"]
max_inflight = 500

[[routes]]
name = "audit"
topics = ["orders"]
ack_timeout_ms = "30s"
split_label = "track"
weights = { blue = 0, green = 0 }
selector = "app in (audit"
"#;

#[test]
fn every_problem_of_a_file_is_reported_at_once_with_line_column_and_suggestion() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "mixed.toml", MIXED);
    let out = gateway(dir.path(), &["check-config", "--config", "mixed.toml"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(stdout(&out), "", "problems go to stderr");

    // The unknown field: its key, the near miss, and which [[routes]] table.
    assert!(
        err.contains("error: routes[0].max_inflight: unknown field `max_inflight`\n  --> mixed.toml:7:1\n"),
        "{err}"
    );
    assert!(err.contains(" 7 | max_inflight = 500\n   | ^^^^^^^^^^^^\n"), "the line quoted, the key underlined: {err}");
    assert!(err.contains("= help: did you mean `max_in_flight`?"), "{err}");
    assert!(err.contains("= note: routes[0] is the first [[routes]] table (name = \"orders\")"), "{err}");
    // The wrong type, in plain words, at the value.
    assert!(
        err.contains(
            "error: routes[1].ack_timeout_ms: expected a whole number, 0 or more, found the string \"30s\"\n  --> \
             mixed.toml:12:18\n"
        ),
        "{err}"
    );
    assert!(!err.contains("u64"), "no Rust type names: {err}");
    // Validation problems, placed too.
    assert!(
        err.contains("error: routes[1].weights: at least one cohort needs a weight above 0\n  --> mixed.toml:14:11\n"),
        "{err}"
    );
    assert!(err.contains("= note: routes[1] is the second [[routes]] table (name = \"audit\")"), "{err}");
    assert!(err.contains("error: routes[1].selector: expected ',' or ')'"), "{err}");
    assert!(err.contains("  --> mixed.toml:15:26\n"), "the caret where the list should close: {err}");
    assert!(err.contains("error: 4 problems in mixed.toml"), "{err}");

    // `serve` refuses the file with the same report, before it touches Kafka.
    let serve = gateway(dir.path(), &["serve", "--config", "mixed.toml"]);
    assert_eq!(serve.status.code(), Some(1));
    assert_eq!(stderr(&serve), err, "serve reports config problems as check-config does");
}

#[test]
fn a_toml_syntax_error_has_a_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "broken.toml", "[kafka]\nbootstrap_servers = \"kafka-0:9092\n\n[[routes]]\nname = \"a\"\n");
    let out = gateway(dir.path(), &["check-config", "-c", "broken.toml"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.starts_with("error: TOML syntax: invalid basic string"), "{err}");
    assert!(err.contains("--> broken.toml:2:34\n"), "{err}");
    assert!(err.contains("2 | bootstrap_servers = \"kafka-0:9092\n"), "the line quoted: {err}");
    assert!(!err.contains("<document>"), "{err}");
}

/// Every gateway config under examples/ (all the *.toml there are).
fn example_configs() -> Vec<PathBuf> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read examples") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|e| e == "toml") {
                found.push(path);
            }
        }
    }
    let mut found = Vec::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"), &mut found);
    found.sort();
    found
}

#[test]
fn check_config_passes_every_example_and_fails_each_broken_one() {
    let examples = example_configs();
    assert!(examples.len() >= 5, "examples/fanout.toml and examples/kafka/*.toml: {examples:?}");
    let dir = tempfile::tempdir().expect("tempdir");
    for example in &examples {
        let shown = example.display().to_string();
        let out = gateway(dir.path(), &["check-config", "--config", &shown]);
        assert_eq!(out.status.code(), Some(0), "{shown}: {}", stderr(&out));
        let line = stdout(&out);
        assert!(
            line.starts_with(&format!("{shown}: ok ("))
                && (line.ends_with(" routes)\n") || line.ends_with(" route)\n")),
            "{line}"
        );
    }
    let fanout = examples.iter().find(|p| p.ends_with("examples/fanout.toml")).expect("examples/fanout.toml");
    let out = gateway(dir.path(), &["check-config", "--config", &fanout.display().to_string()]);
    assert!(stdout(&out).ends_with(": ok (2 routes)\n"), "{}", stdout(&out));

    let good = std::fs::read_to_string(fanout).expect("read the example");
    let broken = [
        ("syntax", good.replacen("name = \"orders\"", "name = \"orders", 1)),
        ("unknown field", good.replacen("max_in_flight = 1000", "max_inflight = 1000", 1)),
        ("wrong type", good.replacen("max_in_flight = 1000", "max_in_flight = \"many\"", 1)),
        ("bad enum value", good.replacen("ordering = \"key\"", "ordering = \"keys\"", 1)),
        ("missing required field", good.replacen("topics = [\"orders\"]\n", "", 1)),
        ("validation", good.replacen("weights = { blue = 100, green = 0 }", "weights = { blue = 0, green = 0 }", 1)),
        ("bad selector", good.replacen("selector = \"app=orders\"", "selector = \"app in (orders\"", 1)),
    ];
    for (what, text) in broken {
        assert_ne!(text, good, "{what}: the example changed under the test");
        write(dir.path(), "broken.toml", &text);
        let out = gateway(dir.path(), &["check-config", "--config", "broken.toml"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert_eq!(stdout(&out), "", "{what}");
        assert!(err.contains("--> broken.toml:"), "{what}: placed in the file: {err}");
    }
}

#[test]
fn check_config_reads_the_same_file_as_serve_by_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fanout.toml");
    std::fs::copy(&example, dir.path().join("fanout.toml")).expect("copy");
    let out = gateway(dir.path(), &["check-config"]);
    assert_eq!(stdout(&out), "fanout.toml: ok (2 routes)\n", "{}", stderr(&out));
    write(dir.path(), "other.toml", MIXED);
    let out = Command::new(env!("CARGO_BIN_EXE_fanout-gateway"))
        .arg("check-config")
        .current_dir(dir.path())
        .env("FANOUT_CONFIG", "other.toml")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--> other.toml:7:1"), "{}", stderr(&out));
}

#[test]
fn a_missing_file_is_one_line_naming_the_path_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    for command in ["check-config", "serve"] {
        let out = gateway(dir.path(), &[command, "--config", "nowhere/fanout.toml"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{command}: {err}");
        assert_eq!(err.lines().count(), 1, "{command}: {err}");
        assert_eq!(err.matches("nowhere/fanout.toml").count(), 1, "{command}: {err}");
        assert_eq!(err.matches("No such file or directory").count(), 1, "{command}: the OS error once: {err}");
    }
}

#[test]
fn json_log_format_gives_one_object_per_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "mixed.toml", MIXED);
    for command in ["check-config", "serve"] {
        let out = gateway(dir.path(), &["--log-format", "json", command, "--config", "mixed.toml"]);
        assert_eq!(out.status.code(), Some(1));
        let problems: Vec<serde_json::Value> = stderr(&out)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{command}: not JSON ({e}): {line}")))
            .collect();
        let summary: Vec<(String, u64, u64)> = problems
            .iter()
            .map(|p| {
                assert_eq!(p["file"], "mixed.toml");
                assert!(p["message"].as_str().is_some_and(|m| !m.is_empty()), "{p}");
                (
                    p["field"].as_str().unwrap_or_default().to_string(),
                    p["line"].as_u64().unwrap_or_default(),
                    p["column"].as_u64().unwrap_or_default(),
                )
            })
            .collect();
        let expected = [
            ("routes[0].max_inflight", 7, 1),
            ("routes[1].ack_timeout_ms", 12, 18),
            ("routes[1].weights", 14, 11),
            ("routes[1].selector", 15, 26),
        ]
        .map(|(f, l, c)| (f.to_string(), l, c));
        assert_eq!(summary, expected, "{command}");
        assert_eq!(problems[0]["help"], "did you mean `max_in_flight`?");
    }
}
