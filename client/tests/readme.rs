//! The README's subscriber example is a program that builds: its code block is, line for line,
//! `examples/readme.rs` after that file's opening comment (cargo builds examples with the
//! tests, so a README that no longer compiles fails here or there).

#[test]
fn the_readmes_subscriber_example_is_the_example_that_builds() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).expect("README.md");
    let example = std::fs::read_to_string(format!("{root}/client/examples/readme.rs")).expect("the example");
    let section = readme.split("\n## Subscribe\n").nth(1).expect("a Subscribe section");
    let block = section.split("```rust\n").nth(1).and_then(|b| b.split("```\n").next()).expect("a rust block");
    let code: String =
        example.lines().skip_while(|l| l.starts_with("//!") || l.is_empty()).map(|l| format!("{l}\n")).collect();
    assert_eq!(block, code, "README.md's Subscribe example and client/examples/readme.rs differ");
    // What the README says the example needs is what it uses.
    assert!(section.contains("tokio = { version = \"1\", features = [\"macros\", \"rt-multi-thread\"] }"));
}
