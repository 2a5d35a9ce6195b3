//! A dataset's provenance as a graph (the auditor console's provenance
//! view): its publication and versions, the datasets it derives from and
//! those derived from it, and through each grant the transfers, receipts
//! and revocation, drawn from every audited ledger. Each edge says which
//! ledgers record it; it is *proven* only when every ledger that must
//! record it does, each entry proven in that ledger's verified checkpoint.
//!
//! [`gather`] reads the ledgers and catalogs through [`Auditor`] (so only
//! proven entries and verified manifests reach [`Graph::build`]);
//! [`Graph::build`] is a pure function of what was read, tested alone.

use std::collections::BTreeMap;

use crate::audit::{AuditError, Auditor};
use crate::identity::NodeId;
use crate::ledger::Query;
use crate::ledger::entry::{Entry, EntryKind};

/// The entries of one audited ledger about a dataset, each proven in the
/// ledger's verified checkpoint of `checkpoint_size`.
#[derive(Clone, Debug)]
pub struct LedgerView {
    /// The node whose ledger it is.
    pub node: NodeId,
    /// Its participant (from its certificate).
    pub participant: String,
    /// The checkpoint every entry was proven in.
    pub checkpoint_size: u64,
    /// The proven entries.
    pub entries: Vec<Entry>,
}

/// What a verified manifest says about a dataset's place in its lineage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatasetFacts {
    /// Its id.
    pub id: String,
    /// Its title (the publisher's text: escape it before showing it).
    pub title: String,
    /// Its version (1 for a first version).
    pub version: u64,
    /// The first version of its lineage (itself for a first version).
    pub lineage: String,
    /// The version it replaces.
    pub supersedes: Option<String>,
    /// The datasets it derives from, each with the grant allowing it
    /// (empty: the publisher's own).
    pub derived_from: Vec<(String, String)>,
    /// Its publisher.
    pub publisher: NodeId,
}

/// A box in the graph.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum NodeKind {
    /// A dataset (the one asked about, a version of it, a source or a
    /// derivative).
    Dataset,
    /// A grant.
    Grant,
    /// A refused request.
    Denied,
    /// A transfer.
    Transfer,
    /// A receipt.
    Receipt,
    /// A revocation.
    Revoked,
}

/// A box: something that happened or exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraphNode {
    /// A stable id (`dataset:ID`, `grant:ID`, `transfer:GRANT:N`, …).
    pub id: String,
    /// What it is.
    pub kind: NodeKind,
    /// The dataset or grant id it stands for, or the consumer's
    /// participant.
    pub subject: String,
    /// A short line under the kind: a title, a purpose, a party.
    pub detail: String,
    /// When, if an entry dates it (ms since the Unix epoch).
    pub time_ms: Option<i64>,
    /// Column (0: sources; 1: the dataset and its versions; 2: grants,
    /// their revocations and refusals; 3: transfers; 4: receipts; 5:
    /// derivatives) and row, for drawing.
    pub column: usize,
    /// Row within the column.
    pub row: usize,
}

/// How an edge stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Every ledger that must record it does, each entry proven.
    Proven,
    /// Some ledgers record it, not all that must (the other node was not
    /// audited, or its ledger lacks the entry).
    OneSide,
    /// Only a signed manifest claims it; no audited ledger records it.
    Claimed,
}

/// One ledger entry that records an edge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The node whose ledger holds it.
    pub node: NodeId,
    /// Its participant.
    pub participant: String,
    /// Its index there.
    pub index: u64,
    /// Its kind.
    pub kind: EntryKind,
}

/// An arrow between two boxes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraphEdge {
    /// From (a [`GraphNode::id`]).
    pub from: String,
    /// To.
    pub to: String,
    /// What it means: `version`, `derived`, `granted`, `denied`,
    /// `transfer`, `receipt`, `revoked`.
    pub relation: &'static str,
    /// The entries that record it.
    pub records: Vec<Record>,
    /// How many ledgers must record it.
    pub expected: usize,
    /// Proven, one side only, or claimed.
    pub standing: Standing,
}

