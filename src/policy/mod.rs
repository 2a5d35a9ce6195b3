//! Policies attached to datasets: the model, the TOML format publishers
//! write, and the canonical JSON form signed into manifests.
//!
//! - [`eval`]: the pure decision function (policy, request, identity, now).
//! - [`odrl`]: import from and export to the ODRL 2.2 subset the model covers.
//!
//! The model is ODRL-inspired and deliberately loop-free: a classification,
//! permissions (actions plus constraints), prohibitions and obligations.
//! Within one permission every constraint given must hold (lists mean "any
//! of"); a constraint left out does not restrict. Validation is fail-closed:
//! anything this node could not fully enforce is refused with its line.

pub mod eval;
pub mod odrl;

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::identity::{NodeId, ParticipantId, Region, Role};

/// Largest policy text accepted.
pub const MAX_POLICY_BYTES: usize = 64 << 10;
/// Most rules of each kind.
pub const MAX_RULES: usize = 32;
/// Most values in one list.
pub const MAX_LIST: usize = 256;
/// Grant lifetime when neither the policy nor the request bounds it.
pub const DEFAULT_GRANT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Longest grant lifetime a policy may set (10 years).
pub const MAX_GRANT_TTL: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

/// Why a policy was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    /// Not valid policy TOML, or an unknown key, operand or value.
    #[error("policy: {0}")]
    Syntax(String),
    /// Well formed, but not a policy this node can enforce.
    #[error("policy, line {line}: {message}")]
    Invalid {
        /// 1-based line of the offending table.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Over a size or nesting limit.
    #[error("policy: {0}")]
    TooLarge(String),
    /// The canonical form does not decode.
    #[error("policy (canonical form): {0}")]
    Canonical(String),
    /// An ODRL document outside the supported subset.
    #[error("ODRL: {0}")]
    Odrl(String),
}

/// Data classification (GB/T 43697-2024 levels, plus public).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Classification {
    /// Open data.
    Public,
    /// General data (一般数据).
    General,
    /// Important data (重要数据).
    Important,
    /// Core data (核心数据): never granted to another node.
    Core,
}

impl Classification {
    /// The name as written in policies.
    pub fn as_str(self) -> &'static str {
        match self {
            Classification::Public => "public",
            Classification::General => "general",
            Classification::Important => "important",
            Classification::Core => "core",
        }
    }
}

impl fmt::Display for Classification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Classification {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, PolicyError> {
        [Self::Public, Self::General, Self::Important, Self::Core]
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| {
                PolicyError::Syntax(format!(
                    "unknown classification `{s}`: expected public, general, important or core"
                ))
            })
    }
}

/// What a grant may allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Fetch and use the data.
    Read,
    /// Publish datasets derived from it.
    Derive,
    /// Pass it on to others.
    Redistribute,
    /// Combine it with other data into aggregates.
    Aggregate,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 4] = [
        Action::Read,
        Action::Derive,
        Action::Redistribute,
        Action::Aggregate,
    ];

    /// The name as written in policies.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Derive => "derive",
            Action::Redistribute => "redistribute",
            Action::Aggregate => "aggregate",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, PolicyError> {
        Self::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                PolicyError::Syntax(format!(
                    "unknown action `{s}`: expected read, derive, redistribute or aggregate"
                ))
            })
    }
}

/// A duty a grant carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Duty {
    /// Delete the data (after the stated time).
    Delete,
    /// Attribute the publisher.
    Attribute,
    /// Report use to the publisher.
    Report,
}

impl Duty {
    /// The name as written in policies.
    pub fn as_str(self) -> &'static str {
        match self {
            Duty::Delete => "delete",
            Duty::Attribute => "attribute",
            Duty::Report => "report",
        }
    }
}

/// One permission: the actions it allows and the constraints under which.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permission {
    /// Actions allowed (at least one).
    pub actions: BTreeSet<Action>,
    /// Node ids allowed; empty: any.
    pub nodes: BTreeSet<NodeId>,
    /// Participants allowed; empty: any.
    pub participants: BTreeSet<ParticipantId>,
    /// Roles of which the requester must hold one; empty: any.
    pub roles: BTreeSet<Role>,
    /// Purposes allowed; empty: any.
    pub purpose: BTreeSet<String>,
    /// Regions (attested in the certificate) allowed; empty: any.
    pub regions: BTreeSet<Region>,
    /// No grant before this time.
    #[serde(with = "time::serde::rfc3339::option")]
    pub not_before: Option<OffsetDateTime>,
    /// No grant valid after this time.
    #[serde(with = "time::serde::rfc3339::option")]
    pub not_after: Option<OffsetDateTime>,
    /// Longest validity of one grant, seconds.
    pub grant_ttl_secs: Option<u64>,
    /// Fetches one grant allows.
    pub max_fetches: Option<u32>,
}

