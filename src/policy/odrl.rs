//! The ODRL 2.2 bridge: export a policy as ODRL JSON-LD and import the
//! subset the model covers, so policies travel to and from Eclipse-EDC
//! style data spaces.
//!
//! Covered: `permission`, `prohibition`, `obligation`; actions `read`,
//! `derive`, `redistribute`, `aggregate` (and duties `delete`, `attribute`,
//! `report`); leftOperands `purpose`, `recipient`, `spatial`, `dateTime`,
//! `elapsedTime`, `count`; operators `eq`, `isAnyOf`, `lt`, `lteq`, `gt`,
//! `gteq`. The classification travels as `dsnode:classification`. Within
//! one rule all constraints must hold; one `recipient` constraint lists
//! values of one kind (`urn:dsnode:role:…`, `urn:dsnode:participant:…`,
//! `urn:dsnode:node:…`). Anything else is an error that names it.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use super::{
    Action, Classification, Duty, Obligation, Permission, Policy, PolicyError, Prohibition, rfc3339,
};

const CONTEXT: &str = "http://www.w3.org/ns/odrl.jsonld";
const URN_ROLE: &str = "urn:dsnode:role:";
const URN_PARTICIPANT: &str = "urn:dsnode:participant:";
const URN_NODE: &str = "urn:dsnode:node:";

fn err(msg: impl Into<String>) -> PolicyError {
    PolicyError::Odrl(msg.into())
}

/// An ISO 8601 duration ("P30D", "PT12H", "P1DT2H3M4S") from seconds.
pub fn iso_duration(secs: u64) -> String {
    let (d, rest) = (secs / 86400, secs % 86400);
    let (h, m, s) = (rest / 3600, rest % 3600 / 60, rest % 60);
    let mut out = String::from("P");
    if d > 0 {
        out.push_str(&format!("{d}D"));
    }
    if h > 0 || m > 0 || s > 0 || d == 0 {
        out.push('T');
        if h > 0 {
            out.push_str(&format!("{h}H"));
        }
        if m > 0 {
            out.push_str(&format!("{m}M"));
        }
        if s > 0 || (h == 0 && m == 0) {
            out.push_str(&format!("{s}S"));
        }
    }
    out
}

/// Seconds of an ISO 8601 duration with weeks, days, hours, minutes and
/// seconds (years and months have no fixed length and are refused).
pub fn parse_iso_duration(text: &str) -> Result<u64, PolicyError> {
    let bad = || {
        err(format!(
            "`{text}` is not an ISO 8601 duration of weeks, days, hours, minutes and seconds (e.g. \"P30D\")"
        ))
    };
    let body = text.strip_prefix('P').ok_or_else(bad)?;
    let (date, time) = match body.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (body, None),
    };
    let mut total = 0u64;
    let mut take = |part: &str, units: &[(char, u64)]| -> Result<(), PolicyError> {
        let mut num = String::new();
        for c in part.chars() {
            if c.is_ascii_digit() {
                num.push(c);
                continue;
            }
            let unit = units.iter().find(|(u, _)| *u == c).ok_or_else(bad)?.1;
            let n: u64 = num.parse().map_err(|_| bad())?;
            total = n
                .checked_mul(unit)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(bad)?;
            num.clear();
        }
        if num.is_empty() { Ok(()) } else { Err(bad()) }
    };
    take(date, &[('W', 7 * 86400), ('D', 86400)])?;
    if let Some(t) = time {
        if t.is_empty() {
            return Err(bad());
        }
        take(t, &[('H', 3600), ('M', 60), ('S', 1)])?;
    }
    if body.is_empty() {
        return Err(bad());
    }
    Ok(total)
}

fn constraint(left: &str, op: &str, right: Value) -> Value {
    json!({"leftOperand": left, "operator": op, "rightOperand": right})
}

fn actions_json(actions: &BTreeSet<Action>) -> Value {
    let v: Vec<Value> = actions.iter().map(|a| Value::from(a.as_str())).collect();
    Value::Array(v)
}

