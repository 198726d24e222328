//! SVG plots of a run, simulated or real: each job's Slow-Down over time (top) and each
//! device's utilisation over time (bottom), as the manager saw them at its rounds. Devices are
//! named by the trace's unit (`GPU 0`, or `CPU shard 0` on a CPU rehearsal). And the plot of
//! the workload suite: each policy's distance from the lower bound per workload.

use std::path::Path;

use plotters::prelude::*;

use super::policy::PolicyKind;
use super::round::Trace;
use super::suite::SuiteRow;
use crate::{Error, Result};

/// Legends are drawn only up to this many series; beyond it they would hide the plot.
const MAX_LEGEND: usize = 16;

/// The plot as SVG text; `title` heads it (e.g. the policy and the file).
pub fn trace_svg(trace: &Trace, title: &str) -> Result<String> {
    let mut svg = String::new();
    draw(trace, title, &mut svg).map_err(|e| Error::invalid("plot", e))?;
    Ok(svg)
}

/// Writes [`trace_svg`] to `path`.
pub fn write_trace_svg(trace: &Trace, title: &str, path: &Path) -> Result<()> {
    let svg = trace_svg(trace, title)?;
    std::fs::write(path, svg).map_err(|e| Error::io(path, e))
}

fn draw(trace: &Trace, title: &str, out: &mut String) -> std::result::Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let t_max = trace
        .job_sd
        .iter()
        .chain(&trace.gpu_util)
        .flat_map(|s| s.iter().map(|p| p.0))
        .fold(0.0, f64::max)
        .max(1e-3);
    let sd_max = trace
        .job_sd
        .iter()
        .flat_map(|s| s.iter().map(|p| p.1))
        .filter(|v| v.is_finite())
        .fold(1.0, f64::max)
        * 1.05;

    let root = SVGBackend::with_string(out, (1100, 950)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root
        .titled(title, ("sans-serif", 22))
        .map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(460);

    let mut chart = ChartBuilder::on(&top)
        .caption("Slow-Down per job", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..t_max, 0.0..sd_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("Slow-Down")
        .draw()
        .map_err(|e| err(&e))?;
    for (i, series) in trace.job_sd.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let name = trace.job_names.get(i).cloned().unwrap_or_default();
        let anno = chart
            .draw_series(LineSeries::new(
                series.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| err(&e))?;
        if trace.job_sd.len() <= MAX_LEGEND {
            anno.label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
    }
    if trace.job_sd.len() <= MAX_LEGEND {
        legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    }

    let mut chart = ChartBuilder::on(&bottom)
        .caption(
            format!("{} utilisation over the last period", trace.unit),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..t_max, 0.0..105.0)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("utilisation (%)")
        .draw()
        .map_err(|e| err(&e))?;
    for (g, series) in trace.gpu_util.iter().enumerate() {
        let color = Palette99::pick(g + 7).to_rgba();
        let anno = chart
            .draw_series(LineSeries::new(
                series.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| err(&e))?;
        if trace.gpu_util.len() <= MAX_LEGEND {
            anno.label(format!("{} {g}", trace.unit))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
    }
    if trace.gpu_util.len() <= MAX_LEGEND {
        legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// The chart's series labels in the `position` corner, on a translucent white box.
fn legend<'a, DB, CT>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> std::result::Result<(), String>
where
    DB: DrawingBackend + 'a,
    CT: CoordTranslate,
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())
}

/// An SVG plot of each policy's `max_slowdown / bound` per workload of the suite
/// ([`super::suite`]), on a log scale.
pub fn suite_svg(rows: &[SuiteRow], policies: &[PolicyKind], title: &str) -> Result<String> {
    let mut svg = String::new();
    draw_suite(rows, policies, title, &mut svg).map_err(|e| Error::invalid("suite plot", e))?;
    Ok(svg)
}

fn draw_suite(
    rows: &[SuiteRow],
    policies: &[PolicyKind],
    title: &str,
    out: &mut String,
) -> std::result::Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let ratio = |r: &SuiteRow, p: usize| r.reports[p].max_slowdown / r.bound;
    let y_max = rows
        .iter()
        .flat_map(|r| (0..policies.len()).map(move |p| ratio(r, p)))
        .filter(|v| v.is_finite())
        .fold(1.0, f64::max)
        * 1.05;
    let root = SVGBackend::with_string(out, (1100, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(
            -0.5..rows.len() as f64 - 0.5,
            (0.9..y_max.max(1.0)).log_scale(),
        )
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("workload")
        .y_desc("max Slow-Down / lower bound (log scale)")
        .draw()
        .map_err(|e| err(&e))?;
    for (p, kind) in policies.iter().enumerate() {
        let color = Palette99::pick(p).to_rgba();
        let points: Vec<(f64, f64)> = rows
            .iter()
            .enumerate()
            .map(|(w, r)| (w as f64, ratio(r, p)))
            .collect();
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(1),
            ))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(points.iter().map(|&pt| Circle::new(pt, 4, color.filled())))
            .map_err(|e| err(&e))?
            .label(kind.name())
            .legend(move |(x, y)| Circle::new((x + 10, y), 4, color.filled()));
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_svg() {
        let mut trace = Trace::new(vec!["a".into(), "b".into()], 1, "GPU");
        trace.job_sd = vec![vec![(0.0, 1.0), (5.0, 1.5)], vec![(1.0, 1.0), (6.0, 2.0)]];
        trace.gpu_util = vec![vec![(5.0, 80.0), (10.0, 90.0)]];
        let svg = trace_svg(&trace, "test").unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..40.min(svg.len())]);
        assert!(svg.contains("GPU 0") && !svg.contains("CPU shard"));
        trace.unit = "CPU shard";
        let svg = trace_svg(&trace, "test").unwrap();
        assert!(
            svg.contains("CPU shard 0") && !svg.contains("GPU 0"),
            "{svg}"
        );
        assert!(trace_svg(&Trace::default(), "empty").is_ok());
    }
}
