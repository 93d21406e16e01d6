//! MNIST in IDX format (big-endian header, then bytes), raw or gzip-compressed.

use super::Dataset;
use crate::error::{Error, Result, read_file};
use crate::tensor::Tensor;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Reads an IDX file (`.gz` or raw, detected by its magic bytes): returns the dimensions
/// and the unsigned-byte payload.
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let (name, raw) = (path.display().to_string(), read_file(path)?);
    parse_idx(raw, &name)
}

/// The most bytes a gzip-compressed IDX file may expand to (MNIST's largest is 47 MB):
/// a small hostile file cannot make the loader allocate without bound.
pub const MAX_IDX_BYTES: u64 = 1 << 30;

/// Parses the bytes of an IDX file, raw or gzip-compressed; `name` is used in messages.
/// Sizes from the header are multiplied with checked arithmetic: malformed input is an
/// error, never a panic.
pub fn parse_idx(raw: Vec<u8>, name: &str) -> Result<(Vec<usize>, Vec<u8>)> {
    let fmt = |msg: String| Error::Parse {
        line: None,
        path: name.to_string(),
        msg,
    };
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .take(MAX_IDX_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|e| fmt(format!("gzip: {e}")))?;
        if out.len() as u64 > MAX_IDX_BYTES {
            return Err(fmt(format!(
                "gzip: expands to more than {MAX_IDX_BYTES} bytes"
            )));
        }
        out
    } else {
        raw
    };
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(fmt(
            "not an IDX file (the magic number must start with two zero bytes)".into(),
        ));
    }
    if bytes[2] != 0x08 {
        return Err(fmt(format!(
            "IDX element type 0x{:02x} is not unsigned bytes (0x08)",
            bytes[2]
        )));
    }
    let ndim = bytes[3] as usize;
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(fmt(format!(
            "truncated header: {} bytes, need {header}",
            bytes.len()
        )));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| {
            u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize
        })
        .collect();
    if let Some(axis) = dims.iter().position(|&d| d == 0) {
        return Err(fmt(format!(
            "dimension {axis} of {dims:?} is zero: the file holds no examples"
        )));
    }
    let data = bytes.len() - header;
    let n = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    if n != Some(data) {
        let need = match n {
            Some(n) => format!("{n} bytes"),
            None => "more bytes than a file can hold".into(),
        };
        return Err(fmt(format!(
            "dimensions {dims:?} need {need} of data, the file has {data}"
        )));
    }
    let mut bytes = bytes;
    bytes.drain(..header);
    Ok((dims, bytes))
}

fn find(dir: &Path, stem: &str) -> Result<PathBuf> {
    for candidate in [format!("{stem}.gz"), stem.to_string()] {
        let p = dir.join(candidate);
        if p.exists() {
            return Ok(p);
        }
    }
    Err(Error::Parse {
        line: None,
        path: dir.display().to_string(),
        msg: format!("no {stem} or {stem}.gz in this directory"),
    })
}

fn load_split(dir: &Path, images: &str, labels: &str) -> Result<Dataset> {
    let image_path = find(dir, images)?;
    let image_name = image_path.display().to_string();
    let image_file = parse_idx(read_file(&image_path)?, &image_name)?;
    let label_path = find(dir, labels)?;
    let label_name = label_path.display().to_string();
    let label_file = parse_idx(read_file(&label_path)?, &label_name)?;
    split_from_idx(
        (image_file, &image_name),
        (label_file, &label_name),
        &format!("mnist:{}", dir.display()),
    )
}

/// An IDX file's dimensions and bytes, as [`parse_idx`] returns them.
pub type IdxFile = (Vec<usize>, Vec<u8>);

/// One MNIST-style split from its parsed image and label files (each with its name for
/// messages): images `[n, rows, cols]` scaled to [0, 1], labels `[n]` in 0..10. What
/// [`load_mnist`] does with each pair of files, for bytes that come from elsewhere.
pub fn split_from_idx(
    ((dims, pixels), image_name): (IdxFile, &str),
    ((ldims, lab), label_name): (IdxFile, &str),
    name: &str,
) -> Result<Dataset> {
    if dims.len() != 3 {
        return Err(Error::Parse {
            line: None,
            path: image_name.to_string(),
            msg: format!("images must have 3 dimensions [count, rows, columns], not {dims:?}"),
        });
    }
    if ldims.len() != 1 || dims[0] != ldims[0] {
        return Err(Error::Parse {
            line: None,
            path: label_name.to_string(),
            msg: format!("images {dims:?} and labels {ldims:?} do not match"),
        });
    }
    // parse_idx checked the product of all three dimensions against the file's length
    let d = dims[1] * dims[2];
    let features = Tensor::from_vec(
        pixels.iter().map(|&p| p as f32 / 255.0).collect(),
        &[dims[0], d],
    )?;
    let labels: Vec<usize> = lab.iter().map(|&l| l as usize).collect();
    Dataset::new(features, labels, 10, name)
}

