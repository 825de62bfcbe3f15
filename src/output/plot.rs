//! The training-loss curve: raw loss faint, its moving average bold, on a log
//! axis when the loss falls by more than a decade. Plotters draws the lines;
//! text comes from the built-in bitmap font because plotters' own text needs a
//! TTF font feature.

use std::ops::Range;
use std::path::Path;

use image::{ExtendedColorType, Rgb, RgbImage};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::font::{CAP_HEIGHT, draw_text, text_width};
use super::{OutputError, write_png};

/// Width and height of the picture in pixels.
const SIZE: (u32, u32) = (960, 600);
const TICK_TEXT: u32 = 2;
const TITLE_TEXT: u32 = 3;
const TOP: u32 = 48;
const BOTTOM: u32 = 60;
const RIGHT: u32 = 24;
/// Gap between the frame and tick labels.
const GAP: i64 = 10;
const INK: Rgb<u8> = Rgb([0, 0, 0]);
const LINE: RGBColor = RGBColor(31, 90, 170);
const GRID: RGBColor = RGBColor(225, 225, 225);

/// Plots `points` (step, loss) as a PNG at `path` (atomically), 960x600.
/// Points need not be sorted; non-finite losses are skipped. With `smoothed`
/// the raw loss is faint and an exponential moving average is drawn bold over
/// it; otherwise the raw loss alone is drawn as a solid thin line.
pub fn plot_loss_curve(
    path: &Path,
    points: &[(u64, f64)],
    smoothed: bool,
) -> Result<(), OutputError> {
    let raw: Vec<(f64, f64)> = points
        .iter()
        .filter(|(_, loss)| loss.is_finite())
        .map(|&(step, loss)| (step as f64, loss))
        .collect();
    if raw.is_empty() {
        return Err(OutputError::invalid(path, "no finite loss values to plot"));
    }
    let (first, last) = bounds(raw.iter().map(|p| p.0));
    let (low, high) = bounds(raw.iter().map(|p| p.1));
    let log = low > 0.0 && high / low > 10.0;
    let y = if log {
        log_axis(low, high)
    } else {
        linear_axis(low, high, 0.05, 0.0)
    };
    let x = linear_axis(first, last, 0.0, 1.0);
    let plotted = |(step, loss): (f64, f64)| (step, if log { loss.log10() } else { loss });

    let raw_points = raw.iter().copied().map(plotted).collect();
    let curves = if smoothed {
        let average = ema(raw.iter().map(|p| p.1), raw.len());
        let average = raw
            .iter()
            .zip(average)
            .map(|(p, loss)| plotted((p.0, loss)));
        vec![
            (raw_points, LINE.mix(0.3).stroke_width(1), "raw"),
            (average.collect(), LINE.stroke_width(3), "EMA"),
        ]
    } else {
        vec![(raw_points, LINE.stroke_width(1), "raw")]
    };
    let image = render(&x, &y, &curves, "training loss", "step")
        .map_err(|e| OutputError::invalid(path, format!("drawing the plot: {e}")))?;
    write_png(path, image.as_raw(), SIZE, ExtendedColorType::Rgb8)
}

