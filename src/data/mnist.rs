//! MNIST in IDX format (big-endian header, then bytes), raw or gzip-compressed.

use super::Dataset;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Reads an IDX file (`.gz` or raw, detected by its magic bytes): returns the dimensions
/// and the unsigned-byte payload.
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let name = path.display().to_string();
    let fmt = |msg: String| Error::Format {
        path: name.clone(),
        msg,
    };
    let raw = std::fs::read(path).map_err(|e| Error::Io {
        path: name.clone(),
        source: e,
    })?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| fmt(format!("gzip: {e}")))?;
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
    let n: usize = dims.iter().product();
    if bytes.len() - header != n {
        return Err(fmt(format!(
            "dimensions {dims:?} need {n} bytes of data, the file has {}",
            bytes.len() - header
        )));
    }
    Ok((dims, bytes[header..].to_vec()))
}

fn find(dir: &Path, stem: &str) -> Result<PathBuf> {
    for candidate in [format!("{stem}.gz"), stem.to_string()] {
        let p = dir.join(candidate);
        if p.exists() {
            return Ok(p);
        }
    }
    Err(Error::Format {
        path: dir.display().to_string(),
        msg: format!("no {stem} or {stem}.gz in this directory"),
    })
}

fn load_split(dir: &Path, images: &str, labels: &str) -> Result<Dataset> {
    let (dims, pixels) = read_idx(&find(dir, images)?)?;
    let label_path = find(dir, labels)?;
    let (ldims, lab) = read_idx(&label_path)?;
    if dims.len() != 3 || ldims.len() != 1 || dims[0] != ldims[0] {
        return Err(Error::Format {
            path: label_path.display().to_string(),
            msg: format!("images {dims:?} and labels {ldims:?} do not match"),
        });
    }
    let d = dims[1] * dims[2];
    let features = Tensor::from_vec(
        pixels.iter().map(|&p| p as f32 / 255.0).collect(),
        &[dims[0], d],
    )?;
    let labels: Vec<usize> = lab.iter().map(|&l| l as usize).collect();
    Dataset::new(features, labels, 10, format!("mnist:{}", dir.display()))
}

/// MNIST's training set (60,000) and test set (10,000) from a directory holding the four
/// canonical files, pixels scaled to [0, 1].
pub fn load_mnist(dir: &Path) -> Result<(Dataset, Dataset)> {
    Ok((
        load_split(dir, "train-images-idx3-ubyte", "train-labels-idx1-ubyte")?,
        load_split(dir, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")?,
    ))
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
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn loads_the_shared_mnist_when_present() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/mnist");
        if !dir.exists() {
            eprintln!("skipping: {} not found", dir.display());
            return;
        }
        let (train, test) = load_mnist(&dir).unwrap();
        assert_eq!(train.features.shape(), &[60000, 784]);
        assert_eq!(test.len(), 10000);
    }
}
