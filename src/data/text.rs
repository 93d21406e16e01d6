//! Character-level text corpora: a UTF-8 file mapped to ids over its sorted distinct
//! characters, split in order into 90% training and 10% validation text, and cut into
//! parallel streams for truncated backpropagation through time.

use crate::error::{Error, Result, read_file};
use std::collections::HashMap;
use std::path::Path;

/// A text file as character ids: the vocabulary and the in-order train/validation split.
#[derive(Clone, Debug)]
pub struct TextCorpus {
    vocab: Vec<char>,
    train: Vec<u32>,
    val: Vec<u32>,
    name: String,
}

/// Shakespeare's Macbeth, gzip-compressed (data/text/ATTRIBUTION.md).
static MACBETH_GZ: &[u8] = include_bytes!("../../data/text/macbeth.txt.gz");

/// Seven of Shakespeare's tragedies, gzip-compressed (data/text/ATTRIBUTION.md).
static TRAGEDIES_GZ: &[u8] = include_bytes!("../../data/text/tragedies.txt.gz");

/// The texts embedded in the binary, by the name `--data` gives them.
pub const EMBEDDED_TEXTS: [&str; 2] = ["macbeth", "tragedies"];

impl TextCorpus {
    /// Shakespeare's *Macbeth* (103,428 characters, 67 distinct), embedded in the binary.
    pub fn macbeth() -> Result<TextCorpus> {
        Self::embedded("macbeth")
    }

    /// Seven tragedies of Shakespeare (Hamlet, Macbeth, King Lear, Othello, Romeo and
    /// Juliet, Julius Caesar, Coriolanus: 1,006,767 characters, 73 distinct), embedded in
    /// the binary.
    pub fn tragedies() -> Result<TextCorpus> {
        Self::embedded("tragedies")
    }

    /// One of [`EMBEDDED_TEXTS`] by name.
    pub fn embedded(name: &str) -> Result<TextCorpus> {
        let gz = match name {
            "macbeth" => MACBETH_GZ,
            "tragedies" => TRAGEDIES_GZ,
            _ => {
                return Err(Error::invalid(
                    "TextCorpus::embedded",
                    format!("no embedded text '{name}'; there are {EMBEDDED_TEXTS:?}"),
                ));
            }
        };
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz), &mut bytes).map_err(
            |e| Error::Parse {
                line: None,
                path: format!("embedded {name}"),
                msg: e.to_string(),
            },
        )?;
        TextCorpus::from_bytes(&bytes, name)
    }

    /// Reads and parses a UTF-8 text file (see [`from_bytes`](Self::from_bytes)).
    pub fn load(path: &Path) -> Result<TextCorpus> {
        let (name, bytes) = (path.display().to_string(), read_file(path)?);
        TextCorpus::from_bytes(&bytes, &name)
    }

    /// Parses UTF-8 text: the vocabulary is its sorted distinct characters, the first 90%
    /// of the characters (rounded down) train and the rest validate. `name` is used in
    /// messages. Invalid UTF-8, an empty text, a single distinct character or a
    /// validation part shorter than 2 characters is an error.
    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<TextCorpus> {
        let fmt = |msg: String| Error::Parse {
            line: None,
            path: name.to_string(),
            msg,
        };
        let text = std::str::from_utf8(bytes).map_err(|e| {
            fmt(format!(
                "the text is not valid UTF-8: invalid byte at offset {}",
                e.valid_up_to()
            ))
        })?;
        let chars: Vec<char> = text.chars().collect();
        if chars.is_empty() {
            return Err(fmt("the text is empty".into()));
        }
        let mut vocab = chars.clone();
        vocab.sort_unstable();
        vocab.dedup();
        if vocab.len() < 2 {
            return Err(fmt(format!(
                "a character model needs at least two distinct characters; the text has only {:?}",
                vocab[0]
            )));
        }
        let n_train = chars.len() * 9 / 10;
        let n_val = chars.len() - n_train;
        if n_val < 2 {
            return Err(fmt(format!(
                "the text is too short: its validation part (the last 10% of {} characters) \
                 has {n_val} character(s), fewer than one window of 2 characters",
                chars.len()
            )));
        }
        let ids: Vec<u32> = chars
            .iter()
            .map(|c| vocab.binary_search(c).map_or(0, |i| i as u32))
            .collect();
        Ok(TextCorpus {
            vocab,
            train: ids[..n_train].to_vec(),
            val: ids[n_train..].to_vec(),
            name: name.to_string(),
        })
    }

    /// The ids of `text`'s characters; a character outside the vocabulary is an error
    /// naming it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        text.chars()
            .enumerate()
            .map(|(i, c)| {
                self.vocab
                    .binary_search(&c)
                    .map(|id| id as u32)
                    .map_err(|_| {
                        Error::invalid(
                            "encode",
                            format!(
                                "character {c:?} (at position {i}) is not in the vocabulary of {}",
                                self.name
                            ),
                        )
                    })
            })
            .collect()
    }

    /// The text of `ids`; an id outside the vocabulary becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        ids.iter()
            .map(|&id| {
                self.vocab
                    .get(id as usize)
                    .copied()
                    .unwrap_or(char::REPLACEMENT_CHARACTER)
            })
            .collect()
    }

    /// The sorted distinct characters; a character's id is its index here.
    pub fn vocab(&self) -> &[char] {
        &self.vocab
    }

    /// The ids of the training text (the first 90% of the characters).
    pub fn train(&self) -> &[u32] {
        &self.train
    }

    /// The ids of the validation text (the last 10% of the characters).
    pub fn val(&self) -> &[u32] {
        &self.val
    }

    /// Where the text came from, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Entropy in nats of the id frequencies in `ids` (0 for an empty slice): the loss of
