//! clipping.svg: one seed's pair of runs on the memory task, the cliff marked.

use super::Run;
use crate::plot::{log_ticks, tick_label};
use plotters::prelude::*;
use std::path::Path;

/// At most this many points per line: longer records are drawn in buckets (the mean loss
/// of each bucket, the largest norm of each, so a one-step spike stays visible).
const POINTS: usize = 500;

fn buckets(values: &[(usize, f64)], take_max: bool) -> Vec<(f64, f64)> {
    let finite: Vec<(usize, f64)> = values.iter().copied().filter(|v| v.1.is_finite()).collect();
    let size = finite.len().div_ceil(POINTS).max(1);
    finite
        .chunks(size)
        .map(|c| {
            let x = c[c.len() / 2].0 as f64;
            let y = if take_max {
                c.iter().map(|v| v.1).fold(f64::NEG_INFINITY, f64::max)
            } else {
                c.iter().map(|v| v.1).sum::<f64>() / c.len() as f64
            };
            (x, y)
        })
        .collect()
}

/// The lines of clipping.svg as data, for clipping.json (the page draws these): each
/// run's loss (the mean of each bucket of steps) and gradient norm before clipping (the
/// largest of each bucket), as `[step, value]` pairs, with the seed, the clipping
/// threshold and the unclipped run's spike.
pub fn pair_json(unclipped: &Run, clipped: &Run, clip: f64) -> serde_json::Value {
    let series = |r: &Run| {
        let losses: Vec<(usize, f64)> = (1..).zip(r.losses.iter().copied()).collect();
        let norms: Vec<(usize, f64)> = r.norms.iter().map(|n| (n.0, n.1)).collect();
        serde_json::json!({
            "clip": r.clip,
            "loss": buckets(&losses, false),
            "grad_norm": buckets(&norms, true),
        })
    };
    serde_json::json!({
        "seed": unclipped.seed,
        "clip": clip,
        "bucket": unclipped.losses.len().div_ceil(POINTS).max(1),
        "spike_step": unclipped.spike.as_ref().map(|s| s.step),
        "unclipped": series(unclipped),
        "clipped": series(clipped),
    })
}

/// Training loss (left, both runs on one axis) and gradient norm before clipping (right,
/// log axis, with the clipping threshold), the unclipped run's spike marked on both.
pub fn plot_pair(path: &Path, unclipped: &Run, clipped: &Run, clip: f64) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1200, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(600);
    let steps = (unclipped.losses.len().max(clipped.losses.len()) + 1).max(2) as f64;
    let losses = |r: &Run| {
        // the loss of step k (numbered from 1) is the one computed before its update
        let v: Vec<(usize, f64)> = (1..).zip(r.losses.iter().copied()).collect();
        buckets(&v, false)
    };
    let norms = |r: &Run| {
        let v: Vec<(usize, f64)> = r.norms.iter().map(|n| (n.0, n.1)).collect();
        buckets(&v, true)
    };
    let (lu, lc) = (losses(unclipped), losses(clipped));
    let max_loss = lu.iter().chain(&lc).map(|p| p.1).fold(1.0, f64::max) * 1.05;
    let bucket = unclipped.losses.len().div_ceil(POINTS).max(1);
    let mut chart = ChartBuilder::on(&left)
        .caption(
            format!(
                "training loss (mean of {bucket} steps), seed {}",
                unclipped.seed
            ),
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..steps, 0.0..max_loss)?;
    chart
        .configure_mesh()
        .light_line_style(RGBColor(238, 238, 238))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .x_desc("step")
        .y_desc("cross-entropy (nats)")
        .draw()?;
    let spike = unclipped.spike.as_ref();
    if let Some(s) = spike {
        chart.draw_series(DashedLineSeries::new(
            [(s.step as f64, 0.0), (s.step as f64, max_loss)],
            4,
            4,
            RGBColor(150, 150, 150).into(),
        ))?;
    }
    for (points, color, label) in [
        (lu, RED, "no clipping".to_string()),
        (lc, BLUE, format!("clipped at norm {clip}")),
    ] {
        chart
            .draw_series(LineSeries::new(points, color))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()?;

    let (nu, nc) = (norms(unclipped), norms(clipped));
    let lo = nu.iter().chain(&nc).map(|p| p.1).filter(|v| *v > 0.0);
    let lo = lo.fold(f64::INFINITY, f64::min).min(clip) / 2.0;
    let hi = nu.iter().chain(&nc).map(|p| p.1).fold(clip, f64::max) * 3.0;
    let mut chart = ChartBuilder::on(&right)
        .caption(
            format!("gradient norm before clipping (largest of {bucket} steps)"),
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(
            0.0..steps,
            (lo..hi).log_scale().with_key_points(log_ticks(lo, hi)),
        )?;
    chart
        .configure_mesh()
        .light_line_style(RGBColor(238, 238, 238))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .x_desc("step")
        .y_label_formatter(&|v| tick_label(*v))
        .draw()?;
    for (points, color) in [(nu, RED), (nc, BLUE)] {
        chart.draw_series(LineSeries::new(
            points.into_iter().filter(|p| p.1 > 0.0),
            color,
        ))?;
    }
    chart
        .draw_series(DashedLineSeries::new(
            [(0.0, clip), (steps, clip)],
            6,
            4,
            BLACK.into(),
        ))?
        .label(format!("clipping threshold {clip}"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    if let Some(s) = spike {
        let at = (s.step as f64, s.norm);
        chart.draw_series([Circle::new(at, 7, RED.stroke_width(2))])?;
        let label = format!("step {}: {:.0}× the median before", s.step, s.ratio);
        let x = if s.step as f64 > steps * 0.6 {
            at.0 - steps * 0.45
        } else {
            at.0 + steps * 0.02
        };
        chart.draw_series([Text::new(label, (x, s.norm * 1.4), ("sans-serif", 15))])?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