/// A dataset's provenance graph.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Graph {
    /// The boxes, in drawing order.
    pub nodes: Vec<GraphNode>,
    /// The arrows.
    pub edges: Vec<GraphEdge>,
}

/// The entries of `kind` passing `test` that sit in the ledger of the
/// node they name at `role` in their parties (0: the publisher, 1: the
/// consumer): an entry about an exchange counts only in the ledger of the
/// party that had to write it, never in a third node's.
fn find(
    ledgers: &[LedgerView],
    kind: EntryKind,
    role: usize,
    test: impl Fn(&Entry) -> bool,
) -> Vec<(&LedgerView, &Entry)> {
    ledgers
        .iter()
        .flat_map(|l| l.entries.iter().map(move |e| (l, e)))
        .filter(|(l, e)| {
            e.draft.kind == kind && e.draft.parties.get(role) == Some(&l.node) && test(e)
        })
        .collect()
}

fn record((l, e): (&LedgerView, &Entry)) -> Record {
    Record {
        node: l.node.clone(),
        participant: l.participant.clone(),
        index: e.index,
        kind: e.draft.kind,
    }
}

struct Builder<'a> {
    graph: Graph,
    rows: [usize; 6],
    ledgers: &'a [LedgerView],
}

impl Builder<'_> {
    fn node(&mut self, id: String, kind: NodeKind, column: usize, subject: &str, detail: &str) {
        if self.graph.nodes.iter().any(|n| n.id == id) {
            return;
        }
        let row = self.rows[column];
        self.rows[column] += 1;
        self.graph.nodes.push(GraphNode {
            id,
            kind,
            subject: subject.to_owned(),
            detail: detail.to_owned(),
            time_ms: None,
            column,
            row,
        });
    }

    fn dated(&mut self, id: &str, time_ms: i64) {
        if let Some(n) = self.graph.nodes.iter_mut().find(|n| n.id == id) {
            n.time_ms = Some(n.time_ms.map_or(time_ms, |t| t.min(time_ms)));
        }
    }

    fn edge(
        &mut self,
        (from, to): (String, String),
        relation: &'static str,
        records: Vec<Record>,
        expected: usize,
    ) {
        let ledgers: std::collections::BTreeSet<&NodeId> =
            records.iter().map(|r| &r.node).collect();
        let standing = if records.is_empty() {
            Standing::Claimed
        } else if ledgers.len() >= expected {
            Standing::Proven
        } else {
            Standing::OneSide
        };
        self.graph.edges.push(GraphEdge {
            from,
            to,
            relation,
            records,
            expected,
            standing,
        });
    }

    fn participant_of(&self, node: &NodeId) -> String {
        self.ledgers
            .iter()
            .find(|l| &l.node == node)
            .map_or_else(|| node.to_string(), |l| l.participant.clone())
    }

    /// The publication of `dataset`, in its publisher's own ledger.
    fn published(&self, dataset: &str, publisher: Option<&NodeId>) -> Vec<Record> {
        find(self.ledgers, EntryKind::DatasetPublished, 0, |e| {
            e.draft.dataset.as_deref() == Some(dataset)
                && publisher.is_none_or(|p| e.draft.parties.first() == Some(p))
        })
        .into_iter()
        .map(record)
        .collect()
    }
}

fn dataset_node(id: &str) -> String {
    format!("dataset:{id}")
}

fn title_of(facts: &BTreeMap<String, DatasetFacts>, id: &str) -> String {
    facts
        .get(id)
        .map_or_else(String::new, |f| format!("v{} {}", f.version, f.title))
}