/// a model that ignores context, the baseline a character model must beat.
pub fn unigram_entropy(ids: &[u32]) -> f64 {
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for &id in ids {
        *counts.entry(id).or_insert(0) += 1;
    }
    let n = ids.len() as f64;
    counts
        .values()
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.ln()
        })
        .sum()
}

/// `batch` contiguous streams of a text for truncated backpropagation through time:
/// window `k + 1` of each stream continues where window `k` ended, so a hidden state can
/// carry over from one window to the next.
#[derive(Clone, Debug)]
pub struct Streams {
    ids: Vec<u32>,
    batch: usize,
    seq_len: usize,
    stream_len: usize,
}

impl Streams {
    /// Cuts `ids` into `batch` streams of `L = (len − 1) / batch` inputs each (stream `b`
    /// reads `ids[b·L ..= (b+1)·L]`, its last id only as a target); the incomplete rest
    /// is dropped. A zero `batch` or `seq_len`, or `L < 1`, is an error.
    pub fn new(ids: &[u32], batch: usize, seq_len: usize) -> Result<Streams> {
        if batch == 0 || seq_len == 0 {
            return Err(Error::invalid(
                "Streams::new",
                format!("batch ({batch}) and seq_len ({seq_len}) must be at least 1"),
            ));
        }
        let stream_len = ids.len().saturating_sub(1) / batch;
        if stream_len < 1 {
            return Err(Error::invalid(
                "Streams::new",
                format!(
                    "{} ids are too few for {batch} streams of at least one input and its target",
                    ids.len()
                ),
            ));
        }
        Ok(Streams {
            ids: ids[..batch * stream_len + 1].to_vec(),
            batch,
            seq_len,
            stream_len,
        })
    }

    /// Number of streams.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Inputs per stream, `L`.
    pub fn stream_len(&self) -> usize {
        self.stream_len
    }

    /// Number of windows, `ceil(L / seq_len)`.
    pub fn windows(&self) -> usize {
        self.stream_len.div_ceil(self.seq_len)
    }

