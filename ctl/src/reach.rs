//! Reaching the replicas: connects to every address at once and sorts them into those that
//! answered and those that did not, with why. A read command shows what the ones that answered
//! said and marks the others; a changing command names them and changes nothing, since a change
//! must reach every replica.

use std::future::Future;

use fanout_client::code_name;
use futures::future::join_all;
use serde::Serialize;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::{CtlError, CALL_TIMEOUT, CONNECT_TIMEOUT, DEFAULT_PORT};
use fanout_proto::admin::admin_client::AdminClient;
use fanout_proto::admin::dead_letters_client::DeadLettersClient;

/// One replica's admin API.
pub(super) struct Replica {
    pub address: String,
    pub client: AdminClient<Channel>,
    pub letters: DeadLettersClient<Channel>,
}

/// Why a replica gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Failure {
    /// No connection (refused, timed out, TLS handshake): nothing was asked.
    Unreachable(String),
    /// The connection held but the call failed.
    Call { code: tonic::Code, message: String },
}

impl Failure {
    pub fn of(status: &tonic::Status) -> Self {
        Failure::Call { code: status.code(), message: status.message().replace('\n', " ") }
    }

    /// How a table marks it: `UNREACHABLE: connection refused`, `UNAVAILABLE: ...`.
    pub fn marker(&self) -> String {
        match self {
            Failure::Unreachable(reason) => format!("UNREACHABLE: {reason}"),
            Failure::Call { code, message } => format!("{}: {message}", code_name(*code)),
        }
    }
}

/// A replica that gave no answer, as tables mark it and `-o json|yaml` lists it
/// (`{address, error}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Missing {
    pub address: String,
    pub failure: Failure,
}

impl Serialize for Missing {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Shown<'a> {
            address: &'a str,
            error: String,
        }
        Shown { address: &self.address, error: self.failure.marker() }.serialize(serializer)
    }
}

/// The replicas a command line names, once asked to connect.
pub(super) struct Reached {
    /// Those that accepted a connection, in the order the command line (or DNS) gave them.
    pub replicas: Vec<Replica>,
    /// Those that did not, with why.
    pub missing: Vec<Missing>,
    /// The option that named them (`--gateway` or `--gateways-dns`), for errors to point at.
    pub flag: &'static str,
}

impl Reached {
    /// Every replica, for a change: a change made on some replicas only would leave them
    /// disagreeing, so one that cannot be reached fails the command before anything changes.
    pub fn all_for_change(self, change: &str) -> Result<Vec<Replica>, CtlError> {
        if self.missing.is_empty() {
            return Ok(self.replicas);
        }
        let tail = format!(
            "{change} not made: a change must reach every replica (bring it back, or leave it out of {})",
            self.flag
        );
        Err(CtlError(with_tail(failure_lines(&self.missing, self.flag), &tail)))
    }

    /// The first replica that answered, for a question any replica can answer.
    pub fn any(mut self) -> Result<Replica, CtlError> {
        if self.replicas.is_empty() {
            return Err(nobody_answered(&self.missing, self.flag));
        }
        Ok(self.replicas.swap_remove(0))
    }
}

/// Connects to every address at once, so one dead replica costs one connect timeout however
/// many there are. Only a command line mistake (an address that is not one, bad TLS files) is an
/// error here; a replica that cannot be reached is `missing`.
pub(super) async fn reach(
    addresses: Vec<String>,
    flag: &'static str,
    tls: Option<&ClientTlsConfig>,
) -> Result<Reached, CtlError> {
    let connecting = addresses.iter().map(|address| connect(address, flag, tls));
    let mut reached = Reached { replicas: Vec::new(), missing: Vec::new(), flag };
    for outcome in join_all(connecting).await {
        match outcome? {
            Ok(replica) => reached.replicas.push(replica),
            Err(missing) => reached.missing.push(missing),
        }
    }
    Ok(reached)
}

/// host:port, defaulting the port.
pub(super) fn with_port(address: &str) -> String {
    let bare = address.trim_start_matches("http://");
    let has_port = bare.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok());
    if has_port {
        bare.to_string()
    } else {
        format!("{bare}:{DEFAULT_PORT}")
    }
}

