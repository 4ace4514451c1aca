//! docs/troubleshooting.md against the code, so that it cannot drift: every line the code can
//! log as an error has a row there, every row still names a line the code prints, and every exit
//! status of both binaries is in its tables with the meaning `--help` prints.
//!
//! The lines of the code are read from the sources at test time: each `#[error("...")]`
//! template; each message given to flint's `NotReady`, `Conflict`, `Unsafe` and `UsageError` and
//! to flint-boot's `ExitError`, which carry their text in a `String`; each `warn!` and `error!`
//! message. A placeholder (`{path}`, `{0}`, `{:?}`, `{}` with an argument) matches any
//! `<name>` the doc writes in its place: the doc names what the code leaves to its arguments.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::{Path, PathBuf};

use flint::exit::ExitStatus;

const DOC: &str = "docs/troubleshooting.md";
/// The crates whose lines an operator can see: flint's, flint-boot's, and the two libraries
/// whose errors both print (the inventory's, the configuration's).
const SOURCES: [&str; 4] = [
    "src",
    "crates/flint-boot/src",
    "crates/flint-ipxe/src",
    "crates/flint-config/src",
];
/// flint-boot's table of statuses. Read from its source rather than linked: a dev-dependency on
/// flint-boot would unify its features (hyper's server, tokio's multi-threaded runtime) into
/// every test build of this crate.
const BOOT_EXIT: &str = "crates/flint-boot/src/exit.rs";
/// A placeholder once normalised: `{path}` in the code and `<file>` in the doc both become it.
const HOLE: char = '\u{1}';
/// Between two literals of the code in the text a row's pieces are looked up in, so that no
/// piece is found across the end of one literal and the start of the next.
const APART: char = '\u{2}';

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// --- Rust source, as far as its literals go ----------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(String),
    Punct(char),
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    line: usize,
}

impl Token {
    fn is(&self, c: char) -> bool {
        self.tok == Tok::Punct(c)
    }

    fn ident(&self) -> Option<&str> {
        match &self.tok {
            Tok::Ident(name) => Some(name),
            _ => None,
        }
    }
}

/// The tokens of a Rust file, comments dropped and string literals unescaped: enough to find
/// where a message is written and what it says, not a parser.
fn lex(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    let mut tokens = Vec::new();
    let mut i = 0;
    let mut line = 1;
    while i < chars.len() {
        let c = chars[i];
        let start = line;
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            // Block comments nest in Rust.
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    line += usize::from(chars[i] == '\n');
                    i += 1;
                }
            }
        } else if c == '"' {
            let (value, end) = string(&chars, i + 1, &mut line);
            tokens.push(Token {
                tok: Tok::Str(value),
                line: start,
            });
            i = end;
        } else if c == '\'' {
            // A char literal ('a', '\n', '\u{7f}'), else a lifetime or a label.
            if at(i + 1) == '\\' {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                i += 1;
            }
        } else if c.is_ascii_digit() {
            let begin = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            tokens.push(Token {
                tok: Tok::Num(chars[begin..i].iter().collect()),
                line: start,
            });
        } else if c == '_' || c.is_alphabetic() {
            if let Some((value, end)) = prefixed_string(&chars, i, &mut line) {
                tokens.push(Token {
                    tok: Tok::Str(value),
                    line: start,
                });
                i = end;
                continue;
            }
            let begin = i;
            while i < chars.len() && (chars[i] == '_' || chars[i].is_alphanumeric()) {
                i += 1;
            }
            tokens.push(Token {
                tok: Tok::Ident(chars[begin..i].iter().collect()),
                line: start,
            });
        } else {
            tokens.push(Token {
                tok: Tok::Punct(c),
                line: start,
            });
            i += 1;
        }
    }
    tokens
}