    /// Window `k` as `(inputs, targets, len)`, both row-major `[batch, len]` with
    /// `len = min(seq_len, L − k·seq_len)`; each target is the next id of the same
    /// stream. A `k` past the last window gives `len = 0` and empty vectors.
    pub fn window(&self, k: usize) -> (Vec<u32>, Vec<u32>, usize) {
        let start = k.saturating_mul(self.seq_len);
        let len = self.seq_len.min(self.stream_len.saturating_sub(start));
        let mut inputs = Vec::with_capacity(self.batch * len);
        let mut targets = Vec::with_capacity(self.batch * len);
        if len > 0 {
            for b in 0..self.batch {
                let s = b * self.stream_len + start;
                inputs.extend_from_slice(&self.ids[s..s + len]);
                targets.extend_from_slice(&self.ids[s + 1..s + 1 + len]);
            }
        }
        (inputs, targets, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_macbeth() {
        let m = TextCorpus::macbeth().unwrap();
        assert_eq!(m.vocab().len(), 67);
        assert_eq!(m.train().len() + m.val().len(), 103_428);
        assert!(m.decode(&m.train()[..7]) == "MACBETH");
    }

    fn err_text<T: std::fmt::Debug>(r: Result<T>) -> String {
        r.expect_err("expected an error").to_string()
    }

    #[test]
    fn vocabulary_is_sorted_distinct_and_round_trips_multibyte_text() {
        let text = "héllo wörld… ünïcödé ✓ text, héllo again wörld…";
        let c = TextCorpus::from_bytes(text.as_bytes(), "t").unwrap();
        assert!(c.vocab().windows(2).all(|w| w[0] < w[1]));
        let mut expected: Vec<char> = text.chars().collect();
        expected.sort_unstable();
        expected.dedup();
        assert_eq!(c.vocab(), &expected[..]);
        let ids = c.encode(text).unwrap();
        assert_eq!(c.decode(&ids), text);
        let whole: Vec<u32> = c.train().iter().chain(c.val()).copied().collect();
        assert_eq!(whole, ids);
        assert_eq!(
            c.decode(&[0, c.vocab().len() as u32]),
            format!("{}\u{FFFD}", c.vocab()[0])
        );
    }

    #[test]
    fn split_is_ninety_ten_by_characters() {
        for (n, train) in [(20usize, 18usize), (11, 9), (57, 51), (100, 90)] {
            // multi-byte characters: the split counts characters, not bytes
            let text: String = (0..n).map(|i| if i % 3 == 0 { 'é' } else { 'a' }).collect();
            let c = TextCorpus::from_bytes(text.as_bytes(), "t").unwrap();
            assert_eq!(
                (c.train().len(), c.val().len()),
                (train, n - train),
                "n = {n}"
            );
        }
    }

    #[test]
    fn bad_texts_are_errors_not_panics() {
        let e = err_text(TextCorpus::from_bytes(b"", "f.txt"));
        assert!(e.contains("f.txt") && e.contains("empty"), "{e}");
        let e = err_text(TextCorpus::from_bytes(b"abcd\xffefgh", "f.txt"));
        assert!(e.contains("UTF-8") && e.contains("offset 4"), "{e}");
        // a truncated multi-byte character at the end
        let e = err_text(TextCorpus::from_bytes(b"abc\xc3", "f.txt"));
        assert!(e.contains("UTF-8") && e.contains("offset 3"), "{e}");
        let e = err_text(TextCorpus::from_bytes(b"\x80", "f.txt"));
        assert!(e.contains("offset 0"), "{e}");
        let e = err_text(TextCorpus::from_bytes(b"a", "f.txt"));
        assert!(e.contains("at least two distinct characters"), "{e}");
        let e = err_text(TextCorpus::from_bytes("ééééééééééééé".as_bytes(), "f"));
        assert!(e.contains("at least two distinct characters"), "{e}");
        let e = err_text(TextCorpus::from_bytes(b"ababababab", "f"));
        assert!(e.contains("too short") && e.contains("validation"), "{e}");
        let e = err_text(TextCorpus::from_bytes(b"ab", "f"));
        assert!(e.contains("too short"), "{e}");
        let e = err_text(TextCorpus::load(Path::new("/nonexistent/dir/corpus.txt")));
        assert!(e.contains("corpus.txt"), "{e}");
        let c = TextCorpus::from_bytes(b"hello world", "f").unwrap();
        let e = err_text(c.encode("hello, world"));
        assert!(e.contains("','") && e.contains("vocabulary"), "{e}");
    }

    #[test]
    fn load_reads_a_file() {
        let path = std::env::temp_dir().join(format!("chainrule_text_{}.txt", std::process::id()));
        std::fs::write(&path, "hello wörld, hello").unwrap();
        let c = TextCorpus::load(&path);
        std::fs::remove_file(&path).ok();
        let c = c.unwrap();
        assert_eq!(c.train().len() + c.val().len(), 18);
        assert_eq!(c.name(), path.display().to_string());
    }

    #[test]
    fn unigram_entropy_matches_the_formula() {
        assert!((unigram_entropy(&[0, 1, 0, 1]) - 2f64.ln()).abs() < 1e-12);
        let (p, q) = (0.75f64, 0.25f64);
        let expected = -(p * p.ln() + q * q.ln());
        assert!((unigram_entropy(&[0, 0, 0, 1]) - expected).abs() < 1e-12);
        assert!((unigram_entropy(&[7, 3, 7, 7]) - expected).abs() < 1e-12);
        let expected3 = -(0.5 * 0.5f64.ln() + 2.0 * 0.25 * 0.25f64.ln());
        assert!((unigram_entropy(&[2, 2, 5, 9]) - expected3).abs() < 1e-12);
        assert_eq!(unigram_entropy(&[4, 4, 4]), 0.0);
        assert_eq!(unigram_entropy(&[]), 0.0);
    }

    #[test]
    fn streams_tile_each_stream_and_carry_over() {
        for (n, batch, seq_len) in [
            (23usize, 3usize, 4usize),
            (21, 4, 5),
            (10, 1, 3),
            (9, 2, 10),
        ] {
            let ids: Vec<u32> = (0..n as u32).collect();
            let s = Streams::new(&ids, batch, seq_len).unwrap();
            let l = (n - 1) / batch;
            assert_eq!(s.stream_len(), l);
            assert_eq!(s.windows(), l.div_ceil(seq_len));
            let mut seen: Vec<Vec<u32>> = vec![Vec::new(); batch];
            for k in 0..s.windows() {
                let (x, y, len) = s.window(k);
                let expected_len = if k + 1 == s.windows() {
                    l - k * seq_len
                } else {
                    seq_len
                };
                assert_eq!(len, expected_len, "n {n} batch {batch} window {k}");
                assert_eq!((x.len(), y.len()), (batch * len, batch * len));
                for b in 0..batch {
                    let (xr, yr) = (&x[b * len..(b + 1) * len], &y[b * len..(b + 1) * len]);
                    for t in 0..len {
                        assert_eq!(yr[t], xr[t] + 1, "targets are the next character");
                        assert!((yr[t] as usize) <= (b + 1) * l && (yr[t] as usize) < n);
                    }
                    if let Some(&prev) = seen[b].last() {
                        assert_eq!(prev + 1, xr[0], "window {k} continues window {}", k - 1);
                    }
                    seen[b].extend_from_slice(xr);
                }
            }
            for (b, stream) in seen.iter().enumerate() {
                let want: Vec<u32> = ((b * l) as u32..((b + 1) * l) as u32).collect();
                assert_eq!(stream, &want, "stream {b} is tiled exactly");
            }
            let (x, y, len) = s.window(s.windows());
            assert!(x.is_empty() && y.is_empty() && len == 0);
            assert_eq!(s.window(usize::MAX).2, 0);
        }
    }

    #[test]
    fn streams_reject_bad_arguments() {
        let ids: Vec<u32> = (0..10).collect();
        assert!(err_text(Streams::new(&ids, 0, 4)).contains("at least 1"));
        assert!(err_text(Streams::new(&ids, 2, 0)).contains("at least 1"));
        assert!(err_text(Streams::new(&ids, 10, 4)).contains("too few"));
        assert!(err_text(Streams::new(&[], 1, 4)).contains("too few"));
        assert!(err_text(Streams::new(&[3], 1, 4)).contains("too few"));
        let s = Streams::new(&[3, 4], 1, 4).unwrap();
        assert_eq!(s.window(0), (vec![3], vec![4], 1));
    }
}
