//! The expression language of `chainrule explain`: numbers, named variables, the
//! operators of [`OPERATORS`], unary minus, parentheses, the one-argument functions of
//! the elementwise table and max and min ([`functions`]). A recursive-descent parser
//! whose errors give the column, and suggest the grammar's spelling for a few that
//! learners bring from elsewhere (`log`, `tan`, `pow`, `**`).

use crate::error::{Error, Result};
use crate::tensor::UnaryOp;

/// A parsed expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// A number.
    Num(f64),
    /// A named variable.
    Var(String),
    /// `-e`
    Neg(Box<Expr>),
    /// `a op b` for `+ - * / ^`.
    Bin(char, Box<Expr>, Box<Expr>),
    /// A one-argument function.
    Call(UnaryOp, Box<Expr>),
    /// `max(a, b)` (true) or `min(a, b)` (false).
    MaxMin(bool, Box<Expr>, Box<Expr>),
}

/// The operators of the grammar: each one's ASCII spelling and the other characters
/// read as it (what a learner pastes from typeset text). The page lists these, so its
/// list and the parser's cannot drift apart.
pub const OPERATORS: [(char, &[char]); 5] = [
    ('+', &[]),
    ('-', &['\u{2212}']),
    ('*', &['×', '·']),
    ('/', &['÷']),
    ('^', &[]),
];

/// The functions the grammar knows, in the order the page lists them: the elementwise
/// table's one-argument functions, then `max` and `min`.
pub fn functions() -> Vec<&'static str> {
    UnaryOp::FUNCTIONS
        .iter()
        .map(|f| f.name())
        .chain(["max", "min"])
        .collect()
}

/// What to write instead of a function the grammar does not have but learners expect.
fn suggestion(name: &str) -> Option<&'static str> {
    Some(match name {
        "log" => "the natural logarithm is ln(x)",
        "tan" => "write tan(x) as sin(x)/cos(x)",
        "pow" => "write pow(a, b) as a^b",
        "exp2" => "write 2^x",
        "sqr" | "square" => "write x^2",
        "softplus" => "write softplus(x) as ln(1 + exp(x))",
        _ => return None,
    })
}

/// Deepest nesting of parentheses and unary minus accepted (the parser recurses).
const MAX_DEPTH: usize = 500;

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Num(f64),
    Ident(String),
    Op(char),
    End,
}

struct Parser<'s> {
    src: &'s str,
    toks: Vec<(Tok, usize)>,
    pos: usize,
    depth: usize,
}

fn error(src: &str, col: usize, msg: impl Into<String>) -> Error {
    Error::Expression {
        column: col + 1,
        msg: msg.into(),
        source_text: src.to_string(),
    }
}

