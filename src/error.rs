//! The library's typed error. Shape errors name the op and both shapes so that a
//! failing line in a model points straight at the mismatch.

use std::fmt;

/// A list of dimensions, printed like `[128, 784]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Dims(pub Vec<usize>);

impl fmt::Debug for Dims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}
impl fmt::Display for Dims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Everything that can go wrong in a fallible library call. Each variant prints one
/// line; new variants may be added (the enum is `#[non_exhaustive]`), so a `match`
/// needs a catch-all arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Two shapes that an op cannot combine.
    #[error("{op}: incompatible shapes {lhs} and {rhs}{detail}")]
    Shape {
        /// The op that refused the shapes.
        op: &'static str,
        /// Shape of the first operand.
        lhs: Dims,
        /// Shape of the second operand (or the requested shape).
        rhs: Dims,
        /// Extra explanation, starting with "; " when present.
        detail: String,
    },
    /// A shape whose dimensions multiply past the most elements one buffer can address
    /// ([`crate::tensor::MAX_ELEMENTS`]), refused before anything is allocated.
    #[error("{op}: shape {shape} holds more elements than one buffer can address")]
    TooLarge {
        /// The op or constructor that refused the shape.
        op: &'static str,
        /// The shape asked for.
        shape: Dims,
    },
    /// A shape that fits in one buffer but not in this machine's memory: the allocation
    /// was refused, so the request is an error instead of an abort in the allocator.
    #[error("{op}: shape {shape} needs {bytes} bytes, more than this machine can allocate")]
    OutOfMemory {
        /// The constructor that asked.
        op: &'static str,
        /// The shape asked for.
        shape: Dims,
        /// The bytes it needs.
        bytes: usize,
    },
    /// An argument outside what the op accepts (an axis out of range, an index too large...).
    #[error("{op}: {msg}")]
    Invalid {
        /// The op or function that refused the argument.
        op: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// An expression of `explain` that does not parse: the message points at the column.
    #[error("explain: column {column}: {msg}\n  {source_text}\n  {pointer}", pointer = format_args!("{}^", " ".repeat(column.saturating_sub(1))))]
    Expression {
        /// The column (counted in characters from 1) where the problem is.
        column: usize,
        /// What is wrong there.
        msg: String,
        /// The expression.
        source_text: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error (in the message, not chained as a source, so that a
        /// report of the whole chain names it once).
        cause: std::io::Error,
    },
    /// A file's contents are malformed (or do not fit what reads them).
    #[error("{path}: {msg}")]
    Parse {
        /// The file (or a description of the input).
        path: String,
        /// The line (a CSV file's row, counted from 1) where it is known; the message
        /// names it too.
        line: Option<usize>,
        /// What is wrong, with the row or byte offset where known.
        msg: String,
    },
    /// Training produced a non-finite value.
    #[error("{0}")]
    NonFinite(String),
    /// A variable of one tape given to an op or to the gradients of another tape (or of
    /// the same tape before it was cleared): its id would name some other node.
    #[error("{op}: the variable belongs to another tape (or to this one before it was cleared)")]
    OtherTape {
        /// The op or method that refused it.
        op: &'static str,
    },
    /// An op has no forward-mode rule (a custom op that defines none).
    #[error("op '{op}' has no forward-mode rule")]
    NoRule {
        /// The op's name.
        op: String,
    },
}

/// Result alias for library calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Reads a whole file; an error names the file and its cause once.
pub(crate) fn read_file(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Io {
        path: path.display().to_string(),
        cause: e,
    })
}

impl Error {
    /// Shapes that `op` cannot combine (for a custom op's or objective's own checks).
    pub fn shape(op: &'static str, lhs: &[usize], rhs: &[usize]) -> Self {
        Error::Shape {
            op,
            lhs: Dims(lhs.to_vec()),
            rhs: Dims(rhs.to_vec()),
            detail: String::new(),
        }
    }
    pub(crate) fn shape_detail(
        op: &'static str,
        lhs: &[usize],
        rhs: &[usize],
        detail: impl Into<String>,
    ) -> Self {
        Error::Shape {
            op,
            lhs: Dims(lhs.to_vec()),
            rhs: Dims(rhs.to_vec()),
            detail: format!("; {}", detail.into()),
        }
    }
    /// An argument `op` refuses, with the reason (for a custom op's or objective's own
    /// checks).
    pub fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Invalid {
            op,
            msg: msg.into(),
        }
    }
}
