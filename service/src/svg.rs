//! The pieces of the SVG charts Arena's tools write beside their JSON reports (the load test's
//! latency chart, the fleet's scaling timeline): a panel's frame and y axis, text escaping.

use std::fmt::Write as _;

/// Where a panel sits in the chart and how tall its values go.
#[derive(Debug, Clone, Copy)]
pub struct Panel {
    /// Left and right margin of the chart.
    pub pad: f64,
    /// Width of the whole chart.
    pub width: f64,
    /// The panel's top edge and height.
    pub top: f64,
    pub height: f64,
    /// The value at the panel's top edge.
    pub y_max: f64,
}

impl Panel {
    /// The panel's y coordinate of `v`.
    pub fn y(&self, v: f64) -> f64 {
        self.top + self.height - (v / self.y_max) * self.height
    }

    /// Write the panel's frame, its title above it, and labels at 0, half and the top of its
    /// y axis.
    pub fn frame(&self, out: &mut String, title: &str) {
        let _ = write!(
            out,
            r##"<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#888"/><text x="{}" y="{}">{}</text>"##,
            self.pad,
            self.top,
            self.width - 2.0 * self.pad,
            self.height,
            self.pad,
            self.top - 6.0,
            escape(title)
        );
        for frac in [0.0, 0.5, 1.0] {
            let v = self.y_max * frac;
            let _ =
                write!(out, r#"<text x="{}" y="{}" text-anchor="end">{v:.0}</text>"#, self.pad - 6.0, self.y(v) + 4.0);
        }
    }
}

/// `s` as SVG text.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panel_maps_values_and_draws_its_frame() {
        let p = Panel { pad: 40.0, width: 800.0, top: 40.0, height: 200.0, y_max: 100.0 };
        assert_eq!((p.y(0.0), p.y(50.0), p.y(100.0)), (240.0, 140.0, 40.0));
        let mut out = String::new();
        p.frame(&mut out, "a < b");
        assert!(out.starts_with(r#"<rect x="40" y="40" width="720" height="200""#), "{out}");
        assert!(out.contains(">a &lt; b</text>") && out.contains(">100</text>"), "{out}");
    }
}