/// Actions no grant ever allows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prohibition {
    /// The prohibited actions.
    pub actions: BTreeSet<Action>,
}

/// A duty stated in every grant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Obligation {
    /// What must be done.
    pub action: Duty,
    /// When (after the grant starts), seconds; required for `delete`.
    pub after_secs: Option<u64>,
}

/// A dataset's policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// How sensitive the data is.
    pub classification: Classification,
    /// What may be granted, to whom, under which constraints.
    pub permissions: Vec<Permission>,
    /// What is never granted.
    pub prohibitions: Vec<Prohibition>,
    /// Duties every grant carries.
    pub obligations: Vec<Obligation>,
}

// Narrow identity types travel as their text form.
macro_rules! serde_via_str {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
serde_via_str!(NodeId, ParticipantId, Role, Region);

/// A declared purpose: 1 to 64 characters of `a-z`, `0-9`, `-`, `_`, `.`
/// (what policies list, and what a request must name exactly).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Purpose(String);

/// A purpose that is not one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("purpose `{0}` must be 1 to 64 characters of a-z, 0-9, '-', '_', '.'")]
pub struct BadPurpose(String);

impl std::str::FromStr for Purpose {
    type Err = BadPurpose;

    fn from_str(s: &str) -> Result<Self, BadPurpose> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
            });
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(BadPurpose(s.chars().take(64).collect()))
        }
    }
}

impl Purpose {
    /// The purpose as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Policy {
    /// Checks the rules a policy must meet to be enforceable; `line(i, kind)`
    /// gives the line of rule `i` of `kind` for messages (0 if unknown).
    fn validate(&self, line: impl Fn(&str, usize) -> usize) -> Result<(), PolicyError> {
        let invalid = |kind: &str, i: usize, message: String| PolicyError::Invalid {
            line: line(kind, i),
            message,
        };
        for (kind, n) in [
            ("permission", self.permissions.len()),
            ("prohibition", self.prohibitions.len()),
            ("obligation", self.obligations.len()),
        ] {
            if n > MAX_RULES {
                return Err(PolicyError::TooLarge(format!(
                    "{n} [[{kind}]] tables; at most {MAX_RULES}"
                )));
            }
        }
        if self.classification == Classification::Core && !self.permissions.is_empty() {
            return Err(invalid(
                "permission",
                0,
                "a `core` dataset is never granted to another node; remove its [[permission]] tables".into(),
            ));
        }
        for (i, p) in self.permissions.iter().enumerate() {
            if p.actions.is_empty() {
                return Err(invalid(
                    "permission",
                    i,
                    "`actions` must name at least one action".into(),
                ));
            }
            let lists = [
                p.nodes.len(),
                p.participants.len(),
                p.roles.len(),
                p.purpose.len(),
                p.regions.len(),
            ];
            if lists.iter().any(|n| *n > MAX_LIST) {
                return Err(PolicyError::TooLarge(format!(
                    "a list in [[permission]] {} has more than {MAX_LIST} values",
                    i + 1
                )));
            }
            for purpose in &p.purpose {
                purpose
                    .parse::<Purpose>()
                    .map_err(|e| invalid("permission", i, e.to_string()))?;
            }
            if let (Some(a), Some(b)) = (p.not_before, p.not_after)
                && a >= b
            {
                return Err(invalid(
                    "permission",
                    i,
                    "`not_before` must be earlier than `not_after`".into(),
                ));
            }
            if p.max_fetches == Some(0) {
                return Err(invalid(
                    "permission",
                    i,
                    "`max_fetches` must be at least 1".into(),
                ));
            }
            if p.grant_ttl_secs == Some(0) {
                return Err(invalid(
                    "permission",
                    i,
                    "`grant_ttl` must be longer than zero".into(),
                ));
            }
            if p.grant_ttl_secs
                .is_some_and(|s| s > MAX_GRANT_TTL.as_secs())
            {
                return Err(invalid(
                    "permission",
                    i,
                    "`grant_ttl` may be at most 10 years".into(),
                ));
            }
        }
        for (i, p) in self.prohibitions.iter().enumerate() {
            if p.actions.is_empty() {
                return Err(invalid(
                    "prohibition",
                    i,
                    "`actions` must name at least one action".into(),
                ));
            }
        }
        for (i, o) in self.obligations.iter().enumerate() {
            if o.action == Duty::Delete && o.after_secs.is_none() {
                return Err(invalid(
                    "obligation",
                    i,
                    "a `delete` obligation needs `after` (e.g. \"90d\")".into(),
                ));
            }
        }
        Ok(())
    }

