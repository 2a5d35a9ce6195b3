//! Policy evaluation: a pure, deterministic function of the policy, the
//! request, the requester's certified identity and the time. No I/O. A
//! denial is a value listing every unmet constraint in plain words.

use std::collections::BTreeSet;
use std::time::Duration;

use time::OffsetDateTime;

use super::{Action, Classification, DEFAULT_GRANT_TTL, Obligation, Permission, Policy, rfc3339};
use crate::identity::PeerIdentity;

/// What a requester asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessRequest {
    /// Actions wanted.
    pub actions: BTreeSet<Action>,
    /// The declared purpose.
    pub purpose: String,
    /// How long the grant should last; `None`: as long as allowed.
    pub duration: Option<Duration>,
}

/// The terms of a permitted grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Terms {
    /// Actions granted.
    pub actions: BTreeSet<Action>,
    /// The purpose it is granted for.
    pub purpose: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// Fetches allowed, if limited.
    pub max_fetches: Option<u32>,
    /// Duties the grantee takes on.
    pub obligations: Vec<Obligation>,
    /// Which permission (0-based) granted it.
    pub permission: usize,
}

/// The outcome of an evaluation. A denial is an expected outcome, not an
/// error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Access may be granted on these terms.
    Permit(Terms),
    /// Access is refused for these reasons (never empty).
    Deny(Vec<String>),
}

fn list<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let v: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    format!("[{}]", v.join(", "))
}

/// Why `who` does not match the permission's assignee and region
/// constraints (which do not depend on the request or the time).
fn identity_gaps(p: &Permission, who: &PeerIdentity) -> Vec<String> {
    let mut gaps = Vec::new();
    if !p.nodes.is_empty() && !p.nodes.contains(&who.node_id) {
        gaps.push(format!(
            "node {} is not among the permitted nodes",
            who.node_id
        ));
    }
    if !p.participants.is_empty() && !p.participants.contains(&who.participant) {
        gaps.push(format!(
            "participant `{}` is not in {}",
            who.participant,
            list(&p.participants)
        ));
    }
    if !p.roles.is_empty() && !p.roles.iter().any(|r| who.has_role(*r)) {
        gaps.push(format!(
            "the requester's certified roles {} include none of {}",
            who.roles,
            list(&p.roles)
        ));
    }
    if !p.regions.is_empty() {
        match &who.region {
            Some(r) if p.regions.contains(r) => {}
            Some(r) => gaps.push(format!("region `{r}` is not in {}", list(&p.regions))),
            None => gaps.push(format!(
                "the requester's certificate attests no region; the policy requires one of {}",
                list(&p.regions)
            )),
        }
    }
    gaps
}

