//! CSV datasets: numeric features and an integer class label in one column, with or
//! without a header row (a first row that does not parse as numbers is a header).

use super::Dataset;
use crate::error::{Error, Result, read_file};
use crate::tensor::Tensor;
use std::path::Path;

/// Which column holds the class label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelColumn {
    /// The last column.
    Last,
    /// A column by 0-based index.
    Index(usize),
    /// A column by header name.
    Name(String),
}

impl std::str::FromStr for LabelColumn {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(match s.parse::<usize>() {
            Ok(i) => LabelColumn::Index(i),
            Err(_) if s == "last" => LabelColumn::Last,
            Err(_) => LabelColumn::Name(s.to_string()),
        })
    }
}

/// Loads a CSV file of numeric features and a class label.
pub fn load_csv(path: &Path, label: &LabelColumn) -> Result<Dataset> {
    let (name, bytes) = (path.display().to_string(), read_file(path)?);
    parse_csv(&bytes, &name, label)
}

/// Parses CSV text (numeric features and a class label); `name` is used in messages.
/// Malformed input is an error, never a panic.
pub fn parse_csv(bytes: &[u8], name: &str, label: &LabelColumn) -> Result<Dataset> {
    let reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    parse_records(reader, name, label)
}

pub(super) fn parse_records<R: std::io::Read>(
    mut reader: csv::Reader<R>,
    name: &str,
    label: &LabelColumn,
) -> Result<Dataset> {
    let fmt = |msg: String| Error::Parse {
        line: None,
        path: name.to_string(),
        msg,
    };
    // an error of one row: the row is named in the message and kept as the line
    let at = |line: usize, msg: String| Error::Parse {
        line: Some(line),
        path: name.to_string(),
        msg: format!("row {line}{msg}"),
    };
    let mut rows: Vec<csv::StringRecord> = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        let rec = rec.map_err(|e| at(i + 1, format!(": {}", csv_message(&e))))?;
        if rec.iter().all(|f| f.is_empty()) {
            continue;
        }
        rows.push(rec);
    }
    let first = rows
        .first()
        .ok_or_else(|| fmt("the file holds no rows".into()))?;
    let header: Option<Vec<String>> = if first.iter().any(|f| f.parse::<f64>().is_err()) {
        Some(first.iter().map(str::to_string).collect())
    } else {
        None
    };
    let data_start = usize::from(header.is_some());
    let width = rows[0].len();
    if width < 2 {
        return Err(fmt(format!(
            "row 1 has {width} column(s); need at least one feature and a label"
        )));
    }
    let label_col = match label {
        LabelColumn::Last => width - 1,
        LabelColumn::Index(i) if *i < width => *i,
        LabelColumn::Index(i) => {
            return Err(fmt(format!(
                "label column {i} does not exist (the file has {width} columns)"
            )));
        }
        LabelColumn::Name(n) => match &header {
            Some(h) => h
                .iter()
                .position(|c| c == n)
                .ok_or_else(|| fmt(format!("no column named '{n}' in the header {h:?}")))?,
            None => {
                return Err(fmt(format!(
                    "label column '{n}' given by name, but the file has no header row"
                )));
            }
        },
    };
    let col_name = |j: usize| {
        header
            .as_ref()
            .map(|h| format!(" ('{}')", h[j]))
            .unwrap_or_default()
    };
    let n = rows.len() - data_start;
    if n == 0 {
        return Err(fmt("the file has a header but no data rows".into()));
    }
    let d = width - 1;
    let mut features = Vec::with_capacity(n * d);
    let mut raw_labels = Vec::with_capacity(n);
    for (r, rec) in rows.iter().enumerate().skip(data_start) {
        let line = r + 1;
        for (j, field) in rec.iter().enumerate() {
            let v: f64 = field.parse().map_err(|_| {
                if j == label_col {
                    at(
                        line,
                        format!(
                            ": label column {j}{} holds '{field}', which is not a number",
                            col_name(j)
                        ),
                    )
                } else {
                    at(
                        line,
                        format!(", column {j}{}: '{field}' is not a number", col_name(j)),
                    )
                }
            })?;
            if !v.is_finite() || (j != label_col && !(v as f32).is_finite()) {
                return Err(at(
                    line,
                    format!(", column {j}{}: '{field}' is not finite", col_name(j)),
                ));
            }
            if j == label_col {
                if v < 0.0 || v.fract() != 0.0 {
                    return Err(at(
                        line,
                        format!(": label '{field}' is not a class index (a non-negative integer)"),
                    ));
                }
                raw_labels.push(v as usize);
            } else {
                features.push(v as f32);
            }
        }
    }
    // class indices are the sorted distinct label values, so labels 3, 5, 7 become 0, 1, 2
    let mut classes = raw_labels.clone();
    classes.sort_unstable();
    classes.dedup();
    let labels = raw_labels
        .iter()
        .map(|l| classes.binary_search(l).expect("value is present"))
        .collect();
    let features = Tensor::from_vec(features, &[n, d])?;
    Dataset::new(features, labels, classes.len(), name)
}

fn csv_message(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => {
            format!("has {len} fields, but earlier rows have {expected_len}")
        }
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, label: LabelColumn) -> Result<Dataset> {
        let reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .trim(csv::Trim::All)
            .from_reader(text.as_bytes());
        parse_records(reader, "test.csv", &label)
    }

    #[test]
    fn header_is_detected_and_label_found_by_name() {
        let d = load(
            "a,b,class\n1,2,5\n3,4,7\n5,6,5\n",
            LabelColumn::Name("class".into()),
        )
        .unwrap();
        assert_eq!(d.features.shape(), &[3, 2]);
        assert_eq!(d.labels, vec![0, 1, 0]);
        assert_eq!(d.num_classes, 2);
        let d = load("1,2,0\n3,4,1\n", LabelColumn::Index(0)).unwrap();
        assert_eq!(d.features.data(), &[2.0, 0.0, 4.0, 1.0]);
    }

    #[test]
    fn bad_rows_are_named() {
        let e = load("a,b,y\n1,2,0\n1,x,1\n", LabelColumn::Last)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("test.csv") && e.contains("row 3") && e.contains("'x'") && e.contains("'b'"),
            "{e}"
        );
        let e = load("1,2,0\n1,2\n", LabelColumn::Last)
            .unwrap_err()
            .to_string();
        assert!(e.contains("row 2") && e.contains("2 fields"), "{e}");
        let e = load("a,b,y\n1,2,cat\n", LabelColumn::Name("y".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("label column") && e.contains("'cat'"), "{e}");
        let e = load("a,b,y\n1,2,0\n", LabelColumn::Name("z".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no column named 'z'"), "{e}");
        let e = load("", LabelColumn::Last).unwrap_err().to_string();
        assert!(e.contains("no rows"), "{e}");
        let e = load("a,b,y\n", LabelColumn::Last).unwrap_err().to_string();
        assert!(e.contains("no data rows"), "{e}");
        let e = load("1,2,0.5\n", LabelColumn::Last)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a class index"), "{e}");
    }
}
