//! The provenance graph drawn as SVG by the server: boxes in columns
//! (sources, the dataset and its versions, grants, transfers, receipts,
//! revocations and derivatives), arrows marked by how they stand. Drawn
//! with maud, so every label (a title is the publisher's text) is escaped
//! like any other; styled by the console's stylesheet through classes, as
//! the Content-Security-Policy allows no inline style.

use maud::{Markup, html};

use super::lang::Lang;
use crate::audit::provenance::{Graph, GraphEdge, GraphNode, NodeKind, Standing};

const BOX_W: i64 = 200;
const BOX_H: i64 = 58;
const COL_GAP: i64 = 70;
const ROW_GAP: i64 = 28;
const MARGIN: i64 = 16;

/// At most `n` characters of `s`, with an ellipsis when cut.
pub fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(n.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The kind of a box, in words.
pub fn kind_name(l: Lang, kind: &NodeKind) -> &'static str {
    match kind {
        NodeKind::Dataset => l.t("dataset", "数据集"),
        NodeKind::Grant => l.t("grant", "授权"),
        NodeKind::Denied => l.t("refused request", "被拒绝的申请"),
        NodeKind::Transfer => l.t("transfer", "传输"),
        NodeKind::Receipt => l.t("receipt", "回执"),
        NodeKind::Revoked => l.t("revocation", "撤销"),
    }
}

fn kind_class(kind: &NodeKind) -> &'static str {
    match kind {
        NodeKind::Dataset => "dataset",
        NodeKind::Grant => "grant",
        NodeKind::Denied => "denied",
        NodeKind::Transfer => "transfer",
        NodeKind::Receipt => "receipt",
        NodeKind::Revoked => "revoked",
    }
}

/// How an edge stands, in words and as its class.
pub fn standing(l: Lang, s: Standing) -> (&'static str, &'static str) {
    match s {
        Standing::Proven => ("proven", l.t("proven", "已证明")),
        Standing::OneSide => ("one-side", l.t("one side only", "仅单方记录")),
        Standing::Claimed => ("claimed", l.t("claimed, not proven", "仅声明，未证明")),
    }
}

/// What an edge means, in words.
pub fn relation(l: Lang, r: &str) -> &'static str {
    match r {
        "version" => l.t("new version", "新版本"),
        "derived" => l.t("derived", "派生"),
        "granted" => l.t("granted", "授权"),
        "denied" => l.t("refused", "拒绝"),
        "transfer" => l.t("transferred", "传输"),
        "receipt" => l.t("receipt", "回执"),
        "revoked" => l.t("revoked", "撤销"),
        _ => l.t("related", "相关"),
    }
}

/// Where a box's link goes, if anywhere.
fn link(n: &GraphNode) -> Option<String> {
    match n.kind {
        NodeKind::Dataset => Some(format!("/dataset/{}", n.subject)),
        NodeKind::Grant | NodeKind::Transfer | NodeKind::Receipt | NodeKind::Revoked => {
            Some(format!("/grant/{}", n.subject))
        }
        NodeKind::Denied => None,
    }
}

struct Layout {
    columns: Vec<usize>,
}

impl Layout {
    fn new(g: &Graph) -> Self {
        let mut columns: Vec<usize> = g.nodes.iter().map(|n| n.column).collect();
        columns.sort_unstable();
        columns.dedup();
        Self { columns }
    }

    fn x(&self, column: usize) -> i64 {
        let at = self.columns.iter().position(|&c| c == column).unwrap_or(0);
        MARGIN + i64::try_from(at).unwrap_or(0) * (BOX_W + COL_GAP)
    }

    fn y(row: usize) -> i64 {
        MARGIN + i64::try_from(row).unwrap_or(0) * (BOX_H + ROW_GAP)
    }
}

fn edge_path(layout: &Layout, from: &GraphNode, to: &GraphNode) -> (String, i64, i64) {
    let (fx, fy) = (layout.x(from.column), Layout::y(from.row));
    let (tx, ty) = (layout.x(to.column), Layout::y(to.row));
    if from.column == to.column {
        // Down (or up) the column: versions.
        let (x, y1, y2) = if ty >= fy {
            (fx + BOX_W / 2, fy + BOX_H, ty - 4)
        } else {
            (fx + BOX_W / 2, fy, ty + BOX_H + 4)
        };
        return (format!("M{x},{y1} L{x},{y2}"), x + 6, (y1 + y2) / 2);
    }
    let (x1, y1) = (fx + BOX_W, fy + BOX_H / 2);
    let (x2, y2) = (tx - 6, ty + BOX_H / 2);
    let mid = (x1 + x2) / 2;
    (
        format!("M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}"),
        mid,
        (y1 + y2) / 2 - 4,
    )
}