async fn connect(
    address: &str,
    flag: &'static str,
    tls: Option<&ClientTlsConfig>,
) -> Result<Result<Replica, Missing>, CtlError> {
    let address = with_port(address);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
        .map_err(|e| CtlError(format!("{flag} `{address}` is not a host:port address: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT);
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls.clone())
            .map_err(|e| CtlError(format!("TLS settings for {address}: {}", root_cause(&e))))?;
    }
    Ok(match endpoint.connect().await {
        Ok(channel) => {
            Ok(Replica { address, client: AdminClient::new(channel.clone()), letters: DeadLettersClient::new(channel) })
        }
        Err(e) => Err(Missing { address, failure: Failure::Unreachable(short_reason(&root_cause(&e))) }),
    })
}

pub(super) fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut e = error;
    while let Some(next) = e.source() {
        e = next;
    }
    e.to_string()
}

/// An OS error as a table cell: `Connection refused (os error 111)` → `connection refused`.
fn short_reason(text: &str) -> String {
    let text = text.trim();
    let text = match text.rsplit_once(" (os error ") {
        Some((reason, code)) if code.ends_with(')') => reason,
        _ => text,
    };
    let mut chars = text.chars();
    match (chars.next(), chars.next()) {
        // `Connection refused` reads as a sentence's start; `TLS ...` or `DNS` stay as they are.
        (Some(first), Some(second)) if first.is_uppercase() && !second.is_uppercase() => {
            first.to_lowercase().chain(text.chars().skip(1)).collect()
        }
        _ => text.to_string(),
    }
}

/// Asks every replica at once (`call` gets a client of each); each one's answer or failure, in
/// the replicas' order.
pub(super) async fn ask_all<T, Fut>(
    replicas: &[Replica],
    call: impl Fn(AdminClient<Channel>) -> Fut,
) -> Vec<(String, Result<T, Failure>)>
where
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let answers = join_all(replicas.iter().map(|r| call(r.client.clone()))).await;
    replicas
        .iter()
        .zip(answers)
        .map(|(r, answer)| (r.address.clone(), answer.map(tonic::Response::into_inner).map_err(|s| Failure::of(&s))))
        .collect()
}

/// A request carrying the admin token, if there is one.
pub(super) fn authorized<T>(message: T, token: Option<&AsciiMetadataValue>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", token.clone());
    }
    request
}

/// The replicas that failed the same way, together: one line for five replicas that refuse
/// the same token, each with the addresses it covers, in the order first seen.
pub(super) fn grouped(missing: &[Missing]) -> Vec<(Vec<&str>, &Failure)> {
    let mut groups: Vec<(Vec<&str>, &Failure)> = Vec::new();
    for m in missing {
        match groups.iter_mut().find(|(_, failure)| **failure == m.failure) {
            Some((addresses, _)) => addresses.push(&m.address),
            None => groups.push((vec![&m.address], &m.failure)),
        }
    }
    groups
}

/// One line per way replicas failed, naming them and saying what to check.
pub(super) fn failure_lines(missing: &[Missing], flag: &str) -> Vec<String> {
    grouped(missing)
        .into_iter()
        .map(|(addresses, failure)| {
            let addresses = addresses.join(", ");
            match failure {
                Failure::Unreachable(reason) => format!(
                    "cannot reach the admin API at {addresses}: {reason}; check {flag} (the replica's server.admin_listen, port {DEFAULT_PORT} by default)"
                ),
                Failure::Call { code, message } => call_line(&addresses, *code, message),
            }
        })
        .collect()
}

/// The error when no replica answered: there is nothing to show.
pub(super) fn nobody_answered(missing: &[Missing], flag: &str) -> CtlError {
    let lines = failure_lines(missing, flag);
    if lines.is_empty() {
        return CtlError(format!("no replica answered; check {flag}"));
    }
    CtlError(lines.join("\n"))
}

/// The error a read command ends with when it showed the replicas that answered but not all
/// did: one line naming those left out, so a script sees the exit status and a person the gap.
pub(super) fn partly_answered(missing: &[Missing], asked: usize) -> CtlError {
    let named: Vec<String> = missing.iter().map(|m| format!("{} ({})", m.address, m.failure.marker())).collect();
    CtlError(format!(
        "{} of {asked} replica(s) did not answer, what is shown leaves them out: {}",
        missing.len(),
        named.join(", ")
    ))
}

