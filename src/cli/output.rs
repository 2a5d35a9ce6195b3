//! What commands print: [`Output`] (text for people, one JSON object for
//! scripts), [`ReportedFailure`] (a report that also means exit status 1),
//! the error sentence printed for any other failure, and the rendering
//! helpers more than one command group uses.

use serde_json::{Value, json};

use crate::identity::PeerIdentity;

/// What a command prints: a sentence or table for people, an object for
/// scripts.
pub struct Output {
    pub(super) text: String,
    pub(super) json: Value,
}

impl Output {
    /// Prints it on stdout: the JSON object with `--json`, else the text.
    pub fn print(&self, json: bool) {
        if json {
            println!("{}", self.json);
        } else {
            println!("{}", self.text);
        }
    }
}

/// A command that ran and found problems: its report is printed as usual
/// and the exit status is 1.
pub struct ReportedFailure(
    /// The report.
    pub Output,
);

impl std::fmt::Debug for ReportedFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.text)
    }
}

impl std::fmt::Display for ReportedFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.text)
    }
}

impl std::error::Error for ReportedFailure {}

/// The error and those of its causes that its message does not already
/// state (most of our errors name their cause in their own message).
pub fn error_sentence(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !msg.contains(&cause) {
            msg.push_str(": ");
            msg.push_str(&cause);
        }
    }
    msg
}

/// A verified identity (from a certificate), for `--json`.
pub(super) fn identity_json(id: &PeerIdentity) -> Value {
    json!({
        "node_id": id.node_id.to_string(),
        "participant": id.participant.to_string(),
        "roles": id.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
        "region": id.region.as_ref().map(ToString::to_string),
    })
}