/// Evaluates `request` by `who` against `policy` at `now`.
pub fn evaluate(
    policy: &Policy,
    request: &AccessRequest,
    who: &PeerIdentity,
    now: OffsetDateTime,
) -> Decision {
    if policy.classification == Classification::Core {
        return Decision::Deny(vec![
            "the dataset is classified `core`: core data is never granted to another node".into(),
        ]);
    }
    if request.actions.is_empty() {
        return Decision::Deny(vec!["the request names no action".into()]);
    }
    if request.duration.is_some_and(|d| d.is_zero()) {
        return Decision::Deny(vec!["the requested duration is zero".into()]);
    }
    let prohibited: Vec<String> = request
        .actions
        .iter()
        .filter(|a| policy.prohibitions.iter().any(|p| p.actions.contains(a)))
        .map(|a| format!("action `{a}` is prohibited by the policy"))
        .collect();
    if !prohibited.is_empty() {
        return Decision::Deny(prohibited);
    }
    let mut reasons = Vec::new();
    for (i, p) in policy.permissions.iter().enumerate() {
        let missing: Vec<&Action> = request
            .actions
            .iter()
            .filter(|a| !p.actions.contains(a))
            .collect();
        if !missing.is_empty() {
            reasons.push(format!(
                "permission {} does not allow {}",
                i + 1,
                list(missing.iter().map(|a| format!("`{a}`")))
            ));
            continue;
        }
        let mut gaps = identity_gaps(p, who);
        if !p.purpose.is_empty() && !p.purpose.contains(&request.purpose) {
            gaps.push(format!(
                "purpose `{}` is not in {}",
                request.purpose,
                list(&p.purpose)
            ));
        }
        if let Some(t) = p.not_before.filter(|t| now < *t) {
            gaps.push(format!("access is permitted only from {}", rfc3339(t)));
        }
        if let Some(t) = p.not_after.filter(|t| now >= *t) {
            gaps.push(format!("access was permitted only until {}", rfc3339(t)));
        }
        if !gaps.is_empty() {
            reasons.push(format!("permission {}: {}", i + 1, gaps.join("; ")));
            continue;
        }
        let ttl = p
            .grant_ttl_secs
            .map_or(DEFAULT_GRANT_TTL, Duration::from_secs);
        let wanted = request.duration.map_or(ttl, |d| d.min(ttl));
        // Policies cap grant_ttl at 10 years; saturate rather than panic
        // near the end of representable time.
        let mut not_after = time::Duration::try_from(wanted)
            .ok()
            .and_then(|d| now.checked_add(d))
            .unwrap_or(now);
        if let Some(limit) = p.not_after {
            not_after = not_after.min(limit);
        }
        return Decision::Permit(Terms {
            actions: request.actions.clone(),
            purpose: request.purpose.clone(),
            not_before: now,
            not_after,
            max_fetches: p.max_fetches,
            obligations: policy.obligations.clone(),
            permission: i,
        });
    }
    if policy.permissions.is_empty() {
        reasons.push("the policy grants nothing (it has no permission)".into());
    }
    Decision::Deny(reasons)
}