/// The policy as an ODRL `Set`.
pub fn export(policy: &Policy) -> Value {
    let permissions: Vec<Value> = policy
        .permissions
        .iter()
        .map(|p| {
            let mut c = Vec::new();
            let strings = |v: Vec<String>| Value::Array(v.into_iter().map(Value::from).collect());
            for (prefix, values) in [
                (
                    URN_ROLE,
                    p.roles.iter().map(ToString::to_string).collect::<Vec<_>>(),
                ),
                (
                    URN_PARTICIPANT,
                    p.participants.iter().map(ToString::to_string).collect(),
                ),
                (URN_NODE, p.nodes.iter().map(ToString::to_string).collect()),
            ] {
                if !values.is_empty() {
                    c.push(constraint(
                        "recipient",
                        "isAnyOf",
                        strings(values.iter().map(|v| format!("{prefix}{v}")).collect()),
                    ));
                }
            }
            if !p.purpose.is_empty() {
                c.push(constraint(
                    "purpose",
                    "isAnyOf",
                    strings(p.purpose.iter().cloned().collect()),
                ));
            }
            if !p.regions.is_empty() {
                c.push(constraint(
                    "spatial",
                    "isAnyOf",
                    strings(p.regions.iter().map(ToString::to_string).collect()),
                ));
            }
            if let Some(t) = p.not_before {
                c.push(constraint("dateTime", "gteq", Value::from(rfc3339(t))));
            }
            if let Some(t) = p.not_after {
                c.push(constraint("dateTime", "lt", Value::from(rfc3339(t))));
            }
            if let Some(s) = p.grant_ttl_secs {
                c.push(constraint(
                    "elapsedTime",
                    "lteq",
                    Value::from(iso_duration(s)),
                ));
            }
            if let Some(n) = p.max_fetches {
                c.push(constraint("count", "lteq", Value::from(n)));
            }
            let mut rule = Map::new();
            rule.insert("action".into(), actions_json(&p.actions));
            if !c.is_empty() {
                rule.insert("constraint".into(), Value::Array(c));
            }
            Value::Object(rule)
        })
        .collect();
    let prohibitions: Vec<Value> = policy
        .prohibitions
        .iter()
        .map(|p| json!({"action": actions_json(&p.actions)}))
        .collect();
    let obligations: Vec<Value> = policy
        .obligations
        .iter()
        .map(|o| {
            let mut rule = Map::new();
            rule.insert("action".into(), Value::from(o.action.as_str()));
            if let Some(s) = o.after_secs {
                rule.insert(
                    "constraint".into(),
                    json!([constraint(
                        "elapsedTime",
                        "eq",
                        Value::from(iso_duration(s))
                    )]),
                );
            }
            Value::Object(rule)
        })
        .collect();
    let hash = data_encoding::HEXLOWER.encode(&policy.hash());
    json!({
        "@context": [CONTEXT, {"dsnode": "urn:dsnode:"}],
        "@type": "Set",
        "uid": format!("urn:dsnode:policy:{hash}"),
        "dsnode:classification": policy.classification.as_str(),
        "permission": permissions,
        "prohibition": prohibitions,
        "obligation": obligations,
    })
}

fn check_keys(obj: &Map<String, Value>, allowed: &[&str], what: &str) -> Result<(), PolicyError> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(err(format!(
            "`{k}` in {what} is outside the supported ODRL subset (supported here: {})",
            allowed.join(", ")
        ))),
        None => Ok(()),
    }
}

fn as_object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, PolicyError> {
    v.as_object()
        .ok_or_else(|| err(format!("{what} must be a JSON object")))
}

fn rules<'a>(
    doc: &'a Map<String, Value>,
    key: &str,
) -> Result<Vec<&'a Map<String, Value>>, PolicyError> {
    match doc.get(key) {
        None => Ok(Vec::new()),
        Some(Value::Array(a)) => a.iter().map(|r| as_object(r, key)).collect(),
        Some(v @ Value::Object(_)) => Ok(vec![as_object(v, key)?]),
        Some(_) => Err(err(format!("`{key}` must be an array of rules"))),
    }
}

/// A string or an array of strings.
fn strings(v: &Value, what: &str) -> Result<Vec<String>, PolicyError> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| err(format!("{what} must be strings")))
            })
            .collect(),
        _ => Err(err(format!(
            "{what} must be a string or an array of strings"
        ))),
    }
}

fn parse_actions(v: Option<&Value>, what: &str) -> Result<BTreeSet<Action>, PolicyError> {
    let v = v.ok_or_else(|| err(format!("{what} has no `action`")))?;
    strings(v, "action")?
        .iter()
        .map(|a| a.parse::<Action>().map_err(|_| err(format!("action `{a}` in {what} is outside the supported subset (read, derive, redistribute, aggregate)"))))
        .collect()
}