/// One panel of [`plot_panels`]: a title, the x axis's name and named curves of (x, y) points.
pub struct Panel {
    pub title: String,
    pub x_label: &'static str,
    pub curves: Vec<(&'static str, Vec<(f64, f64)>)>,
}

/// Colours of the curves of a panel, in order.
const PALETTE: [RGBColor; 4] = [
    LINE,
    RGBColor(200, 80, 30),
    RGBColor(40, 150, 70),
    RGBColor(120, 60, 160),
];

/// Plots `panels` one above the other (960x600 each) as a PNG at `path`, atomically: each a
/// linear y axis over its curves, with a legend.
pub fn plot_panels(path: &Path, panels: &[Panel]) -> Result<(), OutputError> {
    let failed = |reason: String| OutputError::invalid(path, reason);
    if panels.is_empty() {
        return Err(failed("nothing to plot".into()));
    }
    let (width, height) = SIZE;
    let mut picture = RgbImage::new(width, height * panels.len() as u32);
    for (k, panel) in panels.iter().enumerate() {
        let points = || panel.curves.iter().flat_map(|(_, p)| p.iter());
        if points().next().is_none() || points().any(|(x, y)| !x.is_finite() || !y.is_finite()) {
            return Err(failed(format!(
                "panel {:?}: no points, or points that are not finite",
                panel.title
            )));
        }
        let (first, last) = bounds(points().map(|p| p.0));
        let (low, high) = bounds(points().map(|p| p.1));
        let x = linear_axis(first, last, 0.0, 1.0);
        let y = linear_axis(low, high.max(low + 1e-9), 0.05, 0.0);
        let curves: Vec<Curve> = panel
            .curves
            .iter()
            .zip(PALETTE.iter().cycle())
            .map(|((name, points), colour)| (points.clone(), colour.stroke_width(3), *name))
            .collect();
        let image = render(&x, &y, &curves, &panel.title, panel.x_label)
            .map_err(|e| failed(format!("drawing the plot: {e}")))?;
        image::imageops::replace(&mut picture, &image, 0, i64::from(height) * k as i64);
    }
    write_png(
        path,
        picture.as_raw(),
        (width, height * panels.len() as u32),
        ExtendedColorType::Rgb8,
    )
}

/// Smallest and largest of `values`.
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    })
}

