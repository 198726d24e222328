//! `groundtruth.txt` files and frame folders (`tracker::dataset`): the sequence layouts, the
//! ground truth, and the frames' decoders.

use std::io::Cursor;
use std::path::Path;

use attnrt::tracker::dataset::{GroundTruth, Sequence, decode_frame, find_sequences};
use proptest::prelude::*;

use crate::harness::{bounded, config, damaged, damaged_text};

const GROUNDTRUTH: &[&str] = &[
    "10,20,30,40\n11,21,31,41\n12.5,22.25,30,40\n",
    "10\t20\t30\t40\r\n11 21 31 41\r\nNaN,NaN,NaN,NaN\n0,0,0,0\n\n",
    "1.5e2,2e1,3,4\n-5,-6,7,8\n",
];

proptest! {
    #![proptest_config(config())]

    #[test]
    fn groundtruth_files(text in damaged_text(GROUNDTRUTH, 4)) {
        bounded("groundtruth.txt", move || {
            if let Ok(gt) = GroundTruth::parse(Path::new("groundtruth.txt"), &text) {
                let _ = gt.initial();
            }
        });
    }
}

/// A small image encoded as `format`.
fn encoded(format: image::ImageFormat, w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8 * 9, y as u8 * 5, 77]));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// The names a frame folder's files may have: frames in every spelling, the ground truths
/// and markers of each layout, and names no layout uses.
const NAMES: &[&str] = &[
    "00000001.jpg",
    "00000002.png",
    "00000003.JPEG",
    "img/00000001.jpg",
    "img/00000002.png",
    "groundtruth.txt",
    "groundtruth_rect.txt",
    "img/groundtruth.txt",
    "absence.label",
    "cover.label",
    "seq/00000001.png",
    "seq/groundtruth.txt",
    "seq/deeper/00000001.jpg",
    "é 💥.png",
    "notes.txt",
    ".png",
];

/// A folder: up to eight files, each a name from [`NAMES`] and damaged contents (frames from
/// valid PNG and JPEG files, text from ground truths).
fn folder() -> impl Strategy<Value = Vec<(&'static str, Vec<u8>)>> {
    let frames = vec![
        encoded(image::ImageFormat::Png, 40, 30),
        encoded(image::ImageFormat::Jpeg, 24, 16),
        GROUNDTRUTH[0].as_bytes().to_vec(),
        GROUNDTRUTH[1].as_bytes().to_vec(),
    ];
    prop::collection::vec((prop::sample::select(NAMES), damaged(frames, 3)), 0..8)
}

fn exercise(files: Vec<(&'static str, Vec<u8>)>) {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        let path = dir.path().join(name);
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = std::fs::write(&path, bytes);
    }
    let mut sequences = Vec::new();
    if let Ok(s) = Sequence::open(dir.path()) {
        sequences.push(s);
    }
    if let Ok(found) = find_sequences(dir.path()) {
        sequences.extend(found);
    }
    for s in sequences {
        let _ = s.fully_annotated();
        if let Some(gt) = &s.groundtruth {
            let _ = gt.initial();
        }
        for f in &s.frames {
            let _ = decode_frame(f);
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn frame_folders(files in folder()) {
        bounded("frame folder", move || exercise(files));
    }
}

/// A PNG whose header claims 60000 x 60000 pixels (10 GB of RGB) is an error naming the file,
/// decided from the header: nothing of the claimed size is allocated.
#[test]
fn a_frame_claiming_gigapixels_is_an_error_not_an_allocation() {
    let mut png = encoded(image::ImageFormat::Png, 4, 4);
    // IHDR's width and height follow the 8-byte signature, the chunk length and "IHDR".
    png[16..20].copy_from_slice(&60000u32.to_be_bytes());
    png[20..24].copy_from_slice(&60000u32.to_be_bytes());
    // The chunk's CRC covers its type and data.
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("00000001.png");
    std::fs::write(&path, png).unwrap();
    let started = std::time::Instant::now();
    let e = decode_frame(&path).unwrap_err().to_string();
    assert!(e.contains("00000001.png"), "{e}");
    assert!(started.elapsed().as_secs_f64() < 1.0);
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