fn parse_time(v: &Value) -> Result<OffsetDateTime, PolicyError> {
    let s = v
        .as_str()
        .ok_or_else(|| err("a dateTime rightOperand must be an RFC 3339 string"))?;
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|_| err(format!("`{s}` is not an RFC 3339 time")))
}

struct Constraint<'a> {
    left: &'a str,
    op: &'a str,
    right: &'a Value,
}

fn constraints<'a>(
    rule: &'a Map<String, Value>,
    what: &str,
) -> Result<Vec<Constraint<'a>>, PolicyError> {
    let Some(list) = rule.get("constraint") else {
        return Ok(Vec::new());
    };
    let list = list
        .as_array()
        .ok_or_else(|| err(format!("`constraint` in {what} must be an array")))?;
    list.iter()
        .map(|c| {
            let c = as_object(c, "a constraint")?;
            check_keys(c, &["leftOperand", "operator", "rightOperand"], "a constraint")?;
            let field = |k: &str| {
                c.get(k).ok_or_else(|| err(format!("a constraint in {what} has no `{k}`")))
            };
            let left = field("leftOperand")?.as_str().ok_or_else(|| err("leftOperand must be a string"))?;
            let op = field("operator")?.as_str().ok_or_else(|| err("operator must be a string"))?;
            if !["eq", "isAnyOf", "lt", "lteq", "gt", "gteq"].contains(&op) {
                return Err(err(format!("operator `{op}` is outside the supported subset (eq, isAnyOf, lt, lteq, gt, gteq)")));
            }
            Ok(Constraint { left, op, right: field("rightOperand")? })
        })
        .collect()
}

fn unsupported(c: &Constraint<'_>) -> PolicyError {
    err(format!(
        "`{} {}` is not supported for leftOperand `{}`",
        c.left, c.op, c.left
    ))
}

/// The values of an `eq` (one string) or `isAnyOf` (a non-empty list)
/// constraint. An empty list would allow nobody in ODRL but "anyone" in
/// an omitted dsnode key, so it is refused rather than guessed.
fn set_values(c: &Constraint<'_>) -> Result<Vec<String>, PolicyError> {
    let values = match (c.op, c.right) {
        ("eq", Value::String(s)) => vec![s.clone()],
        ("eq", _) => return Err(err(format!("`{} eq` takes one string", c.left))),
        ("isAnyOf", v) => strings(v, c.left)?,
        _ => return Err(unsupported(c)),
    };
    if values.is_empty() {
        return Err(err(format!(
            "`{} {}` with no values allows nobody; not supported",
            c.left, c.op
        )));
    }
    Ok(values)
}

