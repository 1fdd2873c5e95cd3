//! A small SVG chart of `readmark bench` results: for each burst size, one
//! bar per design for durable writes per 1,000 updates and one for updates
//! per second, both on log scales (the designs differ by orders of
//! magnitude). Plain SVG text: no plotting dependency for two bar charts.

use std::fmt::Write;

const ROW_H: f64 = 16.0;
const LABEL_W: f64 = 170.0;
const BAR_W: f64 = 300.0;
const GAP: f64 = 40.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Bar length for `v` on a log scale from 1 to `max`.
fn len(v: f64, max: f64) -> f64 {
    if v <= 1.0 || max <= 1.0 {
        return 0.0;
    }
    BAR_W * v.log10() / max.log10()
}

/// `rows`: (burst, design, updates per second, durable writes per 1k).
pub(crate) fn svg(rows: &[(u64, String, f64, f64)]) -> String {
    let mut bursts: Vec<u64> = rows.iter().map(|r| r.0).collect();
    bursts.dedup();
    let max_ups = rows.iter().map(|r| r.2).fold(1.0, f64::max);
    let max_dw = rows.iter().map(|r| r.3).fold(1.0, f64::max);
    let width = LABEL_W + 2.0 * BAR_W + GAP * 3.0 + 80.0;
    #[allow(clippy::cast_precision_loss)]
    let height = 60.0 + bursts.len() as f64 * 40.0 + rows.len() as f64 * ROW_H;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let x1 = LABEL_W + GAP;
    let x2 = x1 + BAR_W + GAP + 40.0;
    let _ = writeln!(
        out,
        r#"<text x="{x1}" y="20" font-weight="bold">durable writes per 1,000 updates (log)</text><text x="{x2}" y="20" font-weight="bold">updates per second (log)</text>"#
    );
    let mut y = 40.0;
    for b in &bursts {
        let _ = writeln!(
            out,
            r#"<text x="4" y="{}" font-weight="bold">burst {b}: {b} updates per key per flush</text>"#,
            y + 12.0
        );
        y += 24.0;
        for r in rows.iter().filter(|r| r.0 == *b) {
            let colour = if r.1.starts_with("readmark") {
                "#2b6cb0"
            } else {
                "#a0aec0"
            };
            let _ = writeln!(
                out,
                r#"<text x="4" y="{ty}">{name}</text><rect x="{x1}" y="{y}" width="{w1:.1}" height="{h}" fill="{colour}"/><text x="{t1:.1}" y="{ty}">{dw:.1}</text><rect x="{x2}" y="{y}" width="{w2:.1}" height="{h}" fill="{colour}"/><text x="{t2:.1}" y="{ty}">{ups:.0}</text>"#,
                ty = y + ROW_H - 5.0,
                name = esc(&r.1),
                w1 = len(r.3, max_dw),
                t1 = x1 + len(r.3, max_dw) + 4.0,
                dw = r.3,
                w2 = len(r.2, max_ups),
                t2 = x2 + len(r.2, max_ups) + 4.0,
                ups = r.2,
                h = ROW_H - 3.0,
            );
            y += ROW_H;
        }
        y += 16.0;
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_has_one_pair_of_bars_per_row() {
        let rows = vec![
            (1, "readmark ProcessCrash".to_string(), 1e6, 10.0),
            (1, "naive <rows>".to_string(), 1e5, 1000.0),
        ];
        let s = svg(&rows);
        assert!(s.starts_with("<svg"));
        assert_eq!(s.matches("<rect x=").count(), 4);
        assert!(s.contains("naive &lt;rows&gt;"));
    }
}