impl Graph {
    /// The graph of `dataset` from what the ledgers and manifests say.
    pub fn build(
        dataset: &str,
        ledgers: &[LedgerView],
        facts: &BTreeMap<String, DatasetFacts>,
    ) -> Graph {
        let mut b = Builder {
            graph: Graph::default(),
            rows: [0; 6],
            ledgers,
        };
        let this = facts.get(dataset);
        // Earlier versions above it, later ones below, in column 1.
        let lineage = this.map_or(dataset, |f| f.lineage.as_str());
        // A version is a manifest of the same lineage signed by the same
        // publisher: no other node can add versions to another's dataset.
        let publisher = this.map(|f| &f.publisher);
        let mut versions: Vec<&DatasetFacts> = facts
            .values()
            .filter(|f| f.lineage == lineage && publisher.is_none_or(|p| &f.publisher == p))
            .collect();
        versions.sort_by_key(|f| f.version);
        // A version some manifest supersedes, though no catalog lists it.
        for f in &versions {
            if let Some(prev) = &f.supersedes
                && !versions.iter().any(|v| &v.id == prev)
            {
                b.node(
                    dataset_node(prev),
                    NodeKind::Dataset,
                    1,
                    prev,
                    &title_of(facts, prev),
                );
            }
        }
        if !versions.iter().any(|f| f.id == dataset) {
            b.node(
                dataset_node(dataset),
                NodeKind::Dataset,
                1,
                dataset,
                &title_of(facts, dataset),
            );
        }
        for f in &versions {
            b.node(
                dataset_node(&f.id),
                NodeKind::Dataset,
                1,
                &f.id,
                &title_of(facts, &f.id),
            );
        }
        for f in &versions {
            if let Some(prev) = &f.supersedes {
                let records = b.published(&f.id, Some(&f.publisher));
                b.edge(
                    (dataset_node(prev), dataset_node(&f.id)),
                    "version",
                    records,
                    1,
                );
            }
        }
        // Its sources (column 0) and derivatives (column 5).
        let mut derivations: Vec<(String, String, String)> = Vec::new();
        if let Some(f) = this {
            for (source, grant) in &f.derived_from {
                b.node(
                    dataset_node(source),
                    NodeKind::Dataset,
                    0,
                    source,
                    &title_of(facts, source),
                );
                derivations.push((source.clone(), grant.clone(), f.id.clone()));
            }
        }
        for f in facts.values() {
            for (source, grant) in &f.derived_from {
                if source == dataset {
                    b.node(
                        dataset_node(&f.id),
                        NodeKind::Dataset,
                        5,
                        &f.id,
                        &title_of(facts, &f.id),
                    );
                    derivations.push((source.clone(), grant.clone(), f.id.clone()));
                }
            }
        }
        for (source, grant, derived) in derivations {
            // The derived dataset's publication, and the grant that
            // allowed it, where one is named: a grant of the source to the
            // derived dataset's publisher.
            let derived_by = facts.get(&derived).map(|f| &f.publisher);
            let mut records = b.published(&derived, derived_by);
            let mut expected = 1;
            if !grant.is_empty() {
                expected = 2;
                records.extend(
                    find(ledgers, EntryKind::AccessGranted, 0, |e| {
                        e.draft.grant.as_deref() == Some(grant.as_str())
                            && e.draft.dataset.as_deref() == Some(source.as_str())
                            && derived_by.is_none_or(|d| e.draft.parties.get(1) == Some(d))
                    })
                    .into_iter()
                    .map(record),
                );
            }
            b.edge(
                (dataset_node(&source), dataset_node(&derived)),
                "derived",
                records,
                expected,
            );
        }
        let here = dataset_node(dataset);
        let about = |e: &Entry| e.draft.dataset.as_deref() == Some(dataset);
        for (_, e) in find(ledgers, EntryKind::DatasetPublished, 0, about) {
            b.dated(&here, e.time_ms);
        }

        // Grants, from the publisher's AccessGranted and the consumer's
        // GrantReceived.
        let mut grants: Vec<String> = Vec::new();
        for (kind, role) in [(EntryKind::AccessGranted, 0), (EntryKind::GrantReceived, 1)] {
            for (_, e) in find(ledgers, kind, role, about) {
                if let Some(g) = &e.draft.grant
                    && !grants.contains(g)
                {
                    grants.push(g.clone());
                }
            }
        }
        for g in &grants {
            let of_grant = |e: &Entry| e.draft.grant.as_deref() == Some(g.as_str());
            let granted = find(ledgers, EntryKind::AccessGranted, 0, of_grant);
            // The consumer's record counts only if it holds the same signed
            // grant the publisher recorded.
            let granted_hash = granted.first().and_then(|(_, e)| e.draft.object_hash);
            let received: Vec<_> = find(ledgers, EntryKind::GrantReceived, 1, of_grant)
                .into_iter()
                .filter(|(_, e)| granted.is_empty() || e.draft.object_hash == granted_hash)
                .collect();
            // Parties: the publisher, then the consumer.
            let consumer_name = granted
                .first()
                .or(received.first())
                .and_then(|(_, e)| e.draft.parties.get(1))
                .map_or_else(String::new, |c| b.participant_of(c));
            let purpose = granted
                .first()
                .or(received.first())
                .map_or_else(String::new, |(_, e)| e.draft.detail.clone());
            let node = format!("grant:{g}");
            b.node(
                node.clone(),
                NodeKind::Grant,
                2,
                g,
                &format!("{consumer_name}: {purpose}"),
            );
            for (_, e) in granted.iter().chain(&received) {
                b.dated(&node, e.time_ms);
            }
            let records = granted
                .iter()
                .chain(&received)
                .map(|r| record(*r))
                .collect();
            b.edge((here.clone(), node.clone()), "granted", records, 2);

            // Transfers: the publisher's TransferStarted, named by its
            // index on both sides.
            let started = find(ledgers, EntryKind::TransferStarted, 0, of_grant);
            for (pl, s) in &started {
                let t = s.index;
                let tnode = format!("transfer:{g}:{t}");
                b.node(
                    tnode.clone(),
                    NodeKind::Transfer,
                    3,
                    g,
                    &format!("{} #{t}", pl.participant),
                );
                b.dated(&tnode, s.time_ms);
                let completed = find(ledgers, EntryKind::TransferCompleted, 1, |e| {
                    of_grant(e) && e.draft.transfer == Some(t)
                });
                let records = std::iter::once((*pl, *s))
                    .chain(completed.iter().copied())
                    .map(record)
                    .collect();
                b.edge((node.clone(), tnode.clone()), "transfer", records, 2);
                let of_transfer = |e: &Entry| of_grant(e) && e.draft.transfer == Some(t);
                let receipts: Vec<_> = find(ledgers, EntryKind::ReceiptRecorded, 0, of_transfer)
                    .into_iter()
                    .chain(find(ledgers, EntryKind::ReceiptRecorded, 1, of_transfer))
                    .collect();
                if !receipts.is_empty() {
                    let rnode = format!("receipt:{g}:{t}");
                    b.node(rnode.clone(), NodeKind::Receipt, 4, g, &consumer_name);
                    for (_, e) in &receipts {
                        b.dated(&rnode, e.time_ms);
                    }
                    // Both sides must hold the same receipt.
                    let hash = receipts[0].1.draft.object_hash;
                    let same: Vec<Record> = receipts
                        .iter()
                        .filter(|(_, e)| e.draft.object_hash == hash)
                        .map(|r| record(*r))
                        .collect();
                    b.edge((tnode, rnode), "receipt", same, 2);
                }
            }
            let revoked = find(ledgers, EntryKind::GrantRevoked, 0, of_grant);
            if let Some((_, e)) = revoked.first() {
                let vnode = format!("revoked:{g}");
                // Under its grant, in the grant's column.
                b.node(vnode.clone(), NodeKind::Revoked, 2, g, &e.draft.detail);
                b.dated(&vnode, e.time_ms);
                let records = revoked.iter().map(|r| record(*r)).collect();
                b.edge((node, vnode), "revoked", records, 1);
            }
        }
        // Refused requests: the publisher's AccessDenied (no grant).
        for (l, e) in find(ledgers, EntryKind::AccessDenied, 0, about) {
            if e.draft.grant.is_some() {
                continue;
            }
            let who = e
                .draft
                .parties
                .get(1)
                .map_or_else(String::new, |p| b.participant_of(p));
            let node = format!("denied:{}:{}", l.node, e.index);
            b.node(node.clone(), NodeKind::Denied, 2, &who, &e.draft.detail);
            b.dated(&node, e.time_ms);
            b.edge((here.clone(), node), "denied", vec![record((l, e))], 1);
        }
        b.graph
    }
}

