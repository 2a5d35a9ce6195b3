//! Policy evaluation speed (criterion): the decision function runs on
//! every access request, so it must cost microseconds at most. Target:
//! ≥ 1,000,000 decisions/s on one core.

use std::collections::BTreeSet;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dsnode::identity::{NodeId, PeerIdentity, RoleSet};
use dsnode::policy::eval::{AccessRequest, evaluate};
use dsnode::policy::{Action, Policy};

const POLICY: &str = r#"classification = "general"

[[permission]]
actions = ["read"]
purpose = ["statistics"]
roles = ["auditor"]

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

fn bench(c: &mut Criterion) {
    let policy = Policy::from_toml(POLICY).expect("policy");
    let who = PeerIdentity {
        node_id: NodeId::from_public_key(&[1; 32]),
        public_key: [1; 32],
        participant: "acme".parse().expect("participant"),
        roles: RoleSet::parse_list("consumer").expect("roles"),
        region: Some("CN-HE".parse().expect("region")),
        serial: vec![1],
        not_after: 0,
    };
    let now = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time");
    let permit = AccessRequest {
        actions: BTreeSet::from([Action::Read, Action::Derive]),
        purpose: "route-planning".into(),
        duration: None,
    };
    let deny = AccessRequest {
        purpose: "marketing".into(),
        ..permit.clone()
    };
    let mut group = c.benchmark_group("policy");
    group.throughput(Throughput::Elements(1));
    group.bench_function("evaluate/permit", |b| {
        b.iter(|| evaluate(black_box(&policy), black_box(&permit), black_box(&who), now))
    });
    group.bench_function("evaluate/deny with reasons", |b| {
        b.iter(|| evaluate(black_box(&policy), black_box(&deny), black_box(&who), now))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
