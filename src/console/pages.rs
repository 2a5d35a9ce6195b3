//! The console's pages, in maud: every value from a node, a manifest or an
//! upload goes through maud's escaping (`(value)`); nothing here uses
//! `PreEscaped` on outside text.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use maud::{DOCTYPE, Markup, html};

use super::lang::Lang;
use super::svg;
use crate::audit::VerifiedEntry;
use crate::audit::provenance::{DatasetFacts, Graph};
use crate::audit::reconcile::{InForce, Reconciled};
use crate::audit::space::NodeSurvey;
use crate::exchange::grant::{Grant, time_text};
use crate::exchange::receipt::Receipt;
use crate::identity::PeerIdentity;
use crate::ledger::entry::EntryKind;
use crate::ledger::note::SignedCheckpoint;

/// Most boxes the provenance graph draws; past it, only its table.
const MAX_GRAPH_BOXES: usize = 400;

/// The console's icon: a small ledger mark.
pub(super) const FAVICON: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect x="2" y="1" width="12" height="14" rx="2" fill="#1d4e89"/><path d="M5 5h6M5 8h6M5 11h4" stroke="#fff" stroke-width="1.5"/></svg>"##;

fn page(l: Lang, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang=(l.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · " (l.t("dsnode auditor console", "dsnode 审计控制台")) }
                link rel="stylesheet" href="/console.css";
                link rel="icon" href="/favicon.ico" type="image/svg+xml";
            }
            body {
                header {
                    a.brand href="/" { (l.t("dsnode auditor console", "dsnode 审计控制台")) }
                    nav {
                        a href="/" { (l.t("Data space", "数据空间")) }
                        a href="/who-could" { (l.t("Who could", "谁有权使用")) }
                        a href="/verify" { (l.t("Verify a bundle", "核验证据包")) }
                    }
                    span.langs {
                        a href="?lang=en" lang="en" { "English" }
                        a href="?lang=zh" lang="zh-CN" { "中文" }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
                footer {
                    (l.t(
                        "Everything marked ✓ was verified by this console itself: signatures against each node's certificate key and key history, entries by inclusion proofs in signed checkpoints, logs by consistency proofs. Nothing is taken on a node's word. The console changes nothing on any node.",
                        "标记 ✓ 的内容均由本控制台自行核验：签名依据各节点证书中的密钥及其密钥历史，账本条目依据已签名检查点中的包含证明，日志依据一致性证明。不采信任何节点的一面之词。本控制台不会修改任何节点。"
                    ))
                }
            }
        }
    }
}

fn respond(status: StatusCode, markup: Markup) -> Response {
    let mut r = markup.into_response();
    *r.status_mut() = status;
    r
}

fn ok(l: Lang, what: &str) -> Markup {
    html! { span.ok data-verified="true" { "✓ " (what) } span.sr { (l.t(" (verified)", "（已核验）")) } }
}

fn bad(l: Lang, why: &str) -> Markup {
    html! { span.bad data-verified="false" { "✗ " (l.t("NOT verified", "未通过核验")) ": " (why) } }
}

fn short(s: &str, n: usize) -> String {
    svg::clip(s, n)
}

fn hex(h: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(h)
}

/// A page saying why a request was refused.
pub(super) fn refused(l: Lang, status: StatusCode, why: &str) -> Response {
    respond(
        status,
        page(
            l,
            l.t("Not shown", "无法显示"),
            html! { p.bad { (why) } p { a href="/" { (l.t("Back to the data space", "返回数据空间")) } } },
        ),
    )
}

fn node_name(i: Option<&PeerIdentity>, addr: &str) -> Markup {
    match i {
        Some(i) => html! {
            a href=(format!("/ledger/{}", i.node_id)) { (i.participant.to_string()) }
            br; code.id { (i.node_id.to_string()) }
        },
        None => html! { (addr) },
    }
}

fn participant_of(known: &[PeerIdentity], id: &crate::identity::NodeId) -> String {
    known
        .iter()
        .find(|k| &k.node_id == id)
        .map_or_else(|| id.to_string(), |k| k.participant.to_string())
}

