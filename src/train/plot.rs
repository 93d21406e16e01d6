//! The loss and validation curves as an SVG (plotters; SVG needs no font files).

use super::EvalRecord;
use crate::error::{Error, Result};
use plotters::prelude::*;
use std::path::Path;

/// Draws training and validation loss (left) and validation accuracy (right) against
/// epochs into an SVG file.
pub fn plot_history(history: &[EvalRecord], path: &Path) -> Result<()> {
    let err = |e: String| Error::Format {
        path: path.display().to_string(),
        msg: format!("plot: {e}"),
    };
    let root = SVGBackend::new(path, (960, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let (left, right) = root.split_horizontally(480);
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
    let mut acc = ChartBuilder::on(&right)
        .caption("validation accuracy", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..max_epoch, 0.0..1.0)
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
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}
