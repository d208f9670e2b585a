//! The PNG chart of a run: latency percentiles per second above, throughput per second
//! below, with the ramp end and the stop marked.
//!
//! Text is drawn with DejaVu Sans compiled into the binary (plotters' `ab_glyph` backend),
//! so the chart renders the same on a machine without fontconfig or system fonts.

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::register_font;

use crate::run::{si, Outcome, Second};

const WIDTH: u32 = 1280;
const HEIGHT: u32 = 900;

/// Lines of the latency panel: name, colour and how to read it from a second.
type Line = (&'static str, RGBColor, fn(&Second) -> Option<u64>);

/// Max comes first and thin, so the percentiles stay visible where they meet it (with few
/// samples in a second, p99.9 often equals max).
const LATENCY_LINES: [Line; 6] = [
    ("max", RGBColor(170, 170, 170), |s| {
        s.delivery.map(|p| p.max)
    }),
    ("p99.9", RGBColor(214, 39, 40), |s| {
        s.delivery.map(|p| p.p999)
    }),
    ("p99", RGBColor(255, 127, 14), |s| s.delivery.map(|p| p.p99)),
    ("p90", RGBColor(44, 160, 44), |s| s.delivery.map(|p| p.p90)),
    ("p50", RGBColor(31, 119, 180), |s| s.delivery.map(|p| p.p50)),
    ("send lag p99", RGBColor(148, 103, 189), |s| s.lag_p99),
];

/// Draws the chart of `outcome` to `path`.
pub fn draw(path: &Path, title: &str, outcome: &Outcome) -> Result<()> {
    register_fonts()?;
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(err)?;
    let (upper, lower) = root.split_vertically(HEIGHT as i32 * 52 / 100);

    latency_panel(&upper, outcome)?;
    throughput_panel(&lower, outcome)?;
    root.present().map_err(err)?;
    Ok(())
}

fn register_fonts() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
            .map_err(|_| anyhow!("the bundled DejaVu Sans font did not load"));
    });
    result
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing the chart: {e:?}")
}

fn x_range(o: &Outcome) -> std::ops::Range<f64> {
    let end = o.seconds.last().map_or(1.0, |s| s.t).max(o.duration_secs);
    0.0..end.ceil().max(1.0)
}

/// Latency in milliseconds on a log axis: p50 of a fast server sits well below 1 ms while
/// its max can reach seconds.
fn latency_panel(area: &DrawingArea<BitMapBackend<'_>, Shift>, o: &Outcome) -> Result<()> {
    let ms = |us: u64| (us as f64 / 1000.0).max(0.001);
    let values = o
        .seconds
        .iter()
        .flat_map(|s| LATENCY_LINES.iter().filter_map(|l| (l.2)(s)));
    let (lo, hi) = values.fold((f64::MAX, 0.0f64), |(lo, hi), us| {
        (lo.min(ms(us)), hi.max(ms(us)))
    });
    let (lo, hi) = if hi == 0.0 {
        (0.01, 10.0)
    } else {
        (lo / 2.0, hi * 2.0)
    };

    let mut chart = ChartBuilder::on(area)
        .caption(
            "delivery latency per second (sampled recipients) and send lag",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(72)
        .build_cartesian_2d(
            x_range(o),
            (lo..hi).log_scale().with_key_points(ticks_125(lo, hi)),
        )
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("milliseconds (log)")
        .y_label_formatter(&|v| fmt_ms(*v))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;

    for (name, color, pick) in LATENCY_LINES {
        let points: Vec<(f64, f64)> = o
            .seconds
            .iter()
            .filter_map(|s| Some((s.t, ms(pick(s)?))))
            .collect();
        let width = if name == "max" { 1 } else { 2 };
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(width)))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(width))
            });
    }
    markers(&mut chart, o, lo, hi)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Delivered and sent messages per second on one linear axis each: in fan-out scenarios