fn lex(src: &str) -> Result<Vec<(Tok, usize)>> {
    let chars: Vec<(usize, char)> = src.char_indices().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let (at, ch) = chars[i];
        let col = src[..at].chars().count();
        if ch.is_whitespace() {
            i += 1;
        } else if ch.is_ascii_digit() || ch == '.' {
            let start = i;
            while i < chars.len() && (chars[i].1.is_ascii_digit() || chars[i].1 == '.') {
                i += 1;
            }
            // an exponent: 1e-3, 2.5E4
            if i < chars.len() && matches!(chars[i].1, 'e' | 'E') {
                let mut j = i + 1;
                if j < chars.len() && matches!(chars[j].1, '+' | '-') {
                    j += 1;
                }
                if j < chars.len() && chars[j].1.is_ascii_digit() {
                    i = j;
                    while i < chars.len() && chars[i].1.is_ascii_digit() {
                        i += 1;
                    }
                }
            }
            let end = chars.get(i).map(|c| c.0).unwrap_or(src.len());
            let text = &src[at..end];
            let v: f64 = text
                .parse()
                .map_err(|_| error(src, col, format!("'{text}' is not a number")))?;
            out.push((Tok::Num(v), col));
            let _ = start;
        } else if ch.is_alphabetic() || ch == '_' {
            let start = at;
            while i < chars.len() && (chars[i].1.is_alphanumeric() || chars[i].1 == '_') {
                i += 1;
            }
            let end = chars.get(i).map(|c| c.0).unwrap_or(src.len());
            out.push((Tok::Ident(src[start..end].to_string()), col));
        } else if "+-*/^(),".contains(ch) {
            out.push((Tok::Op(ch), col));
            i += 1;
        } else if let Some(&(op, _)) = OPERATORS.iter().find(|(_, alt)| alt.contains(&ch)) {
            out.push((Tok::Op(op), col));
            i += 1;
        } else {
            return Err(error(src, col, format!("unexpected character '{ch}'")));
        }
    }
    out.push((Tok::End, src.chars().count()));
    Ok(out)
}

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        &self.toks[self.pos].0
    }
    fn col(&self) -> usize {
        self.toks[self.pos].1
    }
    fn describe(&self) -> String {
        match self.peek() {
            Tok::Num(v) => format!("the number {v}"),
            Tok::Ident(s) => format!("'{s}'"),
            Tok::Op(c) => format!("'{c}'"),
            Tok::End => "the end of the expression".into(),
        }
    }
    fn expect(&mut self, c: char) -> Result<()> {
        if *self.peek() == Tok::Op(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(error(
                self.src,
                self.col(),
                format!("expected '{c}', found {}", self.describe()),
            ))
        }
    }

    fn expr(&mut self) -> Result<Expr> {
        let mut lhs = self.term()?;
        while let Tok::Op(c @ ('+' | '-')) = *self.peek() {
            self.pos += 1;
            lhs = Expr::Bin(c, Box::new(lhs), Box::new(self.term()?));
        }
        Ok(lhs)
    }

    fn term(&mut self) -> Result<Expr> {
        let mut lhs = self.unary()?;
        while let Tok::Op(c @ ('*' | '/')) = *self.peek() {
            let at = self.col();
            self.pos += 1;
            if c == '*' && *self.peek() == Tok::Op('*') {
                return Err(error(self.src, at, "'**' is not a power here: write x^2"));
            }
            lhs = Expr::Bin(c, Box::new(lhs), Box::new(self.unary()?));
        }
        Ok(lhs)
    }

    fn nested<R>(&mut self, f: impl FnOnce(&mut Self) -> Result<R>) -> Result<R> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(error(
                self.src,
                self.col(),
                format!("nesting deeper than {MAX_DEPTH} levels"),
            ));
        }
        let r = f(self);
        self.depth -= 1;
        r
    }

    fn unary(&mut self) -> Result<Expr> {
        if *self.peek() == Tok::Op('-') {
            self.pos += 1;
            return self.nested(|p| Ok(Expr::Neg(Box::new(p.unary()?))));
        }
        self.power()
    }

    fn power(&mut self) -> Result<Expr> {
        let base = self.primary()?;
        if *self.peek() == Tok::Op('^') {
            self.pos += 1;
            // right-associative: a^b^c = a^(b^c); -x^2 = -(x^2)
            let exp = self.nested(|p| p.unary())?;
            return Ok(Expr::Bin('^', Box::new(base), Box::new(exp)));
        }
        Ok(base)
    }

    fn primary(&mut self) -> Result<Expr> {
        let col = self.col();
        match self.peek().clone() {
            Tok::Num(v) => {
                self.pos += 1;
                Ok(Expr::Num(v))
            }
            Tok::Ident(name) => {
                self.pos += 1;
                if *self.peek() != Tok::Op('(') {
                    return Ok(Expr::Var(name));
                }
                self.pos += 1;
                let function = UnaryOp::FUNCTIONS.into_iter().find(|f| f.name() == name);
                let e = if let Some(op) = function {
                    let arg = self.nested(|p| p.expr())?;
                    Expr::Call(op, Box::new(arg))
                } else if name == "max" || name == "min" {
                    let a = self.nested(|p| p.expr())?;
                    self.expect(',')?;
                    let b = self.nested(|p| p.expr())?;
                    Expr::MaxMin(name == "max", Box::new(a), Box::new(b))
                } else {
                    let msg = match suggestion(&name) {
                        Some(hint) => format!("unknown function '{name}': {hint}"),
                        None => format!(
                            "unknown function '{name}'; known: {}",
                            functions().join(", ")
                        ),
                    };
                    return Err(error(self.src, col, msg));
                };
                self.expect(')')?;
                Ok(e)
            }
            Tok::Op('(') => {
                self.pos += 1;
                let e = self.nested(|p| p.expr())?;
                self.expect(')')?;
                Ok(e)
            }
            _ => Err(error(
                self.src,
                col,
                format!(
                    "expected a number, a variable, a function or '(', found {}",
                    self.describe()
                ),
            )),
        }
    }
}