/// `r"..."`, `r#"..."#`, `b"..."`, `br"..."` at `i`: the value and where it ends.
fn prefixed_string(chars: &[char], i: usize, line: &mut usize) -> Option<(String, usize)> {
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    let raw_from = match (chars[i], at(i + 1)) {
        ('b', '"') | ('c', '"') => return Some(string(chars, i + 2, line)),
        ('r', _) => i + 1,
        ('b', 'r') => i + 2,
        _ => return None,
    };
    let hashes = (raw_from..chars.len())
        .take_while(|&j| chars[j] == '#')
        .count();
    let open = raw_from + hashes;
    if at(open) != '"' {
        return None;
    }
    let mut j = open + 1;
    while j < chars.len() {
        if chars[j] == '"' && (1..=hashes).all(|h| at(j + h) == '#') {
            let value: String = chars[open + 1..j].iter().collect();
            *line += value.matches('\n').count();
            return Some((value, j + 1 + hashes));
        }
        j += 1;
    }
    None
}

/// A string literal's value from just after its opening quote, and where it ends.
fn string(chars: &[char], mut i: usize, line: &mut usize) -> (String, usize) {
    let mut value = String::new();
    while i < chars.len() {
        match chars[i] {
            '"' => return (value, i + 1),
            '\\' => {
                i += 1;
                match chars.get(i).copied().unwrap_or('\0') {
                    'n' => value.push('\n'),
                    't' => value.push('\t'),
                    'r' => value.push('\r'),
                    '0' => value.push('\0'),
                    'x' => {
                        let hex: String = chars[i + 1..i + 3].iter().collect();
                        value.push(char::from(u8::from_str_radix(&hex, 16).unwrap_or(b'?')));
                        i += 2;
                    }
                    'u' => {
                        let close = (i..chars.len()).find(|&j| chars[j] == '}').unwrap_or(i);
                        let hex: String = chars[i + 2..close].iter().collect();
                        value.push(
                            u32::from_str_radix(&hex, 16)
                                .ok()
                                .and_then(char::from_u32)
                                .unwrap_or('?'),
                        );
                        i = close;
                    }
                    // A line continuation: the break and the next line's indentation go.
                    '\n' => {
                        *line += 1;
                        while chars.get(i + 1).is_some_and(|c| c.is_whitespace()) {
                            i += 1;
                            *line += usize::from(chars[i] == '\n');
                        }
                    }
                    other => value.push(other),
                }
                i += 1;
            }
            c => {
                *line += usize::from(c == '\n');
                value.push(c);
                i += 1;
            }
        }
    }
    (value, i)
}

/// The tokens outside `#[cfg(test)]` modules: a test's own strings are no operator's line.
fn without_tests(tokens: Vec<Token>) -> Vec<Token> {
    let mut kept = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        let cfg_test = tokens[i].is('#')
            && tokens.get(i + 1).is_some_and(|t| t.is('['))
            && tokens.get(i + 2).and_then(Token::ident) == Some("cfg")
            && tokens.get(i + 3).is_some_and(|t| t.is('('))
            && tokens.get(i + 4).and_then(Token::ident) == Some("test")
            && tokens.get(i + 5).is_some_and(|t| t.is(')'))
            && tokens.get(i + 6).is_some_and(|t| t.is(']'))
            && tokens.get(i + 7).and_then(Token::ident) == Some("mod");
        if cfg_test && let Some(open) = (i + 8..tokens.len()).find(|&j| tokens[j].is('{')) {
            i = matching(&tokens, open) + 1;
            continue;
        }
        kept.push(tokens[i].clone());
        i += 1;
    }
    kept
}

/// The index of the bracket that closes the one at `open`.
fn matching(tokens: &[Token], open: usize) -> usize {
    let mut depth = 0usize;
    for (j, token) in tokens.iter().enumerate().skip(open) {
        match token.tok {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => {
                depth -= 1;
                if depth == 0 {
                    return j;
                }
            }
            _ => {}
        }
    }
    tokens.len() - 1
}

/// Where each argument of the call whose `(` is at `open` lies, split at its own commas.
fn arguments(tokens: &[Token], open: usize) -> Vec<Range<usize>> {
    let close = matching(tokens, open);
    let mut args = Vec::new();
    let mut depth = 0usize;
    let mut from = open + 1;
    for (j, token) in tokens.iter().enumerate().take(close).skip(open + 1) {
        match token.tok {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => depth -= 1,
            Tok::Punct(',') if depth == 0 => {
                args.push(from..j);
                from = j + 1;
            }
            _ => {}
        }
    }
    if from < close {
        args.push(from..close);
    }
    args
}