/// A curve in plot coordinates, its line style and its legend name.
type Curve = (Vec<(f64, f64)>, ShapeStyle, &'static str);

/// Text to draw once plotters has released the buffer: (text, top-left, scale).
type Label = (String, (i64, i64), u32);

/// Draws the grid, `curves`, frame and (for several curves) a legend with
/// plotters, then all text with the bitmap font.
fn render(
    x: &Axis,
    y: &Axis,
    curves: &[Curve],
    title: &str,
    x_label: &str,
) -> Result<RgbImage, String> {
    let fail = |e: DrawingAreaErrorKind<_>| e.to_string();
    let left = y.ticks.iter().map(|(_, t)| text_width(t, TICK_TEXT)).max();
    let (width, height) = SIZE;
    let mut buffer = vec![255; (width * height * 3) as usize];
    let mut labels = Vec::new();
    {
        let root = BitMapBackend::with_buffer(&mut buffer, SIZE).into_drawing_area();
        let mut chart = ChartBuilder::on(&root)
            .margin_top(TOP)
            .margin_bottom(BOTTOM)
            .margin_left(left.unwrap_or(0) + 3 * GAP as u32)
            .margin_right(RIGHT)
            .build_cartesian_2d(x.range.clone(), y.range.clone())
            .map_err(fail)?;
        let (x0, x1, y0, y1) = (x.range.start, x.range.end, y.range.start, y.range.end);
        let verticals = x.ticks.iter().map(|&(t, _)| [(t, y0), (t, y1)]);
        let horizontals = y.ticks.iter().map(|&(t, _)| [(x0, t), (x1, t)]);
        for line in verticals.chain(horizontals) {
            chart
                .draw_series(LineSeries::new(line, GRID))
                .map_err(fail)?;
        }
        for (points, style, _) in curves {
            chart
                .draw_series(LineSeries::new(points.iter().copied(), *style))
                .map_err(fail)?;
        }
        let frame = Rectangle::new([(x0, y0), (x1, y1)], BLACK);
        chart.plotting_area().draw(&frame).map_err(fail)?;

        let text_height = i64::from(CAP_HEIGHT * TICK_TEXT);
        for (t, label) in &x.ticks {
            let (px, py) = chart.backend_coord(&(*t, y0));
            let half = i64::from(text_width(label, TICK_TEXT) / 2);
            let at = (i64::from(px) - half, i64::from(py) + GAP);
            labels.push((label.clone(), at, TICK_TEXT));
        }
        for (t, label) in &y.ticks {
            let (px, py) = chart.backend_coord(&(x0, *t));
            let w = i64::from(text_width(label, TICK_TEXT));
            let at = (i64::from(px) - GAP - w, i64::from(py) - text_height / 2);
            labels.push((label.clone(), at, TICK_TEXT));
        }
        let (pixels_x, pixels_y) = chart.plotting_area().get_pixel_range();
        let centre = i64::from(pixels_x.start + pixels_x.end) / 2;
        let below = i64::from(pixels_y.end) + 2 * GAP + text_height;
        let label_x = centre - i64::from(text_width(x_label, TICK_TEXT) / 2);
        labels.push((x_label.into(), (label_x, below), TICK_TEXT));
        let title_x = (i64::from(width) - i64::from(text_width(title, TITLE_TEXT))) / 2;
        labels.push((title.into(), (title_x, 12), TITLE_TEXT));

        if curves.len() > 1 {
            // Top-right corner, where a falling loss leaves room.
            let corner = (pixels_x.end - 16, pixels_y.start + 16);
            labels.extend(draw_legend(&root, corner, curves).map_err(fail)?);
        }
        root.present().map_err(fail)?;
    }
    let mut image = RgbImage::from_raw(width, height, buffer).expect("buffer holds the image");
    for (text, at, scale) in &labels {
        draw_text(&mut image, *at, text, *scale, INK);
    }
    Ok(image)
}

/// A boxed legend with its top-right corner at `(right, top)` pixels: one
/// line swatch per curve. Returns the curve names to draw beside the swatches.
fn draw_legend(
    root: &DrawingArea<BitMapBackend, Shift>,
    (right, top): (i32, i32),
    curves: &[Curve],
) -> DrawResult<Vec<Label>, BitMapBackend<'static>> {
    let names = curves
        .iter()
        .map(|(_, _, name)| text_width(name, TICK_TEXT));
    let left = right - 54 - names.max().unwrap_or(0) as i32;
    let bottom = top + 24 * curves.len() as i32 - 2;
    root.draw(&Rectangle::new(
        [(left, top), (right, bottom)],
        WHITE.filled(),
    ))?;
    root.draw(&Rectangle::new([(left, top), (right, bottom)], GRID))?;
    let text_height = i64::from(CAP_HEIGHT * TICK_TEXT);
    let mut labels = Vec::new();
    for (k, (_, style, name)) in curves.iter().enumerate() {
        let line_y = top + 10 + 24 * k as i32;
        let swatch = [(left + 8, line_y), (left + 38, line_y)];
        root.draw(&PathElement::new(swatch, *style))?;
        let at = (i64::from(left) + 46, i64::from(line_y) - text_height / 2);
        labels.push((name.to_string(), at, TICK_TEXT));
    }
    Ok(labels)
}

/// An axis in plot coordinates (log10 of the value on a log axis) with its
/// ticks as (position, label).
#[derive(Debug, PartialEq)]
struct Axis {
    range: Range<f64>,
    ticks: Vec<(f64, String)>,
}

/// About six ticks at multiples of 1, 2 or 5 times a power of ten, no finer
/// than `min_step`, over `[low, high]` widened by `pad` of its span.
fn linear_axis(low: f64, high: f64, pad: f64, min_step: f64) -> Axis {
    let (low, high) = if high > low {
        let margin = pad * (high - low);
        (low - margin, high + margin)
    } else {
        (low - 1.0, high + 1.0)
    };
    let raw = (high - low) / 6.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let nice = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .find(|m| m * magnitude >= raw);
    let step = (nice.unwrap_or(10.0) * magnitude).max(min_step);
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    let ticks = ((low / step).ceil() as i64..=(high / step).floor() as i64)
        .map(|k| {
            let v = k as f64 * step;
            let label = if step >= 1000.0 && k != 0 && v % 1000.0 == 0.0 {
                format!("{}k", v / 1000.0)
            } else {
                format!("{v:.decimals$}")
            };
            (v, label)
        })
        .collect();
    Axis {
        range: low..high,
        ticks,
    }
}

