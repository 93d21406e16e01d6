//! The loss and validation curves as an SVG (plotters; SVG needs no font files).

use chainrule::error::{Error, Result};
use chainrule::train::EvalRecord;
use plotters::prelude::*;
use std::path::Path;

/// Draws training and validation loss (left) and the validation metric (middle) against
/// epochs, and every step's global gradient norm before clipping on a log scale (right,
/// clipped steps in red), into an SVG file.
pub fn plot_history(
    history: &[EvalRecord],
    step_norms: &[(usize, f64, bool)],
    path: &Path,
) -> Result<()> {
    let err = |e: String| Error::Parse {
        line: None,
        path: path.display().to_string(),
        msg: format!("plot: {e}"),
    };
    let root = SVGBackend::new(path, (1440, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let (left, rest) = root.split_horizontally(480);
    let (right, norms) = rest.split_horizontally(480);
    let max_epoch = history.iter().map(|r| r.epoch).fold(1.0, f64::max);
    let losses = history
        .iter()
        .flat_map(|r| [r.train_loss, r.val_loss])
        .filter(|v| v.is_finite());
    let max_loss = losses.fold(1e-3, f64::max) * 1.05;
    let mut chart = ChartBuilder::on(&left)
        .caption("loss", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..max_epoch, 0.0..max_loss)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .draw()
        .map_err(|e| err(e.to_string()))?;
    chart
        .draw_series(LineSeries::new(
            history.iter().map(|r| (r.epoch, r.train_loss)),
            &BLUE,
        ))
        .map_err(|e| err(e.to_string()))?
        .label("train")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(
            history.iter().map(|r| (r.epoch, r.val_loss)),
            &RED,
        ))
        .map_err(|e| err(e.to_string()))?
        .label("validation")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    let values = history
        .iter()
        .map(|r| r.val_metric)
        .filter(|v| v.is_finite());
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    let range = if lo >= 0.0 && hi <= 1.0 || lo > hi {
        0.0..1.0
    } else {
        let pad = ((hi - lo) * 0.05).max(1e-3);
        (lo - pad)..(hi + pad)
    };
    let mut acc = ChartBuilder::on(&right)
        .caption("validation metric", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..max_epoch, range)
        .map_err(|e| err(e.to_string()))?;
    acc.configure_mesh()
        .x_desc("epoch")
        .draw()
        .map_err(|e| err(e.to_string()))?;
    acc.draw_series(LineSeries::new(
        history.iter().map(|r| (r.epoch, r.val_metric)),
        &GREEN,
    ))
    .map_err(|e| err(e.to_string()))?;
    draw_norms(&norms, step_norms).map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// The gradient-norm panel: every step's norm before clipping, log scale.
fn draw_norms<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    step_norms: &[(usize, f64, bool)],
) -> std::result::Result<(), String> {
    let finite = || step_norms.iter().filter(|s| s.1.is_finite() && s.1 > 0.0);
    let (lo, hi) = finite().fold((f64::INFINITY, 0.0f64), |(a, b), s| {
        (a.min(s.1), b.max(s.1))
    });
    let (lo, hi) = if lo <= hi {
        (lo / 1.5, hi * 1.5)
    } else {
        (1e-3, 1.0)
    };
    let first = step_norms.first().map_or(0, |s| s.0);
    let last = step_norms.last().map_or(1, |s| s.0).max(first + 1);
    let mut chart = ChartBuilder::on(area)
        .caption("gradient norm (before clipping)", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(
            first as f64..last as f64,
            (lo..hi).log_scale().with_key_points(log_ticks(lo, hi)),
        )
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_label_formatter(&|v| tick_label(*v))
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new(finite().map(|s| (s.0 as f64, s.1)), &BLUE))
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(
            finite()
                .filter(|s| s.2)
                .map(|s| Circle::new((s.0 as f64, s.1), 2, RED.filled())),
        )
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Round values for a log axis over `[lo, hi]`: powers of ten over wide ranges, 1-2-5
/// steps over a few decades, finer steps within one, each rounded to three significant
/// digits (so no label reads `0.7000000000000001`) and none twice.
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    if !(lo > 0.0 && hi > lo && hi.is_finite()) {
        return Vec::new();
    }
    let (a, b) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let decades = (hi / lo).log10();
    let steps: &[f64] = if decades > 4.0 {
        &[1.0]
    } else if decades > 1.2 {
        &[1.0, 2.0, 5.0]
    } else {
        &[1.0, 1.5, 2.0, 3.0, 5.0, 7.0]
    };
    let mut out: Vec<f64> = Vec::new();
    for d in a..=b {
        for m in steps {
            let t: f64 = format!("{:.2e}", m * 10f64.powi(d)).parse().unwrap_or(0.0);
            if t >= lo * (1.0 - 1e-9) && t <= hi * (1.0 + 1e-9) && out.last() != Some(&t) {
                out.push(t);
            }
        }
    }
    out
}

/// A tick value as a short label: at most three significant digits, no trailing zeros,
/// an exponent for very small or large values (`0.3`, `1`, `25`, `1e-5`).
pub fn tick_label(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        return "0".into();
    }
    if (1e-3..1e5).contains(&a) {
        let digits = (2 - a.log10().floor() as i32).max(0) as usize;
        let s = format!("{v:.digits$}");
        let s = if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.')
        } else {
            &s
        };
        return s.to_string();
    }
    let s = format!("{v:.2e}");
    let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
    let m = m.trim_end_matches('0').trim_end_matches('.');
    format!("{m}e{e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_axis_labels_are_round_and_distinct() {
        for (lo, hi) in [
            (0.2, 1.6),
            (0.35, 0.9),
            (1e-3, 40.0),
            (1e-9, 1e3),
            (2.0, 2.5),
        ] {
            let ticks = log_ticks(lo, hi);
            let labels: Vec<String> = ticks.iter().map(|&t| tick_label(t)).collect();
            let mut unique = labels.clone();
            unique.dedup();
            assert_eq!(labels, unique, "{lo}..{hi}");
            for l in &labels {
                assert!(l.len() <= 6, "{lo}..{hi}: {l}");
            }
            assert!(ticks.iter().all(|&t| t >= lo * 0.999 && t <= hi * 1.001));
        }
        assert_eq!(
            log_ticks(0.2, 1.6)
                .iter()
                .map(|&t| tick_label(t))
                .collect::<Vec<_>>(),
            ["0.2", "0.3", "0.5", "0.7", "1", "1.5"]
        );
        assert_eq!(tick_label(0.7000000000000001), "0.7");
        assert_eq!(tick_label(1e-5), "1e-5");
        assert_eq!(tick_label(250.0), "250");
    }
}