    /// The canonical JSON form signed into manifests (field order fixed,
    /// sets sorted, so equal policies have equal bytes).
    pub fn canonical_json(&self) -> Vec<u8> {
        // Serializing this plain data structure cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads the canonical form, validating it.
    pub fn from_canonical_json(bytes: &[u8]) -> Result<Self, PolicyError> {
        if bytes.len() > MAX_POLICY_BYTES {
            return Err(PolicyError::TooLarge(format!(
                "{} bytes; at most {MAX_POLICY_BYTES}",
                bytes.len()
            )));
        }
        let policy: Policy =
            serde_json::from_slice(bytes).map_err(|e| PolicyError::Canonical(e.to_string()))?;
        policy.validate(|_, _| 0)?;
        Ok(policy)
    }

    /// SHA-256 of the canonical form: the policy hash grants carry.
    pub fn hash(&self) -> [u8; 32] {
        let d = ring::digest::digest(&ring::digest::SHA256, &self.canonical_json());
        let mut h = [0u8; 32];
        h.copy_from_slice(d.as_ref());
        h
    }

    /// The actions some grant could allow (permitted and not prohibited).
    pub fn grantable_actions(&self) -> BTreeSet<Action> {
        let prohibited: BTreeSet<Action> = self
            .prohibitions
            .iter()
            .flat_map(|p| p.actions.iter().copied())
            .collect();
        self.permissions
            .iter()
            .flat_map(|p| p.actions.iter().copied())
            .filter(|a| !prohibited.contains(a))
            .collect()
    }

    /// Parses and validates the TOML form (see `docs/policy.md`).
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        if text.len() > MAX_POLICY_BYTES {
            return Err(PolicyError::TooLarge(format!(
                "{} bytes; at most {MAX_POLICY_BYTES}",
                text.len()
            )));
        }
        // Nesting is bounded by the TOML parser's own recursion limit (80)
        // and, beyond that, by the typed schema (at most 3 levels deep).
        let raw: RawPolicy = toml::from_str(text)
            .map_err(|e| PolicyError::Syntax(e.to_string().trim_end().to_owned()))?;
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let lines: Vec<(String, Vec<usize>)> = vec![
            (
                "permission".into(),
                raw.permission
                    .iter()
                    .map(|p| line_of(p.span().start))
                    .collect(),
            ),
            (
                "prohibition".into(),
                raw.prohibition
                    .iter()
                    .map(|p| line_of(p.span().start))
                    .collect(),
            ),
            (
                "obligation".into(),
                raw.obligation
                    .iter()
                    .map(|p| line_of(p.span().start))
                    .collect(),
            ),
        ];
        for (i, p) in raw.permission.iter().enumerate() {
            if let Some(key) = p.get_ref().explicitly_empty() {
                return Err(PolicyError::Invalid {
                    line: line_of(raw.permission[i].span().start),
                    message: format!("`{key} = []` would allow nobody; omit `{key}` to allow any"),
                });
            }
        }
        let policy = Policy {
            classification: raw.classification,
            permissions: raw
                .permission
                .into_iter()
                .map(|p| p.into_inner().into())
                .collect(),
            prohibitions: raw
                .prohibition
                .into_iter()
                .map(|p| Prohibition {
                    actions: p.into_inner().actions.into_iter().collect(),
                })
                .collect(),
            obligations: raw
                .obligation
                .into_iter()
                .map(|o| {
                    let o = o.into_inner();
                    Obligation {
                        action: o.action,
                        after_secs: o.after.map(|d| d.0.as_secs()),
                    }
                })
                .collect(),
        };
        policy.validate(|kind, i| {
            lines
                .iter()
                .find(|(k, _)| k == kind)
                .and_then(|(_, l)| l.get(i).copied())
                .unwrap_or(0)
        })?;
        Ok(policy)
    }

