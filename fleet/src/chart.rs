//! The fleet's scaling timeline as an SVG chart: per region, servers wanted and serving (top)
//! and seats used against seats (bottom), with the scaling decisions marked.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use arena_service::svg::{Panel, escape};

use crate::status::Timeline;

const COLORS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf"];

/// The chart of `t`.
pub fn svg(t: &Timeline, title: &str) -> String {
    let (w, h, pad) = (900.0, 560.0, 60.0);
    let panel_h = (h - 3.0 * pad) / 2.0;
    let t_max = t.samples.iter().map(|s| s.t_s).fold(1.0f64, f64::max);
    let x = |v: f64| pad + (v / t_max) * (w - 2.0 * pad);
    let mut regions: BTreeMap<&str, Vec<&crate::status::Sample>> = BTreeMap::new();
    for s in &t.samples {
        regions.entry(s.region.as_str()).or_default().push(s);
    }
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="{pad}" y="20" font-size="14">{}</text>"#,
        escape(title)
    );
    type Pick = fn(&crate::status::Sample) -> f64;
    let panels: [(&str, f64, Pick, Pick); 2] = [
        ("servers: serving (solid), wanted (dashed)", pad, |s| f64::from(s.ready), |s| f64::from(s.desired)),
        ("seats used (solid), seats (dashed)", 2.0 * pad + panel_h, |s| s.seats_used as f64, |s| s.seats as f64),
    ];
    for (name, top, solid, dashed) in panels {
        let y_max = t.samples.iter().map(|s| solid(s).max(dashed(s))).fold(1.0f64, f64::max) * 1.1;
        let panel = Panel { pad, width: w, top, height: panel_h, y_max };
        let y = |v: f64| panel.y(v);
        panel.frame(&mut o, name);
        for (i, (region, samples)) in regions.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            for (pick, dash) in [(solid, ""), (dashed, r#" stroke-dasharray="5,4""#)] {
                let points: Vec<String> =
                    samples.iter().map(|s| format!("{:.1},{:.1}", x(s.t_s), y(pick(s)))).collect();
                let _ = write!(
                    o,
                    r#"<polyline fill="none" stroke="{color}" stroke-width="1.5"{dash} points="{}"/>"#,
                    points.join(" ")
                );
            }
            let _ = write!(
                o,
                r#"<text x="{}" y="{}" fill="{color}">{}</text>"#,
                w - pad + 6.0,
                top + 14.0 + 14.0 * i as f64,
                escape(region)
            );
        }
    }
    // Scaling decisions: a tick at the top of the servers panel.
    for e in t.events.iter().filter(|e| e.kind == "scale") {
        let i = regions.keys().position(|r| *r == e.region).unwrap_or(0);
        let _ = write!(
            o,
            r#"<line x1="{0:.1}" x2="{0:.1}" y1="{1}" y2="{2}" stroke="{3}"><title>{4}</title></line>"#,
            x(e.t_s),
            pad,
            pad + 8.0,
            COLORS[i % COLORS.len()],
            escape(&format!("{} {:.1} s: {}", e.region, e.t_s, e.detail))
        );
    }
    for frac in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let v = t_max * frac;
        let _ = write!(o, r#"<text x="{}" y="{}" text-anchor="middle">{v:.0} s</text>"#, x(v), h - pad + 30.0);
    }
    o.push_str("</svg>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{Event, Sample};

    #[test]
    fn the_chart_has_a_line_per_region_and_a_mark_per_decision() {
        let sample = |t_s, region: &str, ready| Sample {
            t_s,
            region: region.into(),
            desired: ready + 1,
            ready,
            starting: 1,
            draining: 0,
            seats_used: u64::from(ready) * 1000,
            seats: u64::from(ready) * 1500,
        };
        let t = Timeline {
            samples: vec![sample(0.0, "a", 1), sample(0.0, "b", 1), sample(1.0, "a", 2), sample(1.0, "b", 1)],
            events: vec![Event {
                t_s: 0.5,
                region: "a".into(),
                kind: "scale".into(),
                server: None,
                detail: "1 → 2 by buffer: <reason>".into(),
                secs: None,
            }],
        };
        let svg = svg(&t, "fleet & load");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<polyline").count(), 8, "2 regions × 2 panels × (solid, dashed)");
        assert!(svg.contains("a 0.5 s: 1 → 2 by buffer: &lt;reason&gt;"));
        assert!(svg.contains("fleet &amp; load"));
    }
}