/// The datasets whose publication the graph of `dataset` shows besides
/// its own (its other versions, its sources and its derivatives), and the
/// grants its derivations name.
pub fn related(
    dataset: &str,
    facts: &BTreeMap<String, DatasetFacts>,
) -> (Vec<String>, Vec<String>) {
    let lineage = facts.get(dataset).map_or(dataset, |f| f.lineage.as_str());
    let mut datasets = Vec::new();
    let mut grants = Vec::new();
    for f in facts.values() {
        let derives = f
            .derived_from
            .iter()
            .filter(|(s, _)| s == dataset || f.id == dataset);
        let mut any = false;
        for (source, grant) in derives {
            any = true;
            if source != dataset {
                datasets.push(source.clone());
            }
            if !grant.is_empty() {
                grants.push(grant.clone());
            }
        }
        if f.id != dataset && (any || f.lineage == lineage) {
            datasets.push(f.id.clone());
        }
    }
    datasets.sort();
    datasets.dedup();
    grants.sort();
    grants.dedup();
    (datasets, grants)
}

/// The proven entries about `dataset` in the ledger `a` audits, with the
/// publications of the `related` datasets and the grants of `grants`
/// (from [`related`]).
pub async fn ledger_view(
    a: &mut Auditor,
    dataset: &str,
    (related, grants): &(Vec<String>, Vec<String>),
) -> Result<LedgerView, AuditError> {
    let (cp, entries) = a
        .entries(
            Query {
                dataset: Some(dataset.to_owned()),
                ..Query::default()
            },
            true,
        )
        .await?;
    let mut entries: Vec<Entry> = entries.into_iter().map(|v| v.entry).collect();
    let queries = related
        .iter()
        .map(|d| Query {
            dataset: Some(d.clone()),
            kind: Some(EntryKind::DatasetPublished),
            ..Query::default()
        })
        .chain(grants.iter().map(|g| Query {
            grant: Some(g.clone()),
            kind: Some(EntryKind::AccessGranted),
            ..Query::default()
        }));
    for q in queries {
        let more = crate::peer::EntryQuery {
            filter: q,
            tree_size: cp.checkpoint.size,
            ..Default::default()
        };
        let (_, found) = a.entries(more, true).await?;
        entries.extend(found.into_iter().map(|v| v.entry));
    }
    entries.sort_by_key(|e| e.index);
    entries.dedup_by_key(|e| e.index);
    Ok(LedgerView {
        node: a.node().node_id.clone(),
        participant: a.node().participant.to_string(),
        checkpoint_size: cp.checkpoint.size,
        entries,
    })
}