/// An argument as a name for its placeholder in a suggested row: `path.display()` is `<path>`,
/// `shown(path)` is `<path>`, `m.id` is `<id>`.
fn name_of(arg: &[Token]) -> String {
    let words: Vec<&str> = arg.iter().filter_map(Token::ident).collect();
    let skip = [
        "self",
        "display",
        "shown",
        "one_line",
        "flint_json",
        "hex_id",
        "len",
        "to_string",
        "as_str",
        "name",
        "number",
        "join",
        "map_or",
        "into",
        "files",
        "identity",
        "printable",
    ];
    words
        .iter()
        .rev()
        .find(|w| !skip.contains(w))
        .or(words.first())
        .map_or_else(|| "value".to_owned(), |w| (*w).to_owned())
}

// --- lines, as the code writes them and as the doc shows them ----------------------------------

/// A part of a line: its literal text, or a placeholder with the name a row would give it.
#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    Hole(String),
}

/// A format string's text and placeholders, each named after the argument it takes.
fn pieces(format: &str, args: &[&[Token]]) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut positional = 0;
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let inner: String = chars.by_ref().take_while(|&c| c != '}').collect();
                let name = inner.split(':').next().unwrap_or("").trim();
                let name = if name.is_empty() {
                    positional += 1;
                    args.get(positional - 1)
                        .map_or_else(|| "value".to_owned(), |a| name_of(a))
                } else if let Ok(n) = name.parse::<usize>() {
                    // Without arguments, `{0}` is a tuple variant's field: it has no name.
                    args.get(n)
                        .map_or_else(|| "value".to_owned(), |a| name_of(a))
                } else {
                    name.to_owned()
                };
                out.push(Piece::Text(std::mem::take(&mut text)));
                out.push(Piece::Hole(name));
            }
            c => text.push(c),
        }
    }
    out.push(Piece::Text(text));
    out
}

/// What the doc and the code are compared by: every placeholder one `HOLE` (those next to each
/// other one too), whitespace runs one space, `<name>` in the text a placeholder as well.
fn shape(pieces: &[Piece]) -> String {
    let mut text = String::new();
    for piece in pieces {
        match piece {
            Piece::Text(t) => text.push_str(&angle_holes(t)),
            Piece::Hole(_) => text.push(HOLE),
        }
    }
    let mut out = String::new();
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    while out.contains(&format!("{HOLE}{HOLE}")) {
        out = out.replace(&format!("{HOLE}{HOLE}"), &HOLE.to_string());
    }
    out
}