/// `lines`, then `tail`: on the same line when there is one (an error stays one line when it
/// can), else on a line of its own.
pub(super) fn with_tail(lines: Vec<String>, tail: &str) -> String {
    match lines.as_slice() {
        [one] => format!("{one}; {tail}"),
        _ => lines.into_iter().chain(std::iter::once(tail.to_string())).collect::<Vec<_>>().join("\n"),
    }
}

/// A failed call as one line: who, the code, the message and, for the failures an operator
/// can fix on their side, what to try.
pub(super) fn call_line(address: &str, code: tonic::Code, message: &str) -> String {
    // A plaintext client on a TLS port (or the reverse) sees the connection fail mid-call.
    let protocol = message.contains("h2 protocol error") || message.contains("transport error");
    let hint = match code {
        _ if protocol => {
            " (the connection broke: if the admin port uses TLS (server.admin_tls), pass --tls-ca; if it does not, drop the --tls options)"
        }
        tonic::Code::Unavailable => " (is the replica stopping, or is this not its admin port?)",
        _ => "",
    };
    format!("{address}: {}: {}{hint}", code_name(code), message.replace('\n', " "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(address: &str) -> Missing {
        Missing { address: address.into(), failure: Failure::Unreachable("connection refused".into()) }
    }

    #[test]
    fn os_errors_read_as_a_short_reason() {
        assert_eq!(short_reason("Connection refused (os error 111)"), "connection refused");
        assert_eq!(short_reason("timed out"), "timed out");
        assert_eq!(short_reason("TLS handshake failed"), "TLS handshake failed");
    }

    #[test]
    fn a_missing_replica_is_marked_unreachable_or_with_its_code() {
        assert_eq!(refused("a:9090").failure.marker(), "UNREACHABLE: connection refused");
        let failed = Failure::Call { code: tonic::Code::Unavailable, message: "stopping".into() };
        assert_eq!(failed.marker(), "UNAVAILABLE: stopping");
        let json = serde_json::to_value(refused("a:9090")).expect("serializes");
        assert_eq!(json, serde_json::json!({"address": "a:9090", "error": "UNREACHABLE: connection refused"}));
    }

    #[test]
    fn replicas_that_failed_alike_share_one_line() {
        let denied = Missing {
            address: "c:9090".into(),
            failure: Failure::Call { code: tonic::Code::PermissionDenied, message: "wrong token".into() },
        };
        let lines = failure_lines(&[refused("a:9090"), denied, refused("b:9090")], "--gateway");
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with("cannot reach the admin API at a:9090, b:9090: connection refused; check --gateway")
        );
        assert_eq!(lines[1], "c:9090: PERMISSION_DENIED: wrong token");
    }

    #[test]
    fn a_partial_answer_names_who_is_left_out() {
        let e = partly_answered(&[refused("b:9090")], 2);
        assert_eq!(
            e.0,
            "1 of 2 replica(s) did not answer, what is shown leaves them out: b:9090 (UNREACHABLE: connection refused)"
        );
    }

    #[test]
    fn a_change_fails_before_anything_when_a_replica_is_missing() {
        let reached = Reached { replicas: Vec::new(), missing: vec![refused("b:9090")], flag: "--gateway" };
        let e = reached.all_for_change("drain").err().expect("refused");
        assert_eq!(e.0.lines().count(), 1, "{e}");
        assert!(e.0.contains("b:9090: connection refused") && e.0.contains("drain not made"), "{e}");
    }

    #[test]
    fn one_line_takes_its_tail_inline_several_get_it_below() {
        assert_eq!(with_tail(vec!["a".into()], "t"), "a; t");
        assert_eq!(with_tail(vec!["a".into(), "b".into()], "t"), "a\nb\nt");
    }

    #[test]
    fn addresses_get_the_admin_port_when_they_have_none() {
        assert_eq!(with_port("gw-0.gw"), "gw-0.gw:9090");
        assert_eq!(with_port("http://10.0.0.1:9191"), "10.0.0.1:9191");
        assert_eq!(code_name(tonic::Code::PermissionDenied), "PERMISSION_DENIED");
    }
}
