//! The distributions of `bench compare` as a PNG: one band per (pair, figure, peer) with a
//! dot per run and a bar at the median, on a shared log10 time axis. Drawn by hand (8x8
//! bitmap font) and written with the `png` crate: pure Rust, nothing from the system.

use crate::compare::{PeerResult, Report, Run};

const W: usize = 1100;
const LEFT: usize = 330;
const RIGHT: usize = 30;
const TOP: usize = 60;
const BAND: usize = 20;
const BG: [u8; 3] = [255, 255, 255];
const FG: [u8; 3] = [20, 20, 20];
const GRID: [u8; 3] = [225, 225, 225];
const PALETTE: [[u8; 3]; 4] = [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40]];

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Self {
        let mut px = Vec::with_capacity(w * h * 3);
        for _ in 0..w * h {
            px.extend_from_slice(&BG);
        }
        Canvas { w, h, px }
    }

    fn set(&mut self, x: usize, y: usize, c: [u8; 3]) {
        if x < self.w && y < self.h {
            let i = (y * self.w + x) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    fn rect(&mut self, x: usize, y: usize, w: usize, h: usize, c: [u8; 3]) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.set(xx, yy, c);
            }
        }
    }

    fn dot(&mut self, cx: usize, cy: usize, c: [u8; 3]) {
        for dy in -3i64..=3 {
            for dx in -3i64..=3 {
                if dx * dx + dy * dy <= 9 {
                    let (x, y) = (cx as i64 + dx, cy as i64 + dy);
                    if x >= 0 && y >= 0 {
                        self.set(x as usize, y as usize, c);
                    }
                }
            }
        }
    }

    /// Text with the 8x8 font, top-left at (x, y); returns the width drawn.
    fn text(&mut self, x: usize, y: usize, s: &str, c: [u8; 3]) -> usize {
        use font8x8::UnicodeFonts;
        let mut cx = x;
        for ch in s.chars() {
            let g = font8x8::BASIC_FONTS.get(ch).unwrap_or([0; 8]);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..8 {
                    if bits & (1 << col) != 0 {
                        self.set(cx + col, y + row, c);
                    }
                }
            }
            cx += 8;
        }
        cx - x
    }

    fn png(&self) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, self.w as u32, self.h as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut wr = enc.write_header().expect("PNG header to memory");
            wr.write_image_data(&self.px).expect("PNG data to memory");
        }
        out
    }
}

type Figure = (&'static str, fn(&Run) -> Option<u64>);

const FIGURES: [Figure; 4] = [
    ("first instr.", |r| r.entry_us),
    ("boot timer", |r| r.boot_us),
    ("agent ready", |r| r.ready_us),
    ("exit", |r| Some(r.exit_us)),
];

/// Bands to draw: (label, colour index, samples in us).
fn bands(report: &Report) -> Vec<(String, usize, Vec<u64>)> {
    let mut out = Vec::new();
    for pair in &report.pairs {
        for (fig, get) in FIGURES {
            let per: Vec<(&PeerResult, Vec<u64>)> = pair
                .peers
                .iter()
                .map(|p| (p, p.runs.iter().filter_map(get).collect::<Vec<_>>()))
                .collect();
            if per.iter().all(|(_, v)| v.is_empty()) {
                continue;
            }
            for (i, (p, v)) in per.into_iter().enumerate() {
                out.push((
                    format!("{} {}: {}", pair.name, fig, p.label),
                    i % PALETTE.len(),
                    v,
                ));
            }
        }
    }
    out
}

/// Renders the report's time distributions as a PNG.
pub fn render(report: &Report) -> Vec<u8> {
    let bands = bands(report);
    let h = TOP + BAND * bands.len().max(1) + 40;
    let mut c = Canvas::new(W, h);
    let m = &report.machine;
    c.text(
        10,
        8,
        &format!(
            "capsa vs peers, {} - {}, {} cores, Linux {}",
            report.date, m.cpu, m.cores, m.kernel
        ),
        FG,
    );
    c.text(
        10,
        22,
        &format!(
            "KVM: {}   (ms from spawn, log scale; dot = run, bar = median)",
            if m.pvm { "PVM" } else { "hardware" }
        ),
        FG,
    );
    let all: Vec<u64> = bands.iter().flat_map(|b| b.2.iter().copied()).collect();
    let (lo, hi) = match (all.iter().min(), all.iter().max()) {
        (Some(&a), Some(&b)) => (a.max(1), b.max(1)),
        _ => (1000, 10_000),
    };
    // Decades of microseconds spanning the data.
    let d0 = (lo as f64).log10().floor();
    let d1 = (hi as f64).log10().ceil().max(d0 + 1.0);
    let plot_w = (W - LEFT - RIGHT) as f64;
    let x_of = |us: u64| -> usize {
        let f = ((us.max(1) as f64).log10() - d0) / (d1 - d0);
        LEFT + (f * plot_w).round() as usize
    };
    let bottom = TOP + BAND * bands.len().max(1);
    let mut d = d0 as i32;
    while d as f64 <= d1 {
        let us = 10f64.powi(d) as u64;
        let x = x_of(us);
        c.rect(x, TOP - 4, 1, bottom - TOP + 4, GRID);
        let ms = us as f64 / 1000.0;
        let label = if ms >= 1.0 {
            format!("{ms:.0}")
        } else {
            format!("{ms}")
        };
        c.text(x.saturating_sub(label.len() * 4), TOP - 16, &label, FG);
        d += 1;
    }
    for (i, (label, colour, v)) in bands.iter().enumerate() {
        let y = TOP + i * BAND + BAND / 2;
        let col = PALETTE[*colour];
        let trimmed: String = label.chars().take((LEFT - 20) / 8).collect();
        c.text(10, y - 4, &trimmed, FG);
        c.rect(LEFT, y, W - LEFT - RIGHT, 1, GRID);
        for &us in v {
            c.dot(x_of(us), y, col);
        }
        if !v.is_empty() {
            let med = crate::stats::Summary::of(v).median;
            c.rect(x_of(med).saturating_sub(1), y - 8, 3, 17, FG);
        }
    }
    c.text(LEFT, bottom + 14, "ms since spawn (log scale)", FG);
    c.png()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canvas_writes_a_decodable_png() {
        let mut c = Canvas::new(40, 20);
        c.text(0, 0, "A1", FG);
        c.dot(30, 10, PALETTE[0]);
        let bytes = c.png();
        let dec = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut r = dec.read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size()];
        let info = r.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (40, 20));
        // The dot's centre has its colour; a corner is background; "A" left ink.
        let at = |x: usize, y: usize| &buf[(y * 40 + x) * 3..(y * 40 + x) * 3 + 3];
        assert_eq!(at(30, 10), &PALETTE[0]);
        assert_eq!(at(39, 19), &BG);
        assert!((0..8).any(|y| (0..8).any(|x| at(x, y) == FG)));
    }
}