/// deliveries outnumber sends by the room size.
fn throughput_panel(area: &DrawingArea<BitMapBackend<'_>, Shift>, o: &Outcome) -> Result<()> {
    let rate = |n: u64, s: &Second| n as f64 / s.len.max(1e-3);
    let top = |f: &dyn Fn(&Second) -> f64| o.seconds.iter().map(f).fold(1.0f64, f64::max) * 1.15;
    let d_top = top(&|s| rate(s.delivered, s));
    let s_top = top(&|s| rate(s.sent, s));

    let mut chart = ChartBuilder::on(area)
        .caption("throughput per second", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(72)
        .right_y_label_area_size(72)
        .build_cartesian_2d(x_range(o), 0.0..d_top)
        .map_err(err)?
        .set_secondary_coord(x_range(o), 0.0..s_top);
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("delivered / s")
        .y_label_formatter(&|v| si(*v))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    chart
        .configure_secondary_axes()
        .y_desc("sent / s")
        .y_label_formatter(&|v| si(*v))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;

    let blue = RGBColor(31, 119, 180);
    let orange = RGBColor(255, 127, 14);
    let delivered = o.seconds.iter().map(|s| (s.t, rate(s.delivered, s)));
    chart
        .draw_series(LineSeries::new(delivered, blue.stroke_width(2)))
        .map_err(err)?
        .label("delivered / s (left)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], blue.stroke_width(2)));
    let sent = o.seconds.iter().map(|s| (s.t, rate(s.sent, s)));
    chart
        .draw_secondary_series(DashedLineSeries::new(sent, 8, 5, orange.stroke_width(2)))
        .map_err(err)?
        .label("sent / s (right, dashed)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], orange.stroke_width(2)));
    markers(&mut chart, o, 0.0, d_top)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Dashed verticals where the ramp ended and where sending stopped.
fn markers<DB, X, Y>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<X, Y>>,
    o: &Outcome,
    lo: f64,
    hi: f64,
) -> Result<()>
where
    DB: DrawingBackend,
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    let grey = RGBColor(90, 90, 90);
    for (x, what) in [(o.ramp_secs, "ramp done"), (o.duration_secs, "stop")] {
        chart
            .draw_series(DashedLineSeries::new(
                vec![(x, lo), (x, hi)],
                6,
                4,
                grey.stroke_width(1),
            ))
            .map_err(err)?;
        // Anchored at the top of the line, shifted a few pixels right and down.
        let label = EmptyElement::at((x, hi))
            + Text::new(what, (4, 4), ("sans-serif", 13).into_font().color(&grey));
        chart.draw_series(std::iter::once(label)).map_err(err)?;
    }
    Ok(())
}

/// Ticks at 1, 2 and 5 times each power of ten inside `lo..hi`: a log axis over less than
/// two decades would otherwise get only one or two labels.
fn ticks_125(lo: f64, hi: f64) -> Vec<f64> {
    let mut ticks = Vec::new();
    let mut decade = 10f64.powf(lo.log10().floor());
    while decade <= hi {
        for m in [1.0, 2.0, 5.0] {
            let v = decade * m;
            if (lo..=hi).contains(&v) {
                ticks.push(v);
            }
        }
        decade *= 10.0;
    }
    ticks
}

fn fmt_ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.0}s", v / 1000.0)
    } else if v >= 1.0 {
        format!("{v:.0}ms")
    } else {
        format!("{:.0}µs", v * 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{Interval, Percentiles};

    #[test]
    fn ticks_cover_the_range_in_1_2_5_steps() {
        assert_eq!(ticks_125(0.3, 30.0), [0.5, 1.0, 2.0, 5.0, 10.0, 20.0]);
        assert_eq!(ticks_125(1.0, 1.0), [1.0]);
    }

    #[test]
    fn draws_a_png() {
        let pct = |us| Percentiles {
            p50: us,
            p90: us * 2,
            p99: us * 4,
            p999: us * 8,
            max: us * 9,
            count: 10,
        };
        let seconds = (1..=6)
            .map(|t| Second {
                t: f64::from(t),
                len: 1.0,
                sent: 100,
                delivered: 3000,
                errors: 0,
                lost: 0,
                open: 31,
                delivery: (t <= 5).then(|| pct(400 * u64::from(t as u32))),
                lag_p99: Some(900),
            })
            .collect();
        let outcome = Outcome {
            totals: Interval::default(),
            seconds,
            started: 31,
            ramp_secs: 1.0,
            duration_secs: 5.0,
            held: 31,
            elapsed_secs: 6.0,
        };
        let path = std::env::temp_dir().join(format!("loadgen-plot-{}.png", std::process::id()));
        draw(&path, "test chart", &outcome).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        assert!(bytes.len() > 10_000, "a chart with text, not a blank image");
    }
}