fn import_permission(rule: &Map<String, Value>, n: usize) -> Result<Permission, PolicyError> {
    let what = format!("permission {n}");
    check_keys(rule, &["action", "constraint"], &what)?;
    let mut p = Permission {
        actions: parse_actions(rule.get("action"), &what)?,
        ..Permission::default()
    };
    // ODRL requires every constraint of a rule to hold. The model holds
    // one value set per operand, so a repeated operand (whose meaning is
    // an intersection) is refused rather than merged into a union.
    let mut seen = BTreeSet::new();
    for c in constraints(rule, &what)? {
        let parse_err = |e: crate::identity::IdError| err(format!("{what}: {e}"));
        let slot = match (c.left, c.op) {
            ("dateTime", "gt" | "gteq") => "dateTime (lower bound)".to_owned(),
            ("dateTime", _) => "dateTime (upper bound)".to_owned(),
            ("recipient", _) => {
                let kind = strings(c.right, "recipient")?
                    .first()
                    .and_then(|v| v.split(':').nth(2).map(str::to_owned))
                    .unwrap_or_default();
                format!("recipient ({kind})")
            }
            (left, _) => left.to_owned(),
        };
        if !seen.insert(slot.clone()) {
            return Err(err(format!(
                "{what} constrains `{slot}` twice; give one constraint per operand"
            )));
        }
        match c.left {
            "purpose" => p.purpose.extend(set_values(&c)?),
            "spatial" => {
                for r in set_values(&c)? {
                    p.regions.insert(r.parse().map_err(parse_err)?);
                }
            }
            "recipient" => {
                let values = set_values(&c)?;
                for v in &values {
                    if let Some(r) = v.strip_prefix(URN_ROLE) {
                        p.roles.insert(r.parse().map_err(parse_err)?);
                    } else if let Some(x) = v.strip_prefix(URN_PARTICIPANT) {
                        p.participants.insert(x.parse().map_err(parse_err)?);
                    } else if let Some(x) = v.strip_prefix(URN_NODE) {
                        p.nodes.insert(x.parse().map_err(parse_err)?);
                    } else {
                        return Err(err(format!(
                            "recipient `{v}` is not a urn:dsnode:role:, urn:dsnode:participant: or urn:dsnode:node: name"
                        )));
                    }
                }
                let kinds: BTreeSet<&str> =
                    values.iter().filter_map(|v| v.split(':').nth(2)).collect();
                if kinds.len() > 1 {
                    return Err(err(format!(
                        "{what}: one recipient constraint mixes {kinds:?}; use one constraint per kind"
                    )));
                }
            }
            "dateTime" => {
                let t = parse_time(c.right)?;
                match c.op {
                    "gteq" => p.not_before = Some(t),
                    "gt" => p.not_before = Some(t + time::Duration::nanoseconds(1)),
                    "lt" => p.not_after = Some(t),
                    "lteq" => p.not_after = Some(t + time::Duration::nanoseconds(1)),
                    _ => return Err(unsupported(&c)),
                }
            }
            "elapsedTime" => {
                let s = c.right.as_str().ok_or_else(|| {
                    err("an elapsedTime rightOperand must be an ISO 8601 duration string")
                })?;
                let secs = parse_iso_duration(s)?;
                p.grant_ttl_secs = Some(match c.op {
                    "lteq" | "eq" => secs,
                    "lt" => secs.saturating_sub(1),
                    _ => return Err(unsupported(&c)),
                });
            }
            "count" => {
                let n = c
                    .right
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| err("a count rightOperand must be a whole number"))?;
                p.max_fetches = Some(match c.op {
                    "lteq" => n,
                    "lt" => n.saturating_sub(1),
                    _ => return Err(unsupported(&c)),
                });
            }
            other => {
                return Err(err(format!(
                    "leftOperand `{other}` in {what} is outside the supported subset (purpose, recipient, spatial, dateTime, elapsedTime, count)"
                )));
            }
        }
    }
    Ok(p)
}