/// The node's own publications in its ledger: dataset id → the index of
/// its `DatasetPublished` entry.
async fn publications(a: &mut Auditor) -> Result<BTreeMap<String, u64>, AuditError> {
    let me = a.node().node_id.clone();
    let (_, entries) = a
        .entries(
            Query {
                kind: Some(EntryKind::DatasetPublished),
                ..Query::default()
            },
            true,
        )
        .await?;
    Ok(entries
        .into_iter()
        .filter(|v| v.entry.draft.parties.first() == Some(&me))
        .filter_map(|v| Some((v.entry.draft.dataset.clone()?, v.entry.index)))
        .collect())
}

/// What the manifest of `dataset` says, read from the node `a` (its
/// publisher) through the evidence of one of its grants: a catalog lists
/// only current versions, but every grant keeps the manifest it names.
/// Verified under the node's proven key history.
pub async fn facts_by_grant(
    a: &mut Auditor,
    dataset: &str,
    grant: &str,
) -> Result<Option<DatasetFacts>, AuditError> {
    let keys = a.keys().await?.clone();
    let evidence = a.evidence(grant).await?;
    if evidence.manifest.is_empty() {
        return Ok(None);
    }
    let envelope = crate::envelope::Envelope::from_json(&evidence.manifest)
        .map_err(|e| AuditError::Mismatch(format!("the manifest of grant {grant}: {e}")))?;
    let ((id, m), _) = keys
        .verify_any(|k| crate::dataset::verify_manifest(envelope.clone(), k))
        .map_err(|e| AuditError::Mismatch(format!("the manifest of grant {grant}: {e}")))?;
    if id.as_str() != dataset {
        return Ok(None);
    }
    let published = publications(a).await?;
    let at = published.get(dataset).ok_or_else(|| {
        AuditError::Mismatch(format!(
            "no publication of {dataset} in the ledger of its grantor"
        ))
    })?;
    keys.honours(m.signer(), &format!("manifest {id}"), *at)?;
    if m.value().publisher != a.node().node_id {
        return Err(AuditError::Mismatch(format!(
            "the manifest of {id} names publisher {}, not the node that granted it",
            m.value().publisher
        )));
    }
    Ok(Some(facts_of(&id, m.value())))
}