/// Whether `who` could ever be granted anything under `policy` from `now`
/// on: the catalog hides datasets for which this is false.
pub fn could_ever_grant(policy: &Policy, who: &PeerIdentity, now: OffsetDateTime) -> bool {
    if policy.classification == Classification::Core {
        return false;
    }
    let prohibited: BTreeSet<Action> = policy
        .prohibitions
        .iter()
        .flat_map(|p| p.actions.iter().copied())
        .collect();
    policy.permissions.iter().any(|p| {
        p.actions.iter().any(|a| !prohibited.contains(a))
            && identity_gaps(p, who).is_empty()
            && p.not_after.is_none_or(|t| now < t)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{NodeId, RoleSet};

    fn who(roles: &str, region: Option<&str>, participant: &str) -> PeerIdentity {
        PeerIdentity {
            node_id: NodeId::from_public_key(&[9; 32]),
            public_key: [9; 32],
            participant: participant.parse().expect("participant"),
            roles: RoleSet::parse_list(roles).expect("roles"),
            region: region.map(|r| r.parse().expect("region")),
            serial: vec![1],
            not_after: 0,
        }
    }

    fn req(actions: &[Action], purpose: &str) -> AccessRequest {
        AccessRequest {
            actions: actions.iter().copied().collect(),
            purpose: purpose.into(),
            duration: None,
        }
    }

    fn at(s: &str) -> OffsetDateTime {
        OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).expect("time")
    }

    fn example() -> Policy {
        Policy::from_toml(super::super::tests::EXAMPLE).expect("example")
    }

    fn denied(d: Decision) -> Vec<String> {
        match d {
            Decision::Deny(r) => r,
            Decision::Permit(t) => panic!("expected a denial, got {t:?}"),
        }
    }

    /// Each constraint permits and denies exactly as documented.
    #[test]
    fn constraint_table() {
        let p = example();
        let now = at("2027-01-01T00:00:00Z");
        let good = who("consumer", Some("CN-HE"), "acme");

        let Decision::Permit(t) = evaluate(&p, &req(&[Action::Read], "route-planning"), &good, now)
        else {
            panic!("permit expected");
        };
        assert_eq!(t.max_fetches, Some(3));
        assert_eq!(
            t.not_after,
            now + Duration::from_secs(30 * 86400),
            "grant_ttl"
        );
        assert_eq!(t.obligations.len(), 1);

        let table: [(&str, Decision, &str); 7] = [
            (
                "purpose",
                evaluate(&p, &req(&[Action::Read], "marketing"), &good, now),
                "purpose `marketing` is not in [research, route-planning]",
            ),
            (
                "role",
                evaluate(
                    &p,
                    &req(&[Action::Read], "research"),
                    &who("auditor", Some("CN-HE"), "acme"),
                    now,
                ),
                "include none of [consumer]",
            ),
            (
                "region",
                evaluate(
                    &p,
                    &req(&[Action::Read], "research"),
                    &who("consumer", Some("CN-SH"), "acme"),
                    now,
                ),
                "region `CN-SH` is not in [CN-BJ, CN-HE, CN-TJ]",
            ),
            (
                "no region",
                evaluate(
                    &p,
                    &req(&[Action::Read], "research"),
                    &who("consumer", None, "acme"),
                    now,
                ),
                "attests no region",
            ),
            (
                "not_after",
                evaluate(
                    &p,
                    &req(&[Action::Read], "research"),
                    &good,
                    at("2028-01-01T00:00:00Z"),
                ),
                "only until 2027-12-31T00:00:00Z",
            ),
            (
                "prohibition",
                evaluate(&p, &req(&[Action::Redistribute], "research"), &good, now),
                "action `redistribute` is prohibited",
            ),
            (
                "action",
                evaluate(&p, &req(&[Action::Aggregate], "research"), &good, now),
                "does not allow [`aggregate`]",
            ),
        ];
        for (name, decision, want) in table {
            let reasons = denied(decision);
            assert!(
                reasons.iter().any(|r| r.contains(want)),
                "{name}: {reasons:?}"
            );
        }
        // Several unmet constraints are all named.
        let reasons = denied(evaluate(
            &p,
            &req(&[Action::Read], "marketing"),
            &who("auditor", None, "x"),
            now,
        ));
        let all = reasons.join(" | ");
        assert!(
            all.contains("purpose") && all.contains("roles") && all.contains("region"),
            "{all}"
        );
    }

    #[test]
    fn request_duration_and_not_after_bound_the_grant() {
        let p = example();
        let now = at("2027-12-30T00:00:00Z");
        let good = who("consumer", Some("CN-BJ"), "acme");
        let mut r = req(&[Action::Read, Action::Derive], "research");
        r.duration = Some(Duration::from_secs(3600));
        let Decision::Permit(t) = evaluate(&p, &r, &good, at("2027-01-01T00:00:00Z")) else {
            panic!()
        };
        assert_eq!(t.not_after - t.not_before, time::Duration::hours(1));
        r.duration = None;
        let Decision::Permit(t) = evaluate(&p, &r, &good, now) else {
            panic!()
        };
        assert_eq!(
            t.not_after,
            at("2027-12-31T00:00:00Z"),
            "clamped to the policy's not_after"
        );
    }

    #[test]
    fn core_is_never_granted_and_never_listed() {
        let p = Policy {
            classification: Classification::Core,
            permissions: vec![],
            prohibitions: vec![],
            obligations: vec![],
        };
        let anyone = who("consumer,auditor,publisher", Some("CN-HE"), "acme");
        let reasons = denied(evaluate(
            &p,
            &req(&[Action::Read], "x"),
            &anyone,
            OffsetDateTime::now_utc(),
        ));
        assert!(reasons[0].contains("never granted"));
        assert!(!could_ever_grant(&p, &anyone, OffsetDateTime::now_utc()));
    }

    #[test]
    fn visibility_follows_who_could_ever_be_granted() {
        let p = example();
        let now = at("2027-01-01T00:00:00Z");
        assert!(could_ever_grant(
            &p,
            &who("consumer", Some("CN-HE"), "acme"),
            now
        ));
        assert!(!could_ever_grant(
            &p,
            &who("auditor", Some("CN-HE"), "acme"),
            now
        ));
        assert!(!could_ever_grant(
            &p,
            &who("consumer", Some("CN-SH"), "acme"),
            now
        ));
        assert!(!could_ever_grant(
            &p,
            &who("consumer", Some("CN-HE"), "acme"),
            at("2028-01-01T00:00:00Z")
        ));
    }

    mod props {
        use super::*;
        use crate::policy::{Classification, Permission, Prohibition};
        use proptest::prelude::*;

        const PURPOSES: [&str; 3] = ["research", "marketing", "route-planning"];
        const REGIONS: [&str; 3] = ["CN-HE", "CN-BJ", "CN-SH"];

        fn actions() -> impl Strategy<Value = BTreeSet<Action>> {
            proptest::sample::subsequence(Action::ALL.to_vec(), 0..=4)
                .prop_map(|v| v.into_iter().collect())
        }

        fn permission() -> impl Strategy<Value = Permission> {
            (
                actions().prop_filter("non-empty", |a| !a.is_empty()),
                proptest::sample::subsequence(PURPOSES.to_vec(), 0..=3),
                proptest::sample::subsequence(REGIONS.to_vec(), 0..=3),
                proptest::sample::subsequence(vec!["consumer", "auditor"], 0..=2),
                proptest::option::of(1u32..5),
                proptest::option::of(0i64..2_000_000_000),
            )
                .prop_map(|(actions, purposes, regions, roles, fetches, until)| {
                    Permission {
                        actions,
                        purpose: purposes.into_iter().map(str::to_owned).collect(),
                        regions: regions
                            .into_iter()
                            .map(|r| r.parse().expect("region"))
                            .collect(),
                        roles: roles
                            .into_iter()
                            .map(|r| r.parse().expect("role"))
                            .collect(),
                        max_fetches: fetches,
                        not_after: until
                            .map(|t| OffsetDateTime::from_unix_timestamp(t).expect("t")),
                        ..Permission::default()
                    }
                })
        }

        fn policy() -> impl Strategy<Value = Policy> {
            (
                proptest::sample::select(vec![
                    Classification::Public,
                    Classification::General,
                    Classification::Important,
                    Classification::Core,
                ]),
                proptest::collection::vec(permission(), 0..4),
                proptest::collection::vec(actions(), 0..3),
            )
                .prop_map(|(classification, permissions, prohibitions)| Policy {
                    classification,
                    permissions,
                    prohibitions: prohibitions
                        .into_iter()
                        .filter(|a| !a.is_empty())
                        .map(|actions| Prohibition { actions })
                        .collect(),
                    obligations: vec![],
                })
        }

        proptest! {
            /// Evaluation is deterministic, never permits a prohibited
            /// action or core data, and a permit grants exactly what was
            /// asked, within the permission's limits.
            #[test]
            fn deterministic_and_never_permits_a_prohibition(
                p in policy(),
                wanted in actions(),
                purpose in proptest::sample::select(PURPOSES.to_vec()),
                region in proptest::option::of(proptest::sample::select(REGIONS.to_vec())),
                role in proptest::sample::select(vec!["consumer", "auditor", "publisher"]),
                now in 0i64..2_000_000_000,
            ) {
                let who = who(role, region, "acme");
                let now = OffsetDateTime::from_unix_timestamp(now).expect("now");
                let r = AccessRequest { actions: wanted.clone(), purpose: purpose.into(), duration: None };
                let first = evaluate(&p, &r, &who, now);
                prop_assert_eq!(&first, &evaluate(&p, &r, &who, now));
                match first {
                    Decision::Permit(t) => {
                        prop_assert!(p.classification != Classification::Core);
                        prop_assert_eq!(&t.actions, &wanted);
                        for a in &t.actions {
                            prop_assert!(!p.prohibitions.iter().any(|x| x.actions.contains(a)));
                        }
                        let perm = &p.permissions[t.permission];
                        prop_assert!(wanted.is_subset(&perm.actions));
                        prop_assert!(t.not_after > t.not_before);
                        prop_assert!(perm.not_after.is_none_or(|na| t.not_after <= na));
                        prop_assert!(could_ever_grant(&p, &who, now));
                    }
                    Decision::Deny(reasons) => prop_assert!(!reasons.is_empty()),
                }
            }
        }
    }
}