/// MNIST's training set (60,000) and test set (10,000) from a directory holding the four
/// canonical files, pixels scaled to [0, 1]. The two sets' images must have one size.
pub fn load_mnist(dir: &Path) -> Result<(Dataset, Dataset)> {
    let train = load_split(dir, "train-images-idx3-ubyte", "train-labels-idx1-ubyte")?;
    let test = load_split(dir, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")?;
    check_same_features(
        &train,
        &test,
        &dir.join("t10k-images-idx3-ubyte").display().to_string(),
    )?;
    Ok((train, test))
}

/// The test images must have as many pixels as the training images (the model's input
/// and the standardiser's statistics are sized from the training set).
fn check_same_features(train: &Dataset, test: &Dataset, test_name: &str) -> Result<()> {
    if train.features.shape()[1] != test.features.shape()[1] {
        return Err(Error::Parse {
            line: None,
            path: test_name.to_string(),
            msg: format!(
                "images of {} pixels, the training images have {}",
                test.features.shape()[1],
                train.features.shape()[1]
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn reads_raw_and_rejects_truncated_files() {
        let dir = std::env::temp_dir().join(format!("chainrule-idx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ok = write(&dir, "ok", &[0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]);
        assert_eq!(read_idx(&ok).unwrap(), (vec![3], vec![7, 8, 9]));
        let short = write(&dir, "short", &[0, 0, 8, 1, 0, 0, 0, 3, 7]);
        let e = read_idx(&short).unwrap_err().to_string();
        assert!(e.contains("short") && e.contains("need 3 bytes"), "{e}");
        let bad = write(&dir, "bad", b"hello world");
        assert!(
            read_idx(&bad)
                .unwrap_err()
                .to_string()
                .contains("not an IDX file")
        );
        let gz = write(&dir, "trunc.gz", &[0x1f, 0x8b, 8, 0, 0]);
        assert!(read_idx(&gz).unwrap_err().to_string().contains("gzip"));
        // 4294967295³ overflows: the message must not print a wrapped product
        let huge = write(
            &dir,
            "huge",
            &[
                0, 0, 8, 3, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
            ],
        );
        let e = read_idx(&huge).unwrap_err().to_string();
        assert!(e.contains("more bytes than a file can hold"), "{e}");
        assert!(!e.contains("12884901887"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// An IDX file of unsigned bytes.
    fn idx(dims: &[u32], payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            b.extend(d.to_be_bytes());
        }
        b.extend(payload);
        b
    }

    #[test]
    fn loads_the_four_files_raw_or_gzip() {
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("chainrule-mnist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let gz = |bytes: &[u8]| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(bytes).unwrap();
            e.finish().unwrap()
        };
        // three 2×2 training images (gzip) and two test images (raw)
        let train: Vec<u8> = (0..12).map(|v| v * 20).collect();
        write(
            &dir,
            "train-images-idx3-ubyte.gz",
            &gz(&idx(&[3, 2, 2], &train)),
        );
        write(
            &dir,
            "train-labels-idx1-ubyte.gz",
            &gz(&idx(&[3], &[7, 0, 9])),
        );
        write(&dir, "t10k-images-idx3-ubyte", &idx(&[2, 2, 2], &[255; 8]));
        write(&dir, "t10k-labels-idx1-ubyte", &idx(&[2], &[1, 2]));
        let (train_set, test_set) = load_mnist(&dir).unwrap();
        assert_eq!(train_set.features.shape(), &[3, 4]);
        assert_eq!(train_set.labels, vec![7, 0, 9]);
        assert_eq!(train_set.features.data()[5], 100.0 / 255.0);
        assert_eq!(test_set.features.data(), &[1.0; 8]);
        assert_eq!(test_set.labels, vec![1, 2]);
        // a label of 10 is not a digit
        write(&dir, "t10k-labels-idx1-ubyte", &idx(&[2], &[1, 10]));
        let e = load_mnist(&dir).unwrap_err().to_string();
        assert!(
            e.contains("label 10 is not below the class count 10"),
            "{e}"
        );
        // test images of another size than the training images (the model's input and
        // the standardiser are sized from the training set)
        write(&dir, "t10k-labels-idx1-ubyte", &idx(&[2], &[1, 2]));
        write(&dir, "t10k-images-idx3-ubyte", &idx(&[2, 3, 2], &[9; 12]));
        let e = load_mnist(&dir).unwrap_err().to_string();
        assert!(
            e.contains("t10k-images-idx3-ubyte: images of 6 pixels, the training images have 4"),
            "{e}"
        );
        // a zero dimension holds no examples
        write(&dir, "t10k-images-idx3-ubyte", &idx(&[2, 0, 2], &[]));
        let e = load_mnist(&dir).unwrap_err().to_string();
        assert!(e.contains("dimension 1 of [2, 0, 2] is zero"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    #[ignore = "needs ../shared/data/mnist (not in the repository): cargo test -- --ignored"]
    fn loads_the_shared_mnist() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/mnist");
        let (train, test) = load_mnist(&dir).unwrap();
        assert_eq!(train.features.shape(), &[60000, 784]);
        assert_eq!(test.len(), 10000);
    }
}
