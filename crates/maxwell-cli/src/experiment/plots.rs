//! The plots of `report.md`, as SVG (plotters' SVG backend: text is left to the viewer's fonts).

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;

use maxwell_core::Tokens;

use super::metrics::Row;

/// The plot files, in the order `report.md` shows them, with what each shows.
pub(super) const FILES: [(&str, &str); 4] = [
    (
        "temperature.svg",
        "Temperature over time, baseline beside maxwell beside oracle (mean over runs).",
    ),
    (
        "work_rate.svg",
        "Claimed work rate (numbers per second) over time, per arm (mean over runs).",
    ),
    (
        "price.svg",
        "The clearing price of the maxwell arm (run 1).",
    ),
    (
        "balances.svg",
        "Each agent's balance in the maxwell arm (run 1); a leech's line ends at zero.",
    ),
];

/// One line of a chart.
type Series = (String, Vec<(f64, f64)>);

/// Writes the four plots into `dir`. `agents` are the roster's names and opening balances (each
/// balance line starts from its opening balance at 0 s).
pub(super) fn write_all(
    dir: &Path,
    rows: &[Row],
    agents: &[(String, Tokens)],
) -> anyhow::Result<()> {
    let arms = ["baseline", "maxwell", "oracle"];
    let per_arm = |f: fn(&Row) -> f64| -> Vec<Series> {
        arms.iter()
            .map(|arm| (arm.to_string(), mean_by_second(rows, arm, f)))
            .collect()
    };
    chart(
        &dir.join(FILES[0].0),
        "Temperature",
        "temperature (C)",
        &per_arm(|r| r.temperature_c),
    )?;
    chart(
        &dir.join(FILES[1].0),
        "Work rate (claimed)",
        "numbers sieved per second",
        &per_arm(|r| r.work_rate_claimed),
    )?;
    let first: Vec<&Row> = rows
        .iter()
        .filter(|r| r.arm == "maxwell" && r.run == 1)
        .collect();
    let price: Vec<(f64, f64)> = first
        .iter()
        .filter_map(|r| r.price.map(|p| (r.t_s as f64, p.0 as f64 / 1e6)))
        .collect();
    chart(
        &dir.join(FILES[2].0),
        "Clearing price (maxwell)",
        "JOULE per slot per quantum",
        &[("price".to_string(), price)],
    )?;
    let balances: Vec<Series> = agents
        .iter()
        .enumerate()
        .map(|(i, (n, funds))| {
            let pts = std::iter::once((0.0, funds.0 as f64 / 1e6))
                .chain(first.iter().filter_map(|r| {
                    r.agents
                        .as_ref()
                        .and_then(|a| a.get(i))
                        .map(|(b, _)| (r.t_s as f64, b.0 as f64 / 1e6))
                }))
                .collect();
            (n.clone(), pts)
        })
        .collect();
    chart(
        &dir.join(FILES[3].0),
        "Balances (maxwell)",
        "balance (JOULE)",
        &balances,
    )
}

/// The mean of `f` over runs, per second, for one arm.
fn mean_by_second(rows: &[Row], arm: &str, f: fn(&Row) -> f64) -> Vec<(f64, f64)> {
    let mut by: BTreeMap<u64, (f64, u32)> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.arm == arm) {
        let e = by.entry(r.t_s).or_insert((0.0, 0));
        e.0 += f(r);
        e.1 += 1;
    }
    by.into_iter()
        .map(|(t, (sum, n))| (t as f64, sum / f64::from(n)))
        .collect()
}

/// One line chart over time, with a legend.
fn chart(path: &Path, title: &str, y: &str, series: &[Series]) -> anyhow::Result<()> {
    let points = || series.iter().flat_map(|(_, p)| p.iter());
    let x_max = points().map(|p| p.0).fold(1.0, f64::max);
    let (mut lo, mut hi) = points().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
        (lo.min(p.1), hi.max(p.1))
    });
    if !lo.is_finite() || !hi.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(hi.abs() * 0.01).max(1e-6);
    let (lo, hi) = (lo - pad, hi + pad);
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    let draw = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| draw(&e))?;
    let mut c = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..x_max, lo..hi)
        .map_err(|e| draw(&e))?;
    c.configure_mesh()
        .x_desc("time (s)")
        .y_desc(y)
        .draw()
        .map_err(|e| draw(&e))?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        c.draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(|e| draw(&e))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| draw(&e))?;
    root.present().map_err(|e| draw(&e))?;
    Ok(())
}