/// Parses an expression; errors name the column and point at it.
pub fn parse(src: &str) -> Result<Expr> {
    let mut p = Parser {
        src,
        toks: lex(src)?,
        pos: 0,
        depth: 0,
    };
    let e = p.expr()?;
    if *p.peek() != Tok::End {
        return Err(error(
            src,
            p.col(),
            format!("unexpected {} after a complete expression", p.describe()),
        ));
    }
    Ok(e)
}

impl Expr {
    /// Variable names in order of first appearance.
    pub fn variables(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![self];
        while let Some(e) = stack.pop() {
            match e {
                Expr::Num(_) => {}
                Expr::Var(n) => {
                    if !out.contains(n) {
                        out.push(n.clone());
                    }
                }
                Expr::Neg(a) | Expr::Call(_, a) => stack.push(a),
                Expr::Bin(_, a, b) | Expr::MaxMin(_, a, b) => {
                    stack.push(b);
                    stack.push(a);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_and_associativity() {
        let e = parse("-x^2 + 2*y").unwrap();
        assert_eq!(
            e,
            Expr::Bin(
                '+',
                Box::new(Expr::Neg(Box::new(Expr::Bin(
                    '^',
                    Box::new(Expr::Var("x".into())),
                    Box::new(Expr::Num(2.0))
                )))),
                Box::new(Expr::Bin(
                    '*',
                    Box::new(Expr::Num(2.0)),
                    Box::new(Expr::Var("y".into()))
                ))
            )
        );
        assert_eq!(
            parse("2^3^2").unwrap(),
            Expr::Bin(
                '^',
                Box::new(Expr::Num(2.0)),
                Box::new(Expr::Bin(
                    '^',
                    Box::new(Expr::Num(3.0)),
                    Box::new(Expr::Num(2.0))
                ))
            )
        );
        assert_eq!(parse("1e-3").unwrap(), Expr::Num(1e-3));
        // the typeset operators a learner may paste read as their ASCII spelling
        assert_eq!(
            parse("2 × x − y ÷ 3").unwrap(),
            parse("2 * x - y / 3").unwrap()
        );
        assert_eq!(parse("−x·y").unwrap(), parse("-x*y").unwrap());
        assert_eq!(
            parse("max(a, min(b, 1))").unwrap().variables(),
            vec!["a", "b"]
        );
    }

    #[test]
    fn errors_point_at_the_column() {
        let e = parse("tanh(w*x + )").unwrap_err().to_string();
        assert!(e.contains("column 12") && e.contains("found ')'"), "{e}");
        let e = parse("foo(x)").unwrap_err().to_string();
        assert!(
            e.contains("column 1") && e.contains("unknown function 'foo'"),
            "{e}"
        );
        let e = parse("x $ y").unwrap_err().to_string();
        assert!(e.contains("column 3") && e.contains("'$'"), "{e}");
        assert!(
            parse("(x")
                .unwrap_err()
                .to_string()
                .contains("expected ')'")
        );
        assert!(
            parse("x y")
                .unwrap_err()
                .to_string()
                .contains("unexpected 'y'")
        );
        for (src, col, says) in [
            ("log(x)", 1, "ln(x)"),
            ("tan(x)", 1, "sin(x)/cos(x)"),
            ("pow(x, 2)", 1, "a^b"),
            ("x**2", 2, "write x^2"),
        ] {
            let e = parse(src).unwrap_err().to_string();
            assert!(
                e.contains(&format!("column {col}")) && e.contains(says),
                "{src}: {e}"
            );
        }
        let deep = format!("{}x{}", "(".repeat(600), ")".repeat(600));
        assert!(
            parse(&deep)
                .unwrap_err()
                .to_string()
                .contains("nesting deeper")
        );
    }
}