fn records_text(l: Lang, e: &GraphEdge) -> String {
    let mut out = format!("{}: {}", relation(l, e.relation), standing(l, e.standing).1);
    for r in &e.records {
        out.push_str(&format!(
            "\n{} #{} ({})",
            r.participant,
            r.index,
            l.kind(r.kind)
        ));
    }
    out
}

/// The graph as an inline SVG element.
pub fn graph(l: Lang, g: &Graph) -> Markup {
    let layout = Layout::new(g);
    let width = layout.x(*layout.columns.last().unwrap_or(&0)) + BOX_W + MARGIN;
    let rows = g.nodes.iter().map(|n| n.row + 1).max().unwrap_or(1);
    let height = Layout::y(rows) + MARGIN;
    let by_id = |id: &str| g.nodes.iter().find(|n| n.id == id);
    html! {
        svg id="provenance" class="graph" xmlns="http://www.w3.org/2000/svg"
            width=(width) height=(height) viewBox=(format!("0 0 {width} {height}"))
            role="img" aria-label=(l.t("Provenance graph", "溯源图")) {
            defs {
                @for (name, _) in [("proven", ()), ("one-side", ()), ("claimed", ())] {
                    marker id=(format!("arrow-{name}")) class=(format!("arrow {name}"))
                        viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7"
                        orient="auto-start-reverse" {
                        path d="M0,0 L10,5 L0,10 z" {}
                    }
                }
            }
            @for e in &g.edges {
                @if let (Some(from), Some(to)) = (by_id(&e.from), by_id(&e.to)) {
                    @let (d, lx, ly) = edge_path(&layout, from, to);
                    @let (class, words) = standing(l, e.standing);
                    g class=(format!("edge {class}")) data-from=(e.from) data-to=(e.to)
                        data-relation=(e.relation) data-standing=(class) {
                        title { (records_text(l, e)) }
                        path d=(d) marker-end=(format!("url(#arrow-{class})")) {}
                        text x=(lx) y=(ly) text-anchor="middle" class="edge-label" {
                            (relation(l, e.relation))
                            @if e.standing == Standing::Proven { " ✓" } @else { " · " (words) }
                        }
                    }
                }
            }
            @for n in &g.nodes {
                @let (x, y) = (layout.x(n.column), Layout::y(n.row));
                @let body = html! {
                    title { (kind_name(l, &n.kind)) " " (n.subject) "\n" (n.detail) }
                    rect x=(x) y=(y) width=(BOX_W) height=(BOX_H) rx="6" {}
                    text x=(x + 8) y=(y + 16) class="box-kind" { (kind_name(l, &n.kind)) }
                    text x=(x + 8) y=(y + 33) class="box-subject" { (clip(&n.subject, 28)) }
                    text x=(x + 8) y=(y + 49) class="box-detail" { (clip(&n.detail, 30)) }
                };
                g class=(format!("node {}", kind_class(&n.kind))) data-id=(n.id) {
                    @if let Some(href) = link(n) {
                        a href=(href) { (body) }
                    } @else {
                        (body)
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::provenance::GraphNode;

    fn node(id: &str, column: usize, row: usize, detail: &str) -> GraphNode {
        GraphNode {
            id: id.into(),
            kind: NodeKind::Dataset,
            subject: id.trim_start_matches("dataset:").into(),
            detail: detail.into(),
            time_ms: None,
            column,
            row,
        }
    }

    #[test]
    fn labels_are_escaped_and_edges_carry_their_ends() {
        let g = Graph {
            nodes: vec![
                node("dataset:ds_a", 1, 0, "<script>alert(1)</script>"),
                node("dataset:ds_b", 1, 1, "v2 & \"more\""),
            ],
            edges: vec![GraphEdge {
                from: "dataset:ds_a".into(),
                to: "dataset:ds_b".into(),
                relation: "version",
                records: vec![],
                expected: 1,
                standing: Standing::Claimed,
            }],
        };
        let svg = graph(Lang::En, &g).into_string();
        assert!(!svg.contains("<script>"), "{svg}");
        assert!(svg.contains("&lt;script&gt;alert(1)&lt;/script"), "{svg}");
        assert!(svg.contains("v2 &amp; &quot;more&quot;"), "{svg}");
        assert!(svg.contains(r#"data-from="dataset:ds_a" data-to="dataset:ds_b""#));
        assert!(svg.contains(r#"data-standing="claimed""#));
        assert!(svg.contains(r#"href="/dataset/ds_b""#));
    }

    #[test]
    fn clip_cuts_on_characters() {
        assert_eq!(clip("道路传感器计数数据", 4), "道路传…");
        assert_eq!(clip("abc", 3), "abc");
    }
}