/// Reads an ODRL policy in the supported subset and validates it.
pub fn import(doc: &Value) -> Result<Policy, PolicyError> {
    let doc = as_object(doc, "an ODRL policy")?;
    check_keys(
        doc,
        &[
            "@context",
            "@type",
            "uid",
            "dsnode:classification",
            "permission",
            "prohibition",
            "obligation",
        ],
        "the policy",
    )?;
    // A JSON-LD context can rename terms (even `permission` into
    // `prohibition`); only the ODRL context and our prefix are accepted.
    let context_ok = |v: &Value| match v {
        Value::String(s) => s == CONTEXT,
        Value::Object(o) => {
            o.len() == 1 && o.get("dsnode").and_then(Value::as_str) == Some("urn:dsnode:")
        }
        _ => false,
    };
    let context_valid = match doc.get("@context") {
        None => true,
        Some(Value::Array(items)) => items.iter().all(context_ok),
        Some(v) => context_ok(v),
    };
    if !context_valid {
        return Err(err(format!(
            "`@context` other than \"{CONTEXT}\" (and {{\"dsnode\": \"urn:dsnode:\"}}) is outside the supported subset"
        )));
    }
    let kind = match doc.get("@type") {
        None => None,
        Some(Value::String(t)) => Some(t.as_str()),
        Some(_) => return Err(err("`@type` must be a string")),
    };
    if let Some(t) = kind
        && !["Set", "Offer", "Policy", "odrl:Set", "odrl:Offer"].contains(&t)
    {
        return Err(err(format!(
            "policy type `{t}` is outside the supported subset (Set, Offer)"
        )));
    }
    let classification: Classification = doc
        .get("dsnode:classification")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            err("`dsnode:classification` (public, general, important or core) is required")
        })?
        .parse()?;
    let permissions = rules(doc, "permission")?
        .into_iter()
        .enumerate()
        .map(|(i, r)| import_permission(r, i + 1))
        .collect::<Result<_, _>>()?;
    let prohibitions = rules(doc, "prohibition")?
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let what = format!("prohibition {}", i + 1);
            check_keys(r, &["action"], &what)?;
            Ok(Prohibition {
                actions: parse_actions(r.get("action"), &what)?,
            })
        })
        .collect::<Result<_, PolicyError>>()?;
    let obligations = rules(doc, "obligation")?
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let what = format!("obligation {}", i + 1);
            check_keys(r, &["action", "constraint"], &what)?;
            let name = r.get("action").and_then(Value::as_str).ok_or_else(|| err(format!("{what} needs one `action`")))?;
            let action = match name {
                "delete" => Duty::Delete,
                "attribute" => Duty::Attribute,
                "report" => Duty::Report,
                other => return Err(err(format!("duty `{other}` in {what} is outside the supported subset (delete, attribute, report)"))),
            };
            let mut after_secs = None;
            for c in constraints(r, &what)? {
                match (c.left, c.op) {
                    ("elapsedTime", "eq") => {
                        let s = c.right.as_str().ok_or_else(|| err("an elapsedTime rightOperand must be a duration string"))?;
                        after_secs = Some(parse_iso_duration(s)?);
                    }
                    _ => return Err(err(format!("`{} {}` in {what} is outside the supported subset (elapsedTime eq)", c.left, c.op))),
                }
            }
            Ok(Obligation { action, after_secs })
        })
        .collect::<Result<_, PolicyError>>()?;
    let policy = Policy {
        classification,
        permissions,
        prohibitions,
        obligations,
    };
    // Same rules as the TOML form: a policy this node cannot enforce is refused.
    Policy::from_canonical_json(&policy.canonical_json())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (secs, text) in [
            (30 * 86400, "P30D"),
            (12 * 3600, "PT12H"),
            (90061, "P1DT1H1M1S"),
            (0, "PT0S"),
        ] {
            assert_eq!(iso_duration(secs), text);
            assert_eq!(parse_iso_duration(text).expect("parse"), secs);
        }
        assert_eq!(parse_iso_duration("P2W").expect("weeks"), 14 * 86400);
        for bad in ["30D", "P1Y", "P1M", "P", "PT", "P1.5D", "PTXS"] {
            assert!(parse_iso_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn export_then_import_is_the_same_policy() {
        let p = Policy::from_toml(super::super::tests::EXAMPLE).expect("example");
        let doc = export(&p);
        assert_eq!(import(&doc).expect("import"), p);
        let text = serde_json::to_string(&doc).expect("json");
        assert!(text.contains("\"leftOperand\":\"purpose\""));
    }

    #[test]
    fn unsupported_terms_are_refused_by_name() {
        let p = Policy::from_toml(super::super::tests::EXAMPLE).expect("example");
        let base = export(&p);
        let mut doc = base.clone();
        doc["permission"][0]["constraint"][0]["leftOperand"] = json!("industry");
        assert!(
            import(&doc)
                .expect_err("operand")
                .to_string()
                .contains("`industry`")
        );
        let mut doc = base.clone();
        doc["permission"][0]["constraint"][0]["operator"] = json!("neq");
        assert!(
            import(&doc)
                .expect_err("operator")
                .to_string()
                .contains("`neq`")
        );
        let mut doc = base.clone();
        doc["permission"][0]["action"] = json!("print");
        assert!(
            import(&doc)
                .expect_err("action")
                .to_string()
                .contains("`print`")
        );
        let mut doc = base.clone();
        doc["permission"][0]["assigner"] = json!("someone");
        assert!(
            import(&doc)
                .expect_err("key")
                .to_string()
                .contains("`assigner`")
        );
        let mut doc = base;
        doc["obligation"][0]["action"] = json!("compensate");
        assert!(
            import(&doc)
                .expect_err("duty")
                .to_string()
                .contains("`compensate`")
        );
    }

    #[test]
    fn constraints_that_must_all_hold_are_never_widened() {
        let p = Policy::from_toml(super::super::tests::EXAMPLE).expect("example");
        let base = export(&p);
        // A second purpose constraint would be an intersection in ODRL.
        let mut doc = base.clone();
        let extra = constraint("purpose", "isAnyOf", json!(["marketing"]));
        doc["permission"][0]["constraint"]
            .as_array_mut()
            .expect("array")
            .push(extra);
        assert!(
            import(&doc)
                .expect_err("repeat")
                .to_string()
                .contains("twice")
        );
        // An empty isAnyOf allows nobody; it is not read as "anyone".
        let mut doc = base.clone();
        doc["permission"][0]["constraint"][0]["rightOperand"] = json!([]);
        assert!(import(&doc).is_err());
        // A context that could rename terms is refused.
        let mut doc = base;
        doc["@context"] = json!({"permission": "http://www.w3.org/ns/odrl/2/prohibition"});
        assert!(
            import(&doc)
                .expect_err("context")
                .to_string()
                .contains("@context")
        );
    }
}