/// `text` with each `<name>` made a `HOLE`.
fn angle_holes(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(open) = rest.find('<') {
        let after = &rest[open + 1..];
        match after.find(['<', '>', '\n']) {
            Some(close) if close > 0 && after.as_bytes()[close] == b'>' => {
                out.push_str(&rest[..open]);
                out.push(HOLE);
                rest = &after[close + 1..];
            }
            _ => {
                out.push_str(&rest[..=open]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// A shape as a row would write it.
fn shown(pieces: &[Piece]) -> String {
    let text: String = pieces
        .iter()
        .map(|p| match p {
            Piece::Text(t) => t.clone(),
            Piece::Hole(name) => format!("<{name}>"),
        })
        .collect();
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn has_words(shape: &str) -> bool {
    shape.chars().any(char::is_alphanumeric)
}

/// A line the code can print, and where.
struct CodeLine {
    shape: String,
    shown: String,
    at: String,
    kind: &'static str,
}

/// Where the arguments open of a constructor whose message is a `String` made on the spot (so
/// its text is in the call, not in an `#[error]`): flint's `UsageError(..)` and
/// `Error::{NotReady, Conflict, Unsafe}(..)`, flint-boot's `ExitError::*(..)`.
fn carries_message(tokens: &[Token], i: usize) -> Option<usize> {
    let name = tokens[i].ident()?;
    if name == "UsageError" && tokens.get(i + 1).is_some_and(|t| t.is('(')) {
        return Some(i + 1);
    }
    let path = tokens.get(i + 1).is_some_and(|t| t.is(':'))
        && tokens.get(i + 2).is_some_and(|t| t.is(':'))
        && tokens.get(i + 4).is_some_and(|t| t.is('('));
    let variant = tokens.get(i + 3).and_then(Token::ident)?;
    let carries = match name {
        "ExitError" => true,
        "Error" => matches!(variant, "NotReady" | "Conflict" | "Unsafe"),
        _ => false,
    };
    (path && carries).then_some(i + 4)
}

/// The string literal that is the whole of `arg`, if it is one.
fn literal(tokens: &[Token], arg: &Range<usize>) -> Option<String> {
    match &tokens[arg.clone()] {
        [
            Token {
                tok: Tok::Str(text),
                ..
            },
        ] => Some(text.clone()),
        _ => None,
    }
}

/// The format string and its arguments at the start of a call's argument: `format!("...", a)`
/// or `"...".into()`.
fn format_in(tokens: &[Token], arg: &Range<usize>) -> Option<(String, Vec<Range<usize>>)> {
    match &tokens[arg.clone()] {
        [
            Token {
                tok: Tok::Str(text),
                ..
            },
            ..,
        ] => Some((text.clone(), Vec::new())),
        [macro_name, bang, open, ..]
            if macro_name.ident() == Some("format") && bang.is('!') && open.is('(') =>
        {
            let inner = arguments(tokens, arg.start + 2);
            let text = literal(tokens, inner.first()?)?;
            Some((text, inner[1..].to_vec()))
        }
        _ => None,
    }
}

/// A line found in a file: its format string, the arguments' tokens, its line number, and what
/// wrote it.
type Found<'t> = (String, Vec<&'t [Token]>, usize, &'static str);

/// Every line of one file.
fn lines_of(tokens: &[Token]) -> Vec<Found<'_>> {
    let slices = |ranges: &[Range<usize>]| -> Vec<&[Token]> {
        ranges.iter().map(|r| &tokens[r.clone()]).collect()
    };
    let mut found = Vec::new();
    for i in 0..tokens.len() {
        let attribute = tokens[i].is('#')
            && tokens.get(i + 1).is_some_and(|t| t.is('['))
            && tokens.get(i + 2).and_then(Token::ident) == Some("error")
            && tokens.get(i + 3).is_some_and(|t| t.is('('));
        if attribute {
            let args = arguments(tokens, i + 3);
            // `#[error(transparent)]` shows its source's line, documented where that is.
            if let Some(text) = args.first().and_then(|a| literal(tokens, a)) {
                let line = tokens[args[0].start].line;
                found.push((text, slices(&args[1..]), line, "#[error]"));
            }
            continue;
        }
        if let Some(open) = carries_message(tokens, i) {
            let args = arguments(tokens, open);
            if let Some((text, format_args)) = args.first().and_then(|a| format_in(tokens, a)) {
                found.push((text, slices(&format_args), tokens[i].line, "message"));
            }
            continue;
        }
        let log = matches!(tokens[i].ident(), Some("warn" | "error"))
            && tokens.get(i + 1).is_some_and(|t| t.is('!'))
            && tokens.get(i + 2).is_some_and(|t| t.is('('));
        if log {
            let args = arguments(tokens, i + 2);
            // The message is the argument that is a literal alone; fields come before it.
            if let Some((at, text)) = args
                .iter()
                .enumerate()
                .find_map(|(at, a)| Some((at, literal(tokens, a)?)))
            {
                let line = tokens[args[at].start].line;
                found.push((text, slices(&args[at + 1..]), line, "log line"));
            }
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code's lines, and the text of every literal outside tests (what a row may quote).
fn code() -> (Vec<CodeLine>, String) {
    let root = root();
    let mut files = Vec::new();
    for dir in SOURCES {
        rust_files(&root.join(dir), &mut files);
    }
    let mut lines = Vec::new();
    let mut literals = String::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        let relative = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        let tokens = without_tests(lex(&text));
        for token in &tokens {
            if let Tok::Str(text) = &token.tok {
                literals.push_str(&shape(&pieces(text, &[])));
                literals.push(APART);
            }
        }
        for (format, args, line, kind) in lines_of(&tokens) {
            let parts = pieces(&format, &args);
            let shape = shape(&parts);
            // A line that is all placeholder (`{0}`, `{doing}`) shows text written elsewhere.
            if has_words(&shape.replace(HOLE, "")) {
                lines.push(CodeLine {
                    shape,
                    shown: shown(&parts),
                    at: format!("{relative}:{line}"),
                    kind,
                });
            }
        }
    }
    (lines, literals)
}

// --- the doc -----------------------------------------------------------------------------------

/// A row of one of the doc's tables, with where it is.
struct Row {
    line: usize,
    h2: String,
    h3: String,
    cells: Vec<String>,
}

/// Every data row of every table (header and separator rows left out).
fn rows(doc: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    let (mut h2, mut h3) = (String::new(), String::new());
    let mut in_table = false;
    let mut in_fence = false;
    for (index, line) in doc.lines().enumerate() {
        if line.starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        if let Some(title) = line.strip_prefix("## ") {
            h2 = title.trim().to_owned();
            h3.clear();
        } else if let Some(title) = line.strip_prefix("### ") {
            h3 = title.trim().to_owned();
        }
        if !line.starts_with('|') {
            in_table = false;
            continue;
        }
        let cells = cells(line);
        let separator = cells
            .iter()
            .all(|c| !c.trim().is_empty() && c.trim().chars().all(|c| matches!(c, '-' | ':')));
        if !in_table {
            // The header.
            in_table = true;
            continue;
        }
        if !separator {
            rows.push(Row {
                line: index + 1,
                h2: h2.clone(),
                h3: h3.clone(),
                cells,
            });
        }
    }
    rows
}

/// A table line's cells: split at `|`, except an escaped one or one in a code span.
fn cells(line: &str) -> Vec<String> {
    let chars: Vec<char> = line.trim().trim_start_matches('|').chars().collect();
    let mut cells = Vec::new();
    let mut cell = String::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' if chars.get(i + 1) == Some(&'|') => {
                cell.push_str("\\|");
                i += 2;
            }
            '`' => {
                let run = chars[i..].iter().take_while(|&&c| c == '`').count();
                let close = (i + run..chars.len()).find(|&j| {
                    chars[j..].iter().take_while(|&&c| c == '`').count() == run
                        && (j == 0 || chars[j - 1] != '`')
                });
                let end = close.map_or(i + run, |j| j + run);
                cell.extend(&chars[i..end]);
                i = end;
            }
            '|' => {
                cells.push(std::mem::take(&mut cell));
                i += 1;
            }
            c => {
                cell.push(c);
                i += 1;
            }
        }
    }
    if !cell.trim().is_empty() {
        cells.push(cell);
    }
    cells
}

/// The code spans of a cell, as Markdown shows them.
fn code_spans(cell: &str) -> Vec<String> {
    let chars: Vec<char> = cell.chars().collect();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' {
            i += 1;
            continue;
        }
        let run = chars[i..].iter().take_while(|&&c| c == '`').count();
        let close = (i + run..chars.len()).find(|&j| {
            chars[j..].iter().take_while(|&&c| c == '`').count() == run && chars[j - 1] != '`'
        });
        let Some(close) = close else {
            break;
        };
        let mut text: String = chars[i + run..close].iter().collect();
        if text.len() > 2 && text.starts_with(' ') && text.ends_with(' ') {
            text = text[1..text.len() - 1].to_owned();
        }
        spans.push(text.replace("\\|", "|"));
        i = close + run;
    }
    spans
}

/// Whether a row's line is the binary flint-boot's, by the section it is in.
fn boot_section(h2: &str) -> bool {
    h2.contains("flint-boot")
}

fn error_section(h2: &str) -> bool {
    h2.ends_with("error lines")
}

/// Statuses with a text each: `(code, meaning)` or `(code, variant)`.
type Statuses = Vec<(u8, String)>;

/// flint-boot's statuses, `(code, meaning)`, and the `ExitError` variant of each code it returns.
fn boot_statuses() -> (Statuses, Statuses) {
    let text = std::fs::read_to_string(root().join(BOOT_EXIT)).expect("flint-boot's exit.rs");
    let tokens = lex(&text);
    let number = |token: &Token| match &token.tok {
        Tok::Num(digits) => digits.parse::<u8>().ok(),
        _ => None,
    };
    let start = tokens
        .iter()
        .position(|t| t.ident() == Some("EXIT_STATUSES"))
        .expect("exit.rs defines EXIT_STATUSES");
    // `&[(u8, &str)] = &[ ... ]`: the second `[` opens the entries.
    let open = (start..tokens.len())
        .filter(|&j| tokens[j].is('['))
        .nth(1)
        .expect("EXIT_STATUSES is a slice literal");
    let mut statuses = Vec::new();
    for entry in arguments(&tokens, open) {
        if !tokens[entry.start].is('(') {
            continue;
        }
        let parts = arguments(&tokens, entry.start);
        let code = parts
            .first()
            .and_then(|p| number(&tokens[p.start]))
            .unwrap_or_else(|| panic!("{BOOT_EXIT}: an entry without its status"));
        let meaning = parts
            .get(1)
            .and_then(|p| literal(&tokens, p))
            .unwrap_or_else(|| panic!("{BOOT_EXIT}: status {code} without its meaning"));
        statuses.push((code, meaning));
    }
    // `ExitError::Usage(_) => 64,` in `code()`.
    let mut names = Vec::new();
    for w in tokens.windows(10) {
        if w[0].ident() == Some("ExitError")
            && w[1].is(':')
            && w[2].is(':')
            && w[4].is('(')
            && w[5].ident() == Some("_")
            && w[6].is(')')
            && w[7].is('=')
            && w[8].is('>')
            && let (Some(variant), Some(code)) = (w[3].ident(), number(&w[9]))
        {
            names.push((code, variant.to_owned()));
        }
    }
    assert!(
        !statuses.is_empty() && !names.is_empty(),
        "{BOOT_EXIT}: no statuses found; has its table moved?"
    );
    (statuses, names)
}

fn numbers(cell: &str) -> Vec<u32> {
    cell.split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .filter_map(|w| w.parse().ok())
        .collect()
}

#[test]
fn the_troubleshooting_doc_names_every_error_line_and_exit_status_of_the_code() {
    let doc = std::fs::read_to_string(root().join(DOC))
        .unwrap_or_else(|e| panic!("cannot read {DOC}: {e}"));
    let rows = rows(&doc);
    let (lines, literals) = code();
    let (boot, names) = boot_statuses();
    let mut problems = Vec::new();

    // Every line of the code has a row whose line holds it.
    let documented: Vec<(String, &Row)> = rows
        .iter()
        .filter(|r| error_section(&r.h2))
        .flat_map(|r| {
            code_spans(r.cells.first().map_or("", String::as_str))
                .into_iter()
                .map(move |span| (shape(&[Piece::Text(span)]), r))
        })
        .collect();
    for line in &lines {
        if !documented.iter().any(|(doc, _)| doc.contains(&line.shape)) {
            problems.push(format!(
                "{}: the {} `{}` has no row in {DOC}: add one, with the status it exits with, \
                 its cause and what to do",
                line.at, line.kind, line.shown
            ));
        }
    }

    // Every row of the error sections names a line, and each piece of it is still in the code.
    for row in rows.iter().filter(|r| error_section(&r.h2)) {
        let spans = code_spans(row.cells.first().map_or("", String::as_str));
        if spans.is_empty() {
            problems.push(format!(
                "{DOC}:{}: a row of \"{}\" without the line in its first cell, in backticks",
                row.line, row.h2
            ));
        }
        for span in spans {
            let shape = shape(&[Piece::Text(span.clone())]);
            // A chain joins its parts with `: `, which no one literal holds with its neighbours.
            let fragments = shape
                .split(HOLE)
                .map(|f| f.trim_matches(|c: char| c == ':' || c.is_whitespace()))
                .filter(|f| has_words(f));
            for fragment in fragments {
                if !literals.contains(fragment) {
                    problems.push(format!(
                        "{DOC}:{}: `{span}`: no source prints {fragment:?}: the line is gone or \
                         reworded; update the row or remove it",
                        row.line
                    ));
                }
            }
        }
        // The status column names statuses the binary has.
        let known: Vec<u32> = if boot_section(&row.h2) {
            boot.iter().map(|(c, _)| u32::from(*c)).collect()
        } else {
            ExitStatus::ALL
                .iter()
                .map(|s| u32::from(s.code()))
                .collect()
        };
        for code in numbers(row.cells.get(1).map_or("", String::as_str)) {
            if !known.contains(&code) {
                problems.push(format!(
                    "{DOC}:{}: exit status {code} in the status column is not one of {}'s",
                    row.line,
                    if boot_section(&row.h2) {
                        "flint-boot"
                    } else {
                        "flint"
                    }
                ));
            }
        }
    }

    // Both tables of exit statuses, against the code's.
    let exit_rows = |binary: &str| -> Vec<&Row> {
        rows.iter()
            .filter(|r| r.h2 == "Exit statuses" && r.h3 == binary)
            .collect()
    };
    let code_of = |row: &Row| row.cells.first().and_then(|c| c.trim().parse::<u8>().ok());
    let flint_rows = exit_rows("flint");
    for status in ExitStatus::ALL {
        let name = format!("{status:?}");
        match flint_rows
            .iter()
            .find(|r| code_of(r) == Some(status.code()))
        {
            None => problems.push(format!(
                "src/exit.rs: flint's exit status {} ({name}) has no row under \"## Exit \
                 statuses\", \"### flint\" in {DOC}",
                status.code()
            )),
            Some(row) => {
                if !row.cells.get(1).is_some_and(|c| c.contains(&name)) {
                    problems.push(format!(
                        "{DOC}:{}: flint's exit status {}: the name column does not say {name}",
                        row.line,
                        status.code()
                    ));
                }
                if !row
                    .cells
                    .get(2)
                    .is_some_and(|c| c.contains(status.meaning()))
                {
                    problems.push(format!(
                        "{DOC}:{}: flint's exit status {}: the meaning column does not say \
                         {:?}, as src/exit.rs and --help do",
                        row.line,
                        status.code(),
                        status.meaning()
                    ));
                }
            }
        }
    }
    for row in &flint_rows {
        if !code_of(row).is_some_and(|c| ExitStatus::ALL.iter().any(|s| s.code() == c)) {
            problems.push(format!(
                "{DOC}:{}: a row of flint's exit statuses that src/exit.rs does not have",
                row.line
            ));
        }
    }
    let boot_rows = exit_rows("flint-boot");
    for (code, meaning) in &boot {
        match boot_rows.iter().find(|r| code_of(r) == Some(*code)) {
            None => problems.push(format!(
                "{BOOT_EXIT}: flint-boot's exit status {code} has no row under \"## Exit \
                 statuses\", \"### flint-boot\" in {DOC}"
            )),
            Some(row) => {
                if let Some((_, name)) = names.iter().find(|(c, _)| c == code)
                    && !row.cells.get(1).is_some_and(|c| c.contains(name.as_str()))
                {
                    problems.push(format!(
                        "{DOC}:{}: flint-boot's exit status {code}: the name column does not \
                         say {name}",
                        row.line
                    ));
                }
                if !row
                    .cells
                    .get(2)
                    .is_some_and(|c| c.contains(meaning.as_str()))
                {
                    problems.push(format!(
                        "{DOC}:{}: flint-boot's exit status {code}: the meaning column does not \
                         say {meaning:?}, as {BOOT_EXIT} and --help do",
                        row.line
                    ));
                }
            }
        }
    }
    for row in &boot_rows {
        if !code_of(row).is_some_and(|c| boot.iter().any(|(b, _)| *b == c)) {
            problems.push(format!(
                "{DOC}:{}: a row of flint-boot's exit statuses that {BOOT_EXIT} does not have",
                row.line
            ));
        }
    }

    let distinct: BTreeSet<&str> = lines.iter().map(|l| l.shape.as_str()).collect();
    assert!(
        problems.is_empty(),
        "{DOC} is out of step with the code ({} problems):\n- {}",
        problems.len(),
        problems.join("\n- ")
    );
    let error_rows = rows.iter().filter(|r| error_section(&r.h2)).count();
    println!(
        "{DOC}: {} lines of the code ({} distinct), each in one of its {error_rows} error rows \
         ({} lines shown); {} exit statuses of flint, {} of flint-boot in its tables",
        lines.len(),
        distinct.len(),
        documented.len(),
        ExitStatus::ALL.len(),
        boot.len()
    );
}