/// The data space page's content.
pub(super) struct SpaceView {
    /// Each node: its address, identity if reached, and its survey.
    pub nodes: Vec<(String, Option<PeerIdentity>, Result<NodeSurvey, String>)>,
    /// Each pair reconciled (indices into `nodes`).
    pub pairs: Vec<(usize, usize, Result<Reconciled, String>)>,
    /// The datasets in the nodes' catalogs, each verified.
    pub datasets: Vec<DatasetFacts>,
    /// Catalogs that could not be read or did not verify.
    pub catalog_errors: Vec<String>,
}

/// The data space: nodes, checkpoints, witnesses, forks, reconciliation.
pub(super) fn space(l: Lang, v: &SpaceView) -> Response {
    let known: Vec<PeerIdentity> = v.nodes.iter().filter_map(|(_, i, _)| i.clone()).collect();
    let body = html! {
        p.lead { (l.t(
            "Each node the console audits, as its own signed checkpoint and its witnesses show it; then, for each pair, whether both ledgers tell the same story.",
            "本控制台审计的每个节点：其签名检查点与见证情况；以及每对节点的账本是否一致。"
        )) }
        table #nodes {
            thead { tr {
                th { (l.t("Node", "节点")) }
                th { (l.t("Roles", "角色")) }
                th { (l.t("Region", "地区")) }
                th { (l.t("Latest checkpoint", "最新检查点")) }
                th { (l.t("Witnessed by", "见证方")) }
                th { (l.t("Forks found", "发现的分叉")) }
            } }
            tbody {
                @for (addr, identity, survey) in &v.nodes {
                    tr.node-row data-node=(identity.as_ref().map(|i| i.node_id.to_string()).unwrap_or_default()) {
                        td { (node_name(identity.as_ref(), addr)) br; small { (addr) } }
                        td { @if let Some(i) = identity { (i.roles.to_string()) } }
                        td { @if let Some(i) = identity { (i.region.as_ref().map(ToString::to_string).unwrap_or_else(|| "-".into())) } }
                        @match survey {
                            Err(e) => td colspan="3" { (bad(l, e)) },
                            Ok(s) => {
                                td.checkpoint {
                                    (l.t("size", "大小")) " " strong { (s.checkpoint.checkpoint.size) }
                                    @if let Some(t) = s.latest_time_ms { br; small { (l.t("last entry ", "最后条目 ")) (time_text(t)) } }
                                    br; (ok(l, l.t("signed by the node's key", "节点密钥签名有效")))
                                    @if s.rotations > 0 { br; small { (s.rotations) (l.t(" key rotation(s), each proven", " 次密钥轮换，均已证明")) } }
                                }
                                td.witnesses {
                                    @if s.witnesses.is_empty() { (l.t("none yet", "暂无")) }
                                    ul { @for w in &s.witnesses {
                                        li {
                                            (participant_of(&known, &w.witness)) " "
                                            (l.t("up to size ", "至大小 ")) (w.size)
                                            @if let Some(t) = w.timestamp { " (" (time_text(i64::try_from(t).unwrap_or(0).saturating_mul(1000))) ")" }
                                            " "
                                            @match &w.verified {
                                                Ok(()) => (ok(l, l.t("cosignature, consistent", "见证签名有效且一致"))),
                                                Err(e) => (bad(l, e)),
                                            }
                                        }
                                    } }
                                }
                                td.forks {
                                    @if s.forks.is_empty() { span.ok { "0" } }
                                    @else { span.bad { (s.forks.len()) } ul { @for f in &s.forks {
                                        li { a href=(format!("/ledger/{}?kind=ForkDetected", identity.as_ref().map(|i| i.node_id.to_string()).unwrap_or_default())) { "#" (f.entry.index) } " " (time_text(f.entry.time_ms)) }
                                    } } }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { (l.t("Reconciliation between nodes", "节点间对账")) }
        table #pairs {
            thead { tr {
                th { "A" } th { "B" }
                th { (l.t("Grants", "授权")) } th { (l.t("Receipts", "回执")) }
                th { (l.t("B witnessed A up to", "B 见证 A 至")) } th { (l.t("A witnessed B up to", "A 见证 B 至")) }
                th { (l.t("Result", "结论")) }
            } }
            tbody { @for (a, b, r) in &v.pairs {
                @let name = |i: usize| v.nodes.get(i).and_then(|n| n.1.as_ref()).map(|n| n.participant.to_string()).unwrap_or_default();
                tr.pair {
                    td { (name(*a)) } td { (name(*b)) }
                    @match r {
                        Err(e) => td colspan="5" { (bad(l, e)) },
                        Ok(r) => {
                            td { (r.grants) } td { (r.receipts) }
                            td { (r.witnessed.0) } td { (r.witnessed.1) }
                            td {
                                @if !r.discrepancies.is_empty() {
                                    span.bad data-verified="false" { "✗ " (r.discrepancies.len()) (l.t(" discrepancies", " 处不一致")) }
                                    ul { @for d in &r.discrepancies { li { (d) } } }
                                } @else if r.grants == 0 && r.receipts == 0 {
                                    span.muted { (l.t("nothing between them", "双方无往来")) }
                                } @else {
                                    (ok(l, l.t("both ledgers tell the same story", "双方账本记录一致")))
                                }
                            }
                        }
                    }
                }
            } }
        }
        h2 { (l.t("Datasets", "数据集")) }
        @for e in &v.catalog_errors { p { (bad(l, e)) } }
        table #datasets {
            thead { tr { th { (l.t("Title", "标题")) } th { (l.t("Version", "版本")) } th { (l.t("Publisher", "发布方")) } th { (l.t("Dataset", "数据集标识")) } } }
            tbody { @for f in &v.datasets {
                tr {
                    td { a.dataset-link href=(format!("/dataset/{}", f.id)) { (f.title) } }
                    td { "v" (f.version) }
                    td { (participant_of(&known, &f.publisher)) }
                    td { code.id { (f.id) } }
                }
            } }
        }
    };
    respond(StatusCode::OK, page(l, l.t("Data space", "数据空间"), body))
}

fn entry_links(e: &VerifiedEntry, known: &[PeerIdentity]) -> Markup {
    let d = &e.entry.draft;
    html! {
        @for p in &d.parties {
            @if known.iter().any(|k| &k.node_id == p) {
                a.party href=(format!("/ledger/{p}")) { (participant_of(known, p)) } " "
            } @else { code.id { (p.to_string()) } " " }
        }
    }
}

fn entries_table(
    l: Lang,
    rows: &[(String, &VerifiedEntry)],
    cp_size: &dyn Fn(&str) -> u64,
    known: &[PeerIdentity],
) -> Markup {
    html! {
        table.entries {
            thead { tr {
                th { (l.t("Ledger", "账本")) } th { "#" } th { (l.t("Time", "时间")) } th { (l.t("Event", "事件")) }
                th { (l.t("Parties", "相关方")) } th { (l.t("Dataset / grant", "数据集 / 授权")) }
                th { (l.t("Detail", "详情")) } th { (l.t("Inclusion proof", "包含证明")) }
            } }
            tbody { @for (ledger, e) in rows {
                @let d = &e.entry.draft;
                tr.entry data-index=(e.entry.index) data-kind=(d.kind.name()) {
                    td { (ledger) }
                    td { (e.entry.index) }
                    td { (time_text(e.entry.time_ms)) }
                    td { (l.kind(d.kind)) }
                    td { (entry_links(e, known)) }
                    td {
                        @if let Some(ds) = &d.dataset { a href=(format!("/dataset/{ds}")) { (short(ds, 18)) } br; }
                        @if let Some(g) = &d.grant { a href=(format!("/grant/{g}")) { (g) } }
                        @if let Some(t) = d.transfer { br; small { (l.t("transfer #", "传输 #")) (t) } }
                    }
                    td.detail { @if d.kind == EntryKind::PeerCheckpointSeen || d.kind == EntryKind::ForkDetected {
                        details { summary { (l.t("signed checkpoint", "已签名检查点")) } pre { (d.detail) } }
                    } @else { (short(&d.detail, 160)) } }
                    td { (ok(l, &format!("{} {} ({} {})", l.t("in checkpoint", "包含于检查点"), cp_size(ledger), e.inclusion_proof.len(), l.t("hashes", "个哈希")))) }
                }
            } }
        }
    }
}

/// A verified page of entries: the checkpoint they are proven in, the
/// entries, the next page's token.
pub(super) type EntriesPage = (SignedCheckpoint, Vec<VerifiedEntry>, Vec<u8>);

/// One ledger's entries about a grant: the node, its address, and the
/// checkpoint size and entries (or why not).
pub(super) type GrantSide = (
    Option<PeerIdentity>,
    String,
    Result<(u64, Vec<VerifiedEntry>), String>,
);

/// The grants in force at a time on a publisher's ledger.
pub(super) type InForceAt = (PeerIdentity, i64, Vec<InForce>);

/// The ledger page's content.
pub(super) struct LedgerView {
    /// The node, if reached.
    pub node: Option<PeerIdentity>,
    /// Its address.
    pub addr: String,
    /// Every node reached (for the party filter and links).
    pub known: Vec<PeerIdentity>,
    /// The filter form's values.
    pub form: Vec<(&'static str, String)>,
    /// Whether this is the first page.
    pub first_page: bool,
}

/// One node's ledger, filtered, a page at a time.
pub(super) fn ledger(
    l: Lang,
    v: &LedgerView,
    result: Result<EntriesPage, (StatusCode, String)>,
) -> Response {
    let value = |k: &str| {
        v.form
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    let who = v
        .node
        .as_ref()
        .map_or_else(|| v.addr.clone(), |n| n.participant.to_string());
    let node_id = v
        .node
        .as_ref()
        .map(|n| n.node_id.to_string())
        .unwrap_or_default();
    let status = result.as_ref().err().map_or(StatusCode::OK, |(s, _)| *s);
    let body = html! {
        p { code.id { (node_id) } " · " (v.addr) }
        form.filters method="get" action=(format!("/ledger/{node_id}")) {
            label { (l.t("Dataset", "数据集")) input type="text" name="dataset" value=(value("dataset")); }
            label { (l.t("Party", "相关方")) select name="party" {
                option value="" { (l.t("any", "全部")) }
                @for k in &v.known {
                    option value=(k.node_id.to_string()) selected[value("party") == k.node_id.to_string()] { (k.participant.to_string()) }
                }
            } }
            label { (l.t("Event", "事件")) select name="kind" {
                option value="" { (l.t("any", "全部")) }
                @for k in EntryKind::KNOWN {
                    option value=(k.name()) selected[value("kind").eq_ignore_ascii_case(&k.name())] { (l.kind(k)) }
                }
            } }
            label { (l.t("Grant", "授权")) input type="text" name="grant" value=(value("grant")); }
            label { (l.t("From (UTC)", "起（UTC）")) input type="datetime-local" name="since" value=(value("since")); }
            label { (l.t("Until (UTC)", "止（UTC）")) input type="datetime-local" name="until" value=(value("until")); }
            button type="submit" { (l.t("Filter", "筛选")) }
            " " a href=(format!("/ledger/{node_id}")) { (l.t("clear", "清除")) }
        }
        @match &result {
            Err((_, e)) => p #verdict { (bad(l, e)) },
            Ok((cp, entries, next)) => {
                p #verdict { (ok(l, &format!(
                    "{} {} {} {} {}",
                    entries.len(),
                    l.t("entries on this page, each proven in the checkpoint of size", "条记录，均已证明包含于大小为"),
                    cp.checkpoint.size,
                    l.t("(its signature verified)", "的检查点（其签名已核验）"),
                    if v.first_page { "" } else { l.t("· a later page", "· 后续页") }
                ))) }
                @let rows: Vec<(String, &VerifiedEntry)> = entries.iter().map(|e| (who.clone(), e)).collect();
                @let size = cp.checkpoint.size;
                (entries_table(l, &rows, &|_| size, &v.known))
                @if !next.is_empty() {
                    @let q = next_query(&v.form, next, cp.checkpoint.size);
                    p { a #next-page href=(format!("/ledger/{node_id}?{}", q)) { (l.t("Next page →", "下一页 →")) } }
                }
            }
        }
    };
    respond(
        status,
        page(
            l,
            &match l {
                Lang::En => format!("Ledger of {who}"),
                Lang::Zh => format!("{who} 的账本"),
            },
            body,
        ),
    )
}

/// The query string of the next page: the filters, the token, the size.
fn next_query(form: &[(&'static str, String)], next: &[u8], size: u64) -> String {
    let mut q: Vec<(&str, String)> = form
        .iter()
        .filter(|(_, x)| !x.is_empty())
        .map(|(k, x)| (*k, x.clone()))
        .collect();
    q.push(("after", data_encoding::BASE64URL_NOPAD.encode(next)));
    q.push(("size", size.to_string()));
    encode_query(&q)
}

fn encode_query(pairs: &[(&str, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            let enc: String = v
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            format!("{k}={enc}")
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// A node on the provenance page: its address, identity, and the size of
/// the checkpoint its entries were proven in (or why not).
pub(super) type Side = (String, Option<PeerIdentity>, Result<u64, String>);

/// The provenance page's content.
pub(super) struct DatasetView {
    /// The dataset asked about.
    pub id: String,
    /// What its verified manifest says, if a catalog listed it.
    pub facts: Option<DatasetFacts>,
    /// Catalogs that could not be read, or did not verify.
    pub catalog_errors: Vec<String>,
    /// Each node: address, identity, and the checkpoint its entries were
    /// proven in (or why not).
    pub sides: Vec<Side>,
    /// The graph.
    pub graph: Graph,
}

/// A dataset's provenance: the graph and its edges, each proven or not.
pub(super) fn dataset(l: Lang, v: &DatasetView) -> Response {
    let title = v
        .facts
        .as_ref()
        .map_or_else(|| v.id.clone(), |f| f.title.clone());
    let body = html! {
        p { code.id { (v.id) } }
        @if let Some(f) = &v.facts {
            p { "v" (f.version) " · " (ok(l, l.t("manifest signature verified under the publisher's key history", "清单签名已依据发布方密钥历史核验"))) }
        } @else {
            p { (bad(l, l.t("no audited catalog lists this dataset: its manifest is not shown", "所审计的目录中没有该数据集：无法显示其清单"))) }
        }
        @for e in &v.catalog_errors { p { (bad(l, e)) } }
        ul.sides { @for (addr, i, r) in &v.sides {
            li {
                (i.as_ref().map_or_else(|| addr.clone(), |i| i.participant.to_string())) ": "
                @match r {
                    Ok(size) => (ok(l, &match l {
                        Lang::En => format!("entries proven in its checkpoint of size {size}"),
                        Lang::Zh => format!("条目均已证明包含于其大小为 {size} 的检查点"),
                    })),
                    Err(e) => (bad(l, e)),
                }
            }
        } }
        @if v.graph.nodes.len() <= MAX_GRAPH_BOXES {
            div.graph-box { (svg::graph(l, &v.graph)) }
        } @else {
            p.muted { (v.graph.nodes.len()) (l.t(
                " boxes: too many to draw; every edge is listed below",
                " 个节点：过多无法绘制；所有关系列于下表"
            )) }
        }
        p.legend {
            span.key.proven { "━ " (l.t("proven: every ledger that must record it does", "已证明：应记录的各方账本均有记录")) }
            span.key.one-side { "┅ " (l.t("one side only", "仅单方记录")) }
            span.key.claimed { "┄ " (l.t("claimed by a signed manifest only", "仅由签名清单声明")) }
        }
        table #edges {
            thead { tr { th { (l.t("From", "从")) } th { (l.t("To", "到")) } th { (l.t("Relation", "关系")) } th { (l.t("Standing", "状态")) } th { (l.t("Recorded in", "记录于")) } } }
            tbody { @for e in &v.graph.edges {
                @let (class, words) = svg::standing(l, e.standing);
                tr.edge-row data-from=(e.from) data-to=(e.to) data-standing=(class) {
                    td { code { (e.from) } } td { code { (e.to) } }
                    td { (svg::relation(l, e.relation)) }
                    td { span class=(class) { (words) } }
                    td { @for r in &e.records { (r.participant) " #" (r.index) " (" (l.kind(r.kind)) ")" br; } }
                }
            } }
        }
        p { a href=(format!("/who-could?dataset={}", v.id)) { (l.t("Who could use it, and when →", "谁在何时有权使用 →")) } }
    };
    respond(
        StatusCode::OK,
        page(
            l,
            &format!("{}{}", l.t("Provenance: ", "溯源："), title),
            body,
        ),
    )
}

/// The grant page's content.
pub(super) struct GrantView {
    /// The grant id.
    pub id: String,
    /// Its terms, verified under the publisher's key, or why not.
    pub terms: Result<Grant, String>,
    /// Its receipts, each verified under the consumer's key, or why not.
    pub receipts: Vec<Result<Receipt, String>>,
    /// The publisher, if audited.
    pub publisher: Option<PeerIdentity>,
    /// The consumer, if audited.
    pub consumer: Option<PeerIdentity>,
    /// Each audited ledger's entries about the grant.
    pub timeline: Vec<GrantSide>,
    /// Whether a bundle can be built (both sides audited).
    pub bundle: bool,
}

/// A grant: terms, timeline on both ledgers, receipts, its bundle.
pub(super) fn grant(l: Lang, v: &GrantView) -> Response {
    let known: Vec<PeerIdentity> = v
        .timeline
        .iter()
        .filter_map(|(i, _, _)| i.clone())
        .collect();
    let mut rows: Vec<(String, &VerifiedEntry)> = Vec::new();
    let mut sizes: Vec<(String, u64)> = Vec::new();
    for (i, addr, r) in &v.timeline {
        let name = i
            .as_ref()
            .map_or_else(|| addr.clone(), |i| i.participant.to_string());
        if let Ok((size, entries)) = r {
            sizes.push((name.clone(), *size));
            rows.extend(entries.iter().map(|e| (name.clone(), e)));
        }
    }
    rows.sort_by_key(|(_, e)| e.entry.time_ms);
    let size_of = |name: &str| sizes.iter().find(|(n, _)| n == name).map_or(0, |(_, s)| *s);
    let side = |i: &Option<PeerIdentity>| {
        i.as_ref().map_or_else(
            || {
                l.t("not among the audited nodes", "不在审计范围内")
                    .to_owned()
            },
            |i| i.participant.to_string(),
        )
    };
    let body = html! {
        p { (l.t("Publisher's ledger: ", "发布方账本：")) strong { (side(&v.publisher)) } " · "
            (l.t("consumer's ledger: ", "使用方账本：")) strong { (side(&v.consumer)) } }
        h2 { (l.t("Terms", "条款")) }
        @match &v.terms {
            Err(e) => p #terms-verdict { (bad(l, e)) },
            Ok(g) => {
                p #terms-verdict { (ok(l, l.t("signed by the publisher's key", "发布方签名有效"))) }
                dl.terms {
                    dt { (l.t("Dataset", "数据集")) } dd { a href=(format!("/dataset/{}", g.dataset)) { (g.dataset.to_string()) } }
                    dt { (l.t("Publisher", "发布方")) } dd { (participant_of(&known, &g.publisher)) }
                    dt { (l.t("Granted to", "被授权方")) } dd { (participant_of(&known, &g.grantee)) }
                    dt { (l.t("Purpose", "用途")) } dd #purpose { (g.purpose) }
                    dt { (l.t("Actions", "操作")) } dd { (g.actions.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")) }
                    dt { (l.t("Valid", "有效期")) } dd { (time_text(g.not_before_ms)) " — " (time_text(g.not_after_ms)) }
                    dt { (l.t("Fetches allowed", "允许获取次数")) } dd { (g.max_fetches.map_or_else(|| l.t("unlimited", "不限").to_owned(), |n| n.to_string())) }
                    dt { (l.t("Issued", "签发时间")) } dd { (time_text(g.issued_at_ms)) }
                }
            }
        }
        @if v.bundle {
            p { a.button #bundle href=(format!("/grant/{}/bundle", v.id)) download { (l.t("Download the evidence bundle", "下载证据包")) } " "
                small { (l.t("built now from both live ledgers; check it anywhere with `dsnode audit verify-bundle` or on the Verify page", "由双方在线账本即时生成；可用 `dsnode audit verify-bundle` 或本控制台的核验页面检查")) } }
        } @else {
            p.muted { (l.t("An evidence bundle needs both the publisher's and the consumer's ledger; one of them is not among the audited nodes.", "证据包需要双方账本；其中一方不在审计范围内。")) }
        }
        h2 { (l.t("Timeline on both ledgers", "双方账本时间线")) }
        ul.sides { @for (i, addr, r) in &v.timeline {
            @if let Err(e) = r { li { (i.as_ref().map_or_else(|| addr.clone(), |i| i.participant.to_string())) ": " (bad(l, e)) } }
        } }
        (entries_table(l, &rows, &size_of, &known))
        h2 { (l.t("Receipts", "回执")) }
        @if v.receipts.is_empty() { p.muted { (l.t("none", "无")) } }
        table #receipts {
            tbody { @for r in &v.receipts { tr { @match r {
                Err(e) => td colspan="5" { (bad(l, e)) },
                Ok(r) => {
                    td { (l.t("transfer #", "传输 #")) (r.transfer_index) }
                    td { (r.bytes) (l.t(" bytes", " 字节")) }
                    td { code { (short(&hex(&r.content_sha256), 20)) } }
                    td { (time_text(r.received_at_ms)) }
                    td { (ok(l, l.t("signed by the consumer's key", "使用方签名有效"))) }
                }
            } } } }
        }
    };
    respond(
        StatusCode::OK,
        page(l, &format!("{} {}", l.t("Grant", "授权"), v.id), body),
    )
}

/// The bundle check: a form, and the result of the last upload.
pub(super) fn verify(l: Lang, outcome: Option<Result<String, String>>) -> Response {
    let body = html! {
        p.lead { (l.t(
            "Upload an evidence bundle and the data space's CA certificate: the console checks the bundle offline, with nothing but the certificate, and forgets both.",
            "上传证据包和数据空间的 CA 证书：控制台仅凭该证书离线核验证据包，之后不保留任何内容。"
        )) }
        form #verify method="post" action="/verify" enctype="multipart/form-data" {
            label { (l.t("Evidence bundle (JSON)", "证据包（JSON）")) input #bundle-file type="file" name="bundle" accept=".json,application/json"; }
            label { (l.t("CA certificate (PEM)", "CA 证书（PEM）")) input #ca-file type="file" name="ca" accept=".crt,.pem"; }
            button #verify-button type="submit" { (l.t("Verify", "核验")) }
        }
        @match &outcome {
            None => {},
            Some(Ok(account)) => div #verdict.verdict.good data-verified="true" {
                p { strong { "✓ " (l.t("The bundle verifies offline against this CA.", "证据包已依据该 CA 离线核验通过。")) } }
                ol.account { @for line in account.lines() { li { (line) } } }
            },
            Some(Err(e)) => div #verdict.verdict.failed data-verified="false" {
                p { strong { "✗ " (l.t("The bundle does NOT verify.", "证据包未通过核验。")) } }
                ol.account { @for line in e.lines() { li { (line) } } }
            },
        }
    };
    respond(
        StatusCode::OK,
        page(l, l.t("Verify an evidence bundle", "核验证据包"), body),
    )
}

/// Who could use a dataset at a time.
pub(super) fn who_could(
    l: Lang,
    dataset: &str,
    at: Option<&str>,
    outcome: Option<Result<InForceAt, String>>,
) -> Response {
    let body = html! {
        form.filters method="get" action="/who-could" {
            label { (l.t("Dataset", "数据集")) input type="text" name="dataset" value=(dataset) size="60"; }
            label { (l.t("At (UTC; empty: now)", "时间（UTC，留空则为当前时间）")) input type="datetime-local" name="at" value=(at.unwrap_or("")); }
            button type="submit" { (l.t("Ask", "查询")) }
        }
        @match &outcome {
            None => {},
            Some(Err(e)) => p #verdict { (bad(l, e)) },
            Some(Ok((publisher, at, found))) => {
                p #verdict { (ok(l, &match l {
                    Lang::En => format!(
                        "grants in force at {} on the ledger of {}: {}",
                        time_text(*at),
                        publisher.participant,
                        found.len()
                    ),
                    Lang::Zh => format!(
                        "依据 {} 的账本，{} 时有效的授权共 {} 项",
                        publisher.participant,
                        time_text(*at),
                        found.len()
                    ),
                })) }
                table #in-force {
                    thead { tr { th { (l.t("Grant", "授权")) } th { (l.t("Granted to", "被授权方")) } th { (l.t("Purpose", "用途")) } th { (l.t("Valid", "有效期")) } th { (l.t("Proof", "证明")) } } }
                    tbody { @for f in found { tr {
                        td { a href=(format!("/grant/{}", f.grant.id)) { (f.grant.id.to_string()) } }
                        td { code.id { (f.grant.grantee.to_string()) } }
                        td { (f.grant.purpose) }
                        td { (time_text(f.grant.not_before_ms)) " — " (time_text(f.grant.not_after_ms)) }
                        td { (ok(l, &format!("{} #{} {} {} ({} {})", l.t("AccessGranted", "授权条目"), f.entry_index, l.t("in checkpoint", "包含于检查点"), f.checkpoint_size, f.proof_len, l.t("hashes", "个哈希")))) }
                    } } }
                }
            }
        }
    };
    respond(
        StatusCode::OK,
        page(l, l.t("Who could use a dataset", "谁有权使用数据集"), body),
    )
}
