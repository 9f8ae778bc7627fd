//! Kafka secrets (SASL passwords, OAuth client secrets, key passwords) never reach a log line,
//! an error or a status reply.
//!
//! Two defences, because the text that could carry a secret comes from places the gateway
//! does not write (librdkafka's own log lines and error strings):
//! - the config's `Debug` prints sensitive properties as `[redacted]`;
//! - every secret value the config holds is registered here when the config is loaded, and the
//!   log writer ([`Writer`]) and the error paths replace any occurrence of one with
//!   `[redacted]`, whatever the text around it.

use std::borrow::Cow;
use std::io;
use std::sync::LazyLock;

use parking_lot::RwLock;

/// What a secret is replaced with.
pub const REDACTED: &str = "[redacted]";

/// librdkafka properties whose values are secrets (besides any named `*password*` or
/// `*secret*`).
const SENSITIVE: &[&str] =
    &["sasl.oauthbearer.config", "ssl.key.pem", "ssl_key", "sasl.oauthbearer.assertion.private.key.pem"];

/// Values shorter than this are not searched for in text: a two-letter "password" would blank
/// out every occurrence of those letters. They are still never printed by the config's Debug.
const MIN_SCRUBBED_LEN: usize = 4;

static SECRETS: LazyLock<RwLock<Vec<String>>> = LazyLock::new(|| RwLock::new(Vec::new()));

/// Whether a librdkafka property holds a secret.
pub fn is_sensitive(property: &str) -> bool {
    let p = property.to_ascii_lowercase();
    p.contains("password") || p.contains("passphrase") || p.contains("secret") || SENSITIVE.contains(&p.as_str())
}

/// Remembers a secret value, so that [`redact`] removes it from any text from now on: as it
/// is, and as JSON logs and `{:?}` print it (quotes, backslashes and newlines escaped).
pub fn register(value: &str) {
    let value = value.trim();
    if value.len() < MIN_SCRUBBED_LEN {
        return;
    }
    let strip = |quoted: String| quoted.trim_matches('"').to_string();
    let forms =
        [value.to_string(), strip(format!("{value:?}")), serde_json::to_string(value).map(strip).unwrap_or_default()];
    let mut secrets = SECRETS.write();
    for form in forms {
        if form.len() >= MIN_SCRUBBED_LEN && !secrets.contains(&form) {
            secrets.push(form);
        }
    }
    // Longest first: a secret that contains another is replaced whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// `text` with every registered secret replaced by [`REDACTED`].
pub fn redact(text: &str) -> Cow<'_, str> {
    let secrets = SECRETS.read();
    if !secrets.iter().any(|s| text.contains(s.as_str())) {
        return Cow::Borrowed(text);
    }
    let mut out = text.to_string();
    for s in secrets.iter() {
        out = out.replace(s.as_str(), REDACTED);
    }
    Cow::Owned(out)
}

/// A `tracing_subscriber` writer that redacts what it writes: the formatter hands it whole
/// events, so a secret is never split across two writes.
pub struct Writer<M>(pub M);

impl<'a, M: tracing_subscriber::fmt::MakeWriter<'a>> tracing_subscriber::fmt::MakeWriter<'a> for Writer<M> {
    type Writer = Redacting<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        Redacting(self.0.make_writer())
    }
}

/// One event's writer (see [`Writer`]).
pub struct Redacting<W>(W);

impl<W: io::Write> io::Write for Redacting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(text) => {
                if let Cow::Owned(clean) = redact(text) {
                    self.0.write_all(clean.as_bytes())?;
                    return Ok(buf.len());
                }
                self.0.write(buf)
            }
            Err(_) => self.0.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_secrets_leave_no_trace() {
        assert!(is_sensitive("sasl.password") && is_sensitive("ssl.key.password"));
        assert!(is_sensitive("sasl.oauthbearer.client.secret") && is_sensitive("ssl.key.pem"));
        assert!(is_sensitive("sasl.oauthbearer.assertion.private.key.passphrase"));
        assert!(!is_sensitive("sasl.username") && !is_sensitive("security.protocol"));

        register("hunter2-unit-test");
        register("hunter2-unit-test-longer");
        register("ab");
        let line = "auth failed for user x with hunter2-unit-test-longer (hunter2-unit-test) ab";
        assert_eq!(redact(line), "auth failed for user x with [redacted] ([redacted]) ab");
        assert!(matches!(redact("nothing here"), Cow::Borrowed(_)));

        // As a JSON log line or a Debug print escapes it.
        register("pa\"ss\\word-unit-test");
        let json = serde_json::json!({ "message": "pa\"ss\\word-unit-test" }).to_string();
        assert!(!redact(&json).contains("word-unit-test"), "{}", redact(&json));
        assert!(!redact(&format!("{:?}", "pa\"ss\\word-unit-test")).contains("word-unit-test"));

        let mut out = Vec::new();
        let mut w = Redacting(&mut out);
        let n = io::Write::write(&mut w, b"pw=hunter2-unit-test\n").expect("writes");
        assert_eq!(n, "pw=hunter2-unit-test\n".len(), "the caller sees its whole buffer written");
        assert_eq!(String::from_utf8(out).expect("utf-8"), "pw=[redacted]\n");
    }
}
