//! The Apache Kafka jars (`target/kafka-jars`, fetched by `.ci/setup` from
//! `tests/kafka/pom.xml`): where they are, whether they are there, and small Java programs
//! compiled against them (the benchmark's share-group reader).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::FixtureError;

/// The workspace's root: this crate is one of its members.
fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new("."))
}

/// Where `.ci/setup` copies the broker's jars: FANOUT_KAFKA_JARS, or `target/kafka-jars` of
/// the workspace.
pub fn jars_dir() -> PathBuf {
    std::env::var_os("FANOUT_KAFKA_JARS").map(PathBuf::from).unwrap_or_else(|| workspace().join("target/kafka-jars"))
}

/// Whether the broker's jars are there (the `kafka_2.13-*.jar` of the broker itself). What to
/// do without them (skip, fail, explain) is the caller's rule.
pub fn jars_present() -> bool {
    std::fs::read_dir(jars_dir())
        .map(|entries| entries.flatten().any(|e| e.file_name().to_string_lossy().starts_with("kafka_2.13-")))
        .unwrap_or(false)
}

/// The jars as a `java -cp` class path.
pub fn classpath() -> String {
    format!("{}/*", jars_dir().display())
}

/// Compiles `source` (the text of `<class_name>.java`) with `javac` against the jars into a
/// directory of the workspace's `target/` named after the source's hash, and returns that
/// directory (the class path entry to run it with). Compiled once per source text: a second
/// call finds the classes. Compiled beside, then renamed into place, so two processes
/// compiling at once do not see each other's half-written classes.
pub fn compile_java(class_name: &str, source: &str) -> Result<PathBuf, FixtureError> {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    source.hash(&mut hasher);
    jars_dir().hash(&mut hasher);
    let root = workspace().join("target/fanout-java");
    let out = root.join(format!("{class_name}-{:016x}", hasher.finish()));
    if out.join(format!("{class_name}.class")).exists() {
        return Ok(out);
    }
    std::fs::create_dir_all(&root).map_err(FixtureError::io(format!("creating {}", root.display())))?;
    let scratch = tempfile::Builder::new()
        .prefix(&format!("{class_name}-"))
        .tempdir_in(&root)
        .map_err(FixtureError::io("a scratch directory for javac"))?;
    let file = scratch.path().join(format!("{class_name}.java"));
    std::fs::write(&file, source).map_err(FixtureError::io(format!("writing {}", file.display())))?;
    let classes = scratch.path().join("classes");
    let output = Command::new("javac")
        .args(["-nowarn", "-cp", &classpath(), "-d"])
        .arg(&classes)
        .arg(&file)
        .output()
        .map_err(|source| FixtureError::NoJava { program: "javac", source })?;
    if !output.status.success() {
        return Err(FixtureError::Compile {
            source_file: file.display().to_string(),
            output: format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)),
        });
    }
    // Another process may have put the same classes in place meanwhile: theirs are as good.
    if std::fs::rename(&classes, &out).is_err() && !out.join(format!("{class_name}.class")).exists() {
        return Err(FixtureError::Io {
            what: format!("moving the classes to {}", out.display()),
            source: std::io::Error::other("rename failed"),
        });
    }
    Ok(out)
}

/// The broker's version, from its jar's name (`kafka_2.13-4.4.0.jar` → `4.4.0`).
pub fn kafka_version() -> Option<String> {
    std::fs::read_dir(jars_dir()).ok()?.flatten().find_map(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        Some(name.strip_prefix("kafka_2.13-")?.strip_suffix(".jar")?.to_string())
    })
}