fn facts_of(id: &crate::dataset::DatasetId, m: &crate::dataset::Manifest) -> DatasetFacts {
    DatasetFacts {
        id: id.to_string(),
        title: m.title.clone(),
        version: m.version,
        lineage: m
            .lineage
            .as_ref()
            .map_or_else(|| id.to_string(), ToString::to_string),
        supersedes: m.supersedes.as_ref().map(ToString::to_string),
        derived_from: m
            .derived_from
            .iter()
            .map(|d| (d.dataset.to_string(), d.grant.clone()))
            .collect(),
        publisher: m.publisher.clone(),
    }
}

/// What the verified manifests in `a`'s catalog say, by dataset id. Every
/// manifest is verified under the node's proven key history, and must name
/// that node as its publisher.
pub async fn catalog_facts(a: &mut Auditor) -> Result<Vec<DatasetFacts>, AuditError> {
    let keys = a.keys().await?.clone();
    let node = a.node().node_id.clone();
    let rows = crate::dataset::read_catalog(a.peer(), &keys, Default::default()).await?;
    let published = publications(a).await?;
    let mut out = Vec::with_capacity(rows.len());
    for (id, verified) in rows {
        // Signed by a key the node had not retired when it recorded the
        // publication (a retired key may since have leaked).
        let at = published.get(id.as_str()).ok_or_else(|| {
            AuditError::Mismatch(format!(
                "the catalog of {node} lists {id}, but its ledger records no such publication"
            ))
        })?;
        keys.honours(verified.signer(), &format!("manifest {id}"), *at)?;
        let m = verified.value();
        if m.publisher != node {
            return Err(AuditError::Mismatch(format!(
                "the catalog of {node} lists {id}, published by {}",
                m.publisher
            )));
        }
        out.push(facts_of(&id, m));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::entry::EntryDraft;

    fn id(seed: u8) -> NodeId {
        NodeId::from_public_key(&[seed; 32])
    }

    fn entry(
        index: u64,
        kind: EntryKind,
        grant: Option<&str>,
        set: impl Fn(&mut EntryDraft),
    ) -> Entry {
        let mut d = EntryDraft::new(kind);
        d.dataset = Some("ds_a".into());
        d.grant = grant.map(Into::into);
        d.parties = vec![id(1), id(2)];
        set(&mut d);
        Entry::new(index, 1_764_000_000_000 + index as i64, d)
    }

    fn ledgers() -> Vec<LedgerView> {
        let g = Some("gr_1");
        let publisher = vec![
            entry(1, EntryKind::DatasetPublished, None, |d| {
                d.parties = vec![id(1)]
            }),
            entry(2, EntryKind::AccessGranted, g, |d| {
                d.detail = "purpose research".into()
            }),
            entry(3, EntryKind::TransferStarted, g, |_| {}),
            entry(4, EntryKind::ReceiptRecorded, g, |d| {
                d.transfer = Some(3);
                d.object_hash = Some([9; 32]);
            }),
            entry(5, EntryKind::AccessDenied, None, |d| {
                d.parties = vec![id(1), id(3)];
                d.detail = "purpose marketing: refused".into();
            }),
            entry(6, EntryKind::GrantRevoked, g, |_| {}),
        ];
        let consumer = vec![
            entry(1, EntryKind::GrantReceived, g, |_| {}),
            entry(2, EntryKind::TransferCompleted, g, |d| d.transfer = Some(3)),
            entry(3, EntryKind::ReceiptRecorded, g, |d| {
                d.transfer = Some(3);
                d.object_hash = Some([9; 32]);
            }),
        ];
        vec![
            LedgerView {
                node: id(1),
                participant: "bureau".into(),
                checkpoint_size: 7,
                entries: publisher,
            },
            LedgerView {
                node: id(2),
                participant: "acme".into(),
                checkpoint_size: 4,
                entries: consumer,
            },
        ]
    }

    fn facts() -> BTreeMap<String, DatasetFacts> {
        let f = |i: &str, v, sup: Option<&str>, from: Vec<(String, String)>| DatasetFacts {
            id: i.into(),
            title: format!("title {i}"),
            version: v,
            lineage: if from.is_empty() {
                "ds_a".into()
            } else {
                i.into()
            },
            supersedes: sup.map(Into::into),
            derived_from: from,
            publisher: id(1),
        };
        [
            f("ds_a", 1, None, vec![]),
            f("ds_b", 2, Some("ds_a"), vec![]),
            f("ds_d", 1, None, vec![("ds_a".into(), "gr_1".into())]),
        ]
        .into_iter()
        .map(|mut f| {
            // The derived dataset is the consumer's, under its grant.
            if f.id == "ds_d" {
                f.publisher = id(2);
            }
            (f.id.clone(), f)
        })
        .collect()
    }

    fn edge<'a>(g: &'a Graph, from: &str, to: &str) -> &'a GraphEdge {
        g.edges
            .iter()
            .find(|e| e.from == from && e.to == to)
            .unwrap_or_else(|| panic!("no edge {from} -> {to} in {:#?}", g.edges))
    }

    #[test]
    fn both_ledgers_prove_the_grant_transfer_and_receipt() {
        let g = Graph::build("ds_a", &ledgers(), &facts());
        let granted = edge(&g, "dataset:ds_a", "grant:gr_1");
        assert_eq!(granted.standing, Standing::Proven);
        assert_eq!(granted.records.len(), 2);
        assert_eq!(
            edge(&g, "grant:gr_1", "transfer:gr_1:3").standing,
            Standing::Proven
        );
        let receipt = edge(&g, "transfer:gr_1:3", "receipt:gr_1:3");
        assert_eq!(receipt.standing, Standing::Proven);
        assert_eq!(
            receipt
                .records
                .iter()
                .map(|r| (r.participant.as_str(), r.index))
                .collect::<Vec<_>>(),
            [("bureau", 4), ("acme", 3)]
        );
        assert_eq!(
            edge(&g, "grant:gr_1", "revoked:gr_1").standing,
            Standing::Proven
        );
        let denied = edge(&g, "dataset:ds_a", &format!("denied:{}:5", id(1)));
        assert_eq!(denied.standing, Standing::Proven);
        // Versions and derivations from the signed manifests.
        assert_eq!(edge(&g, "dataset:ds_a", "dataset:ds_b").relation, "version");
        let derived = edge(&g, "dataset:ds_a", "dataset:ds_d");
        // The derived dataset's publication is in no audited ledger: only
        // the grant that allowed it is.
        assert_eq!(derived.standing, Standing::OneSide);
        let grant = g
            .nodes
            .iter()
            .find(|n| n.id == "grant:gr_1")
            .expect("grant");
        assert_eq!(grant.detail, "acme: purpose research");
        assert_eq!(grant.column, 2);
    }

    #[test]
    fn an_edge_one_ledger_lacks_is_not_proven() {
        let mut l = ledgers();
        // The consumer's ledger lost its receipt (or was never audited).
        l[1].entries
            .retain(|e| e.draft.kind != EntryKind::ReceiptRecorded);
        let g = Graph::build("ds_a", &l, &facts());
        assert_eq!(
            edge(&g, "transfer:gr_1:3", "receipt:gr_1:3").standing,
            Standing::OneSide
        );
        // A receipt the two sides hold different hashes of is one-sided too.
        let mut l = ledgers();
        if let Some(e) = l[1]
            .entries
            .iter_mut()
            .find(|e| e.draft.kind == EntryKind::ReceiptRecorded)
        {
            e.draft.object_hash = Some([8; 32]);
        }
        let g = Graph::build("ds_a", &l, &facts());
        assert_eq!(
            edge(&g, "transfer:gr_1:3", "receipt:gr_1:3").standing,
            Standing::OneSide
        );
        // Only the consumer audited: the grant is one-sided.
        let g = Graph::build("ds_a", &ledgers()[1..], &facts());
        assert_eq!(
            edge(&g, "dataset:ds_a", "grant:gr_1").standing,
            Standing::OneSide
        );
        // No ledger at all: the manifest's version link is only claimed.
        let g = Graph::build("ds_a", &[], &facts());
        assert_eq!(
            edge(&g, "dataset:ds_a", "dataset:ds_b").standing,
            Standing::Claimed
        );
    }

    #[test]
    fn only_the_parties_own_ledgers_count() {
        // A third node that copies the exchange's entries into its own
        // ledger proves nothing about it.
        let mut third = ledgers()[0].clone();
        third.node = id(3);
        third.participant = "bystander".into();
        let mut copy = ledgers()[1].clone();
        copy.node = id(3);
        copy.participant = "bystander".into();
        let g = Graph::build("ds_a", &[third, copy], &facts());
        assert!(
            g.edges.iter().all(|e| e.records.is_empty()),
            "{:#?}",
            g.edges
        );
        // The consumer's GrantReceived of another signed grant (another
        // hash) does not prove the grant the publisher recorded.
        let mut l = ledgers();
        for e in &mut l[0].entries {
            if e.draft.kind == EntryKind::AccessGranted {
                e.draft.object_hash = Some([1; 32]);
            }
        }
        let g = Graph::build("ds_a", &l, &facts());
        assert_eq!(
            edge(&g, "dataset:ds_a", "grant:gr_1").standing,
            Standing::OneSide
        );
        // A manifest of another publisher in the same lineage is no version.
        let mut f = facts();
        if let Some(b) = f.get_mut("ds_b") {
            b.publisher = id(3);
        }
        let g = Graph::build("ds_a", &ledgers(), &f);
        assert!(
            !g.edges.iter().any(|e| e.relation == "version"),
            "{:#?}",
            g.edges
        );
    }

    #[test]
    fn boxes_get_distinct_places() {
        let g = Graph::build("ds_a", &ledgers(), &facts());
        let mut places: Vec<(usize, usize)> = g.nodes.iter().map(|n| (n.column, n.row)).collect();
        let n = places.len();
        places.sort_unstable();
        places.dedup();
        assert_eq!(places.len(), n, "two boxes in one place: {:#?}", g.nodes);
        for e in &g.edges {
            assert!(g.nodes.iter().any(|n| n.id == e.from), "{e:?}");
            assert!(g.nodes.iter().any(|n| n.id == e.to), "{e:?}");
        }
    }
}
