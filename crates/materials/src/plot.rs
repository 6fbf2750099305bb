//! A small PNG plotter for the discovery loop's per-round metrics (no plotting library here): 2 x 3
//! panels, rounds on the x axis, one metric each, in the order hit rate, prevalence, DAF, F1, MAE
//! before training, cumulative stable found; points with Wilson 95% bars where the metric has an
//! interval, a grey 25 meV/atom series beside the hit rate and prevalence. Each panel's y axis runs
//! from 0 to its largest value (rates: to 1); faint lines mark quarters of it. No text: the numbers
//! are in `metrics.jsonl`.

use serde_json::Value;

const PW: usize = 240;
const PH: usize = 160;
const MARGIN: usize = 14;

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<[u8; 3]>,
}

impl Canvas {
    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            self.px[y as usize * self.w + x as usize] = c;
        }
    }
    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3]) {
        let n = (x1 - x0).abs().max((y1 - y0).abs()).max(1);
        for i in 0..=n {
            self.set(x0 + (x1 - x0) * i / n, y0 + (y1 - y0) * i / n, c);
        }
    }
    fn dot(&mut self, x: i64, y: i64, c: [u8; 3]) {
        for dx in -2..=2 {
            for dy in -2..=2 {
                self.set(x + dx, y + dy, c);
            }
        }
    }
}

/// One series point: value and optional interval.
type Point = (f64, Option<(f64, f64)>);

fn series(rounds: &[&Value], key: &str) -> Vec<Option<Point>> {
    rounds
        .iter()
        .map(|m| {
            let v = &m[key];
            if let Some(x) = v.as_f64() {
                return Some((x, None));
            }
            let x = v["value"].as_f64()?;
            let ci = v["ci95"].as_array().and_then(|a| Some((a.first()?.as_f64()?, a.get(1)?.as_f64()?)));
            Some((x, ci))
        })
        .collect()
}

/// The PNG bytes of the metrics figure.
pub fn metrics_png(rounds: &[&Value]) -> Vec<u8> {
    let mut c = Canvas { w: 3 * PW, h: 2 * PH, px: vec![[255; 3]; 3 * PW * 2 * PH] };
    let panels: [(&[&str], bool); 6] = [
        (&["hit_rate", "hit_rate_25mev"], true),
        (&["prevalence", "prevalence_25mev"], true),
        (&["daf", "daf_25mev"], false),
        (&["f1", "precision", "recall"], true),
        (&["mae_before_training"], false),
        (&["discovered_cumulative", "stable_on_hull"], false),
    ];
    let colours = [[200, 30, 30], [150, 150, 150], [30, 90, 200]];
    let n = rounds.len().max(1);
    for (p, (keys, unit)) in panels.iter().enumerate() {
        let (ox, oy) = ((p % 3) * PW, (p / 3) * PH);
        let all: Vec<Vec<Option<Point>>> = keys.iter().map(|k| series(rounds, k)).collect();
        let ymax = if *unit {
            1.0
        } else {
            all.iter().flatten().flatten().map(|(x, _)| *x).fold(0.0f64, f64::max).max(1e-9) * 1.1
        };
        let (x0, x1) = ((ox + MARGIN) as i64, (ox + PW - MARGIN) as i64);
        let (y0, y1) = ((oy + PH - MARGIN) as i64, (oy + MARGIN) as i64);
        for q in 1..=4 {
            let y = y0 - (y0 - y1) * q / 4;
            c.line((x0, y), (x1, y), [230, 230, 230]);
        }
        c.line((x0, y0), (x1, y0), [0; 3]);
        c.line((x0, y0), (x0, y1), [0; 3]);
        let xat = |i: usize| x0 + (x1 - x0) * (2 * i as i64 + 1) / (2 * n as i64);
        let yat = |v: f64| y0 - ((y0 - y1) as f64 * (v / ymax).clamp(0.0, 1.0)) as i64;
        for i in 0..n {
            c.line((xat(i), y0), (xat(i), y0 + 4), [0; 3]);
        }
        for (s, pts) in all.iter().enumerate() {
            let col = colours[s % 3];
            let shift = 4 * s as i64;
            let mut prev: Option<(i64, i64)> = None;
            for (i, pt) in pts.iter().enumerate() {
                let Some((v, ci)) = pt else {
                    prev = None;
                    continue;
                };
                let (x, y) = (xat(i) + shift, yat(*v));
                if let Some((lo, hi)) = ci {
                    c.line((x, yat(*lo)), (x, yat(*hi)), col);
                    c.line((x - 3, yat(*lo)), (x + 3, yat(*lo)), col);
                    c.line((x - 3, yat(*hi)), (x + 3, yat(*hi)), col);
                }
                if let Some(p) = prev {
                    c.line(p, (x, y), col);
                }
                c.dot(x, y, col);
                prev = Some((x, y));
            }
        }
    }
    encode_png(&c)
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend((data.len() as u32).to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    out.extend(kind);
    out.extend(data);
    out.extend(crc.sum().to_be_bytes());
}

fn encode_png(c: &Canvas) -> Vec<u8> {
    use std::io::Write;
    let mut raw = Vec::with_capacity(c.h * (1 + 3 * c.w));
    for y in 0..c.h {
        raw.push(0);
        for x in 0..c.w {
            raw.extend(c.px[y * c.w + x]);
        }
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&raw).expect("in memory");
    let idat = z.finish().expect("in memory");
    let mut out = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
    let mut ihdr = Vec::new();
    ihdr.extend((c.w as u32).to_be_bytes());
    ihdr.extend((c.h as u32).to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The PNG has the signature, the size in IHDR, and a zlib stream that inflates to the rows.
    #[test]
    fn png_is_well_formed() {
        let m = serde_json::json!({"round": 1, "hit_rate": {"value": 0.5, "ci95": [0.2, 0.8]}, "daf": 2.0});
        let png = metrics_png(&[&m, &m]);
        assert_eq!(&png[..8], &[0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a]);
        assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 3 * PW as u32);
        assert_eq!(u32::from_be_bytes(png[20..24].try_into().unwrap()), 2 * PH as u32);
        let len = u32::from_be_bytes(png[33..37].try_into().unwrap()) as usize;
        assert_eq!(&png[37..41], b"IDAT");
        let mut d = flate2::read::ZlibDecoder::new(&png[41..41 + len]);
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut d, &mut raw).unwrap();
        assert_eq!(raw.len(), 2 * PH * (1 + 9 * PW));
    }
}