    /// The TOML form.
    pub fn to_toml(&self) -> String {
        let mut out = format!("classification = \"{}\"\n", self.classification);
        let list = |items: Vec<String>| {
            let quoted: Vec<String> = items.iter().map(|i| format!("\"{i}\"")).collect();
            format!("[{}]", quoted.join(", "))
        };
        for p in &self.permissions {
            out.push_str("\n[[permission]]\n");
            out.push_str(&format!(
                "actions = {}\n",
                list(p.actions.iter().map(|a| a.to_string()).collect())
            ));
            for (key, values) in [
                ("purpose", p.purpose.iter().cloned().collect::<Vec<_>>()),
                ("roles", p.roles.iter().map(ToString::to_string).collect()),
                (
                    "participants",
                    p.participants.iter().map(ToString::to_string).collect(),
                ),
                ("nodes", p.nodes.iter().map(ToString::to_string).collect()),
                (
                    "regions",
                    p.regions.iter().map(ToString::to_string).collect(),
                ),
            ] {
                if !values.is_empty() {
                    out.push_str(&format!("{key} = {}\n", list(values)));
                }
            }
            for (key, t) in [("not_before", p.not_before), ("not_after", p.not_after)] {
                if let Some(t) = t {
                    out.push_str(&format!("{key} = \"{}\"\n", rfc3339(t)));
                }
            }
            if let Some(s) = p.grant_ttl_secs {
                out.push_str(&format!("grant_ttl = \"{}\"\n", duration_text(s)));
            }
            if let Some(n) = p.max_fetches {
                out.push_str(&format!("max_fetches = {n}\n"));
            }
        }
        for p in &self.prohibitions {
            out.push_str("\n[[prohibition]]\n");
            out.push_str(&format!(
                "actions = {}\n",
                list(p.actions.iter().map(|a| a.to_string()).collect())
            ));
        }
        for o in &self.obligations {
            out.push_str("\n[[obligation]]\n");
            out.push_str(&format!("action = \"{}\"\n", o.action.as_str()));
            if let Some(s) = o.after_secs {
                out.push_str(&format!("after = \"{}\"\n", duration_text(s)));
            }
        }
        out
    }

    /// A plain-language account of the policy, for `dsnode policy check`.
    pub fn explain(&self) -> String {
        let mut out = format!("classification: {}", self.classification);
        match self.classification {
            Classification::Core => out.push_str(" — never granted to another node\n"),
            Classification::Important => out.push_str(" — important data (GB/T 43697-2024)\n"),
            _ => out.push('\n'),
        }
        let any = |set: Vec<String>, what: &str| {
            if set.is_empty() {
                format!("any {what}")
            } else {
                set.join(", ")
            }
        };
        for (i, p) in self.permissions.iter().enumerate() {
            let actions: Vec<String> = p.actions.iter().map(|a| a.to_string()).collect();
            out.push_str(&format!(
                "permission {}: may {}\n",
                i + 1,
                actions.join(", ")
            ));
            out.push_str(&format!(
                "  to: roles {}; participants {}; nodes {}\n",
                any(p.roles.iter().map(ToString::to_string).collect(), "role"),
                any(
                    p.participants.iter().map(ToString::to_string).collect(),
                    "participant"
                ),
                any(p.nodes.iter().map(ToString::to_string).collect(), "node"),
            ));
            out.push_str(&format!(
                "  for purpose: {}\n",
                any(p.purpose.iter().cloned().collect(), "purpose")
            ));
            out.push_str(&format!(
                "  from regions: {}\n",
                any(
                    p.regions.iter().map(ToString::to_string).collect(),
                    "region (or none)"
                )
            ));
            match (p.not_before, p.not_after) {
                (None, None) => out.push_str("  at any time\n"),
                (a, b) => out.push_str(&format!(
                    "  between {} and {}\n",
                    a.map_or("any time".into(), rfc3339),
                    b.map_or("any time".into(), rfc3339)
                )),
            }
            out.push_str(&format!(
                "  each grant valid for at most {}; {}\n",
                duration_text(p.grant_ttl_secs.unwrap_or(DEFAULT_GRANT_TTL.as_secs())),
                p.max_fetches
                    .map_or("unlimited fetches".into(), |n| format!(
                        "at most {n} fetch(es)"
                    ))
            ));
        }
        if self.permissions.is_empty() {
            out.push_str("no permission: nothing can be granted\n");
        }
        for p in &self.prohibitions {
            let actions: Vec<String> = p.actions.iter().map(|a| a.to_string()).collect();
            out.push_str(&format!("prohibited, always: {}\n", actions.join(", ")));
        }
        for o in &self.obligations {
            out.push_str(&format!(
                "obligation on every grant: {}{}\n",
                o.action.as_str(),
                o.after_secs
                    .map_or(String::new(), |s| format!(" after {}", duration_text(s)))
            ));
        }
        let grantable: Vec<String> = self
            .grantable_actions()
            .iter()
            .map(|a| a.to_string())
            .collect();
        out.push_str(&format!(
            "grantable actions: {}",
            if grantable.is_empty() || self.classification == Classification::Core {
                "none".into()
            } else {
                grantable.join(", ")
            }
        ));
        out
    }
}