/// A log10 axis over `[low, high]` (both > 0) with ticks at powers of ten, and
/// at 2 and 5 times them when the range spans under three decades.
fn log_axis(low: f64, high: f64) -> Axis {
    let (lo, hi) = (low.log10(), high.log10());
    let margin = 0.05 * (hi - lo);
    let range = lo - margin..hi + margin;
    let mantissas: &[u32] = if hi - lo < 3.0 { &[1, 2, 5] } else { &[1] };
    let ticks = (range.start.floor() as i32..=range.end.ceil() as i32)
        .flat_map(|e| mantissas.iter().map(move |m| format!("{m}e{e}")))
        .map(|text| text.parse::<f64>().expect("a float literal"))
        .filter(|v| range.contains(&v.log10()))
        .map(|v| {
            let label = if (1e-3..1e6).contains(&v) {
                format!("{v}")
            } else {
                format!("{v:e}")
            };
            (v.log10(), label)
        })
        .collect();
    Axis { range, ticks }
}

/// Exponential moving average of `len` losses, started at the first loss so
/// that early values are not pulled toward zero. The window is a twentieth of
/// the run: alpha = 2 / (len / 20 + 1).
fn ema(losses: impl Iterator<Item = f64>, len: usize) -> Vec<f64> {
    let alpha = 2.0 / ((len / 20).max(1) as f64 + 1.0);
    let mut average = None;
    losses
        .map(|loss| {
            let next = average.map_or(loss, |a: f64| a + alpha * (loss - a));
            average = Some(next);
            next
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_plot_is_a_decodable_png_of_fixed_size() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        let points: Vec<(u64, f64)> = (0..500)
            .map(|s| {
                (
                    s * 10,
                    2.0 * (-(s as f64) / 80.0).exp() + 0.01 + 0.005 * (s as f64).sin(),
                )
            })
            .chain([(5000, f64::NAN)])
            .collect();
        for smoothed in [true, false] {
            let path = dir.join(format!("loss-{smoothed}.png"));
            plot_loss_curve(&path, &points, smoothed).unwrap();
            let image = image::open(&path).unwrap();
            assert_eq!((image.width(), image.height()), SIZE);
        }
    }

    #[test]
    fn loss_plot_without_finite_points_is_an_error() {
        let path = Path::new("never-written-loss.png");
        let err = plot_loss_curve(path, &[(0, f64::NAN)], true).unwrap_err();
        assert!(err.to_string().contains("never-written-loss.png"), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn linear_ticks_are_round_steps_inside_the_range() {
        let axis = linear_axis(0.0, 20_000.0, 0.0, 1.0);
        let labels: Vec<_> = axis.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["0", "5k", "10k", "15k", "20k"]);
        let axis = linear_axis(0.12, 0.31, 0.0, 0.0);
        let labels: Vec<_> = axis.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["0.15", "0.20", "0.25", "0.30"]);
    }

    #[test]
    fn log_ticks_are_round_values_inside_the_range() {
        let axis = log_axis(0.004, 2.5);
        let labels: Vec<_> = axis.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(
            labels,
            [
                "0.005", "0.01", "0.02", "0.05", "0.1", "0.2", "0.5", "1", "2"
            ]
        );
        let axis = log_axis(1e-6, 10.0);
        let labels: Vec<_> = axis.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(
            labels,
            ["1e-6", "1e-5", "1e-4", "0.001", "0.01", "0.1", "1", "10"]
        );
    }

    #[test]
    fn ema_starts_at_the_first_loss_and_follows_a_step() {
        // 60 points: a window of 3, alpha = 0.5.
        let losses = (0..60).map(|i| if i < 30 { 1.0 } else { 0.0 });
        let average = ema(losses, 60);
        assert_eq!(average[..30], [1.0; 30]);
        assert_eq!(average[30..33], [0.5, 0.25, 0.125]);
    }
}