/// A duration as policies write it: "90d", "12h", "1d 6h", "45s".
pub fn duration_text(secs: u64) -> String {
    if secs == 0 {
        return "0s".into();
    }
    let parts: Vec<String> = [
        (secs / 86400, "d"),
        (secs % 86400 / 3600, "h"),
        (secs % 3600 / 60, "m"),
        (secs % 60, "s"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, unit)| format!("{n}{unit}"))
    .collect();
    parts.join(" ")
}

/// RFC 3339 text of a time.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// A value parsed from its text form, so errors carry the TOML line.
struct Text<T>(T);

impl<'de, T: FromStr> Deserialize<'de> for Text<T>
where
    T::Err: fmt::Display,
{
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map(Text).map_err(serde::de::Error::custom)
    }
}

/// "30d", "12h", "90 days".
struct Span(Duration);

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map(Span).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration `{text}` ({e}): expected e.g. \"30d\", \"12h\""
            ))
        })
    }
}

struct Time(OffsetDateTime);

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
            .map(Time)
            .map_err(|_| {
                serde::de::Error::custom(format!(
                    "invalid time `{text}`: expected RFC 3339, e.g. \"2027-12-31T00:00:00Z\""
                ))
            })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    classification: Classification,
    #[serde(default)]
    permission: Vec<toml::Spanned<RawPermission>>,
    #[serde(default)]
    prohibition: Vec<toml::Spanned<RawProhibition>>,
    #[serde(default)]
    obligation: Vec<toml::Spanned<RawObligation>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPermission {
    actions: Vec<Action>,
    purpose: Option<Vec<String>>,
    roles: Option<Vec<Text<Role>>>,
    participants: Option<Vec<Text<ParticipantId>>>,
    nodes: Option<Vec<Text<NodeId>>>,
    regions: Option<Vec<Text<Region>>>,
    not_before: Option<Time>,
    not_after: Option<Time>,
    grant_ttl: Option<Span>,
    max_fetches: Option<u32>,
}

impl RawPermission {
    /// The first list key given explicitly empty (it would allow nobody,
    /// while the model reads an empty list as "any").
    fn explicitly_empty(&self) -> Option<&'static str> {
        [
            ("purpose", self.purpose.as_ref().is_some_and(Vec::is_empty)),
            ("roles", self.roles.as_ref().is_some_and(Vec::is_empty)),
            (
                "participants",
                self.participants.as_ref().is_some_and(Vec::is_empty),
            ),
            ("nodes", self.nodes.as_ref().is_some_and(Vec::is_empty)),
            ("regions", self.regions.as_ref().is_some_and(Vec::is_empty)),
        ]
        .into_iter()
        .find(|(_, empty)| *empty)
        .map(|(key, _)| key)
    }
}

/// Times are kept in UTC so that equal policies have equal bytes.
fn utc(t: OffsetDateTime) -> OffsetDateTime {
    t.to_offset(time::UtcOffset::UTC)
}

impl From<RawPermission> for Permission {
    fn from(r: RawPermission) -> Self {
        Self {
            actions: r.actions.into_iter().collect(),
            nodes: r.nodes.into_iter().flatten().map(|t| t.0).collect(),
            participants: r.participants.into_iter().flatten().map(|t| t.0).collect(),
            roles: r.roles.into_iter().flatten().map(|t| t.0).collect(),
            purpose: r.purpose.into_iter().flatten().collect(),
            regions: r.regions.into_iter().flatten().map(|t| t.0).collect(),
            not_before: r.not_before.map(|t| utc(t.0)),
            not_after: r.not_after.map(|t| utc(t.0)),
            grant_ttl_secs: r.grant_ttl.map(|d| d.0.as_secs()),
            max_fetches: r.max_fetches,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProhibition {
    actions: Vec<Action>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawObligation {
    action: Duty,
    after: Option<Span>,
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const EXAMPLE: &str = r#"classification = "general"

[[permission]]
actions = ["read", "derive"]
purpose = ["route-planning", "research"]
roles = ["consumer"]
regions = ["CN-HE", "CN-BJ", "CN-TJ"]
not_after = "2027-12-31T00:00:00Z"
grant_ttl = "30d"
max_fetches = 3

[[prohibition]]
actions = ["redistribute"]

[[obligation]]
action = "delete"
after = "90d"
"#;

    #[test]
    fn the_issue_example_parses_and_round_trips() {
        let p = Policy::from_toml(EXAMPLE).expect("parse");
        assert_eq!(p.classification, Classification::General);
        assert_eq!(p.permissions[0].max_fetches, Some(3));
        assert_eq!(p.permissions[0].grant_ttl_secs, Some(30 * 86400));
        assert_eq!(Policy::from_toml(&p.to_toml()).expect("again"), p);
        assert_eq!(
            Policy::from_canonical_json(&p.canonical_json()).expect("json"),
            p
        );
        assert!(p.explain().contains("prohibited, always: redistribute"));
    }

    #[test]
    fn unknown_keys_operands_and_values_are_named_with_their_line() {
        let cases = [
            (
                "classification = \"general\"\n[[permission]]\nactions = [\"read\"]\ncolour = 1\n",
                "colour",
                4,
            ),
            (
                "classification = \"general\"\n[[permission]]\nactions = [\"sell\"]\n",
                "sell",
                3,
            ),
            ("classification = \"secret\"\n", "secret", 1),
            (
                "classification = \"general\"\n[[permission]]\nactions = [\"read\"]\nroles = [\"admin\"]\n",
                "admin",
                4,
            ),
            (
                "classification = \"general\"\n[[permission]]\nactions = [\"read\"]\ngrant_ttl = \"soon\"\n",
                "soon",
                4,
            ),
            (
                "classification = \"general\"\n[[duty]]\naction = \"delete\"\n",
                "duty",
                2,
            ),
        ];
        for (text, name, line) in cases {
            let msg = Policy::from_toml(text).expect_err(name).to_string();
            assert!(msg.contains(name), "{msg}");
            assert!(msg.contains(&format!("line {line}")), "{msg}");
        }
    }

    #[test]
    fn unenforceable_policies_are_refused_with_the_line() {
        let core = "classification = \"core\"\n\n[[permission]]\nactions = [\"read\"]\n";
        let msg = Policy::from_toml(core).expect_err("core").to_string();
        assert!(
            msg.contains("line 3") && msg.contains("never granted"),
            "{msg}"
        );
        let dates = "classification = \"general\"\n[[permission]]\nactions = [\"read\"]\nnot_before = \"2028-01-01T00:00:00Z\"\nnot_after = \"2027-01-01T00:00:00Z\"\n";
        assert!(
            Policy::from_toml(dates)
                .expect_err("dates")
                .to_string()
                .contains("not_before")
        );
        let delete = "classification = \"general\"\n[[obligation]]\naction = \"delete\"\n";
        assert!(
            Policy::from_toml(delete)
                .expect_err("after")
                .to_string()
                .contains("needs `after`")
        );
    }

    #[test]
    fn size_and_nesting_limits() {
        let deep = format!(
            "classification = \"general\"\nx = {}1{}\n",
            "[".repeat(500),
            "]".repeat(500)
        );
        assert!(Policy::from_toml(&deep).is_err(), "deep nesting is refused");
        let empty =
            "classification = \"general\"\n[[permission]]\nactions = [\"read\"]\nroles = []\n";
        let msg = Policy::from_toml(empty)
            .expect_err("empty list")
            .to_string();
        assert!(
            msg.contains("`roles = []`") && msg.contains("line 2"),
            "{msg}"
        );
        let huge = format!(
            "classification = \"general\"\n#{}\n",
            "x".repeat(MAX_POLICY_BYTES)
        );
        assert!(matches!(
            Policy::from_toml(&huge),
            Err(PolicyError::TooLarge(_))
        ));
        let many = format!(
            "classification = \"general\"\n{}",
            "[[prohibition]]\nactions = [\"read\"]\n".repeat(40)
        );
        assert!(matches!(
            Policy::from_toml(&many),
            Err(PolicyError::TooLarge(_))
        ));
    }
}
