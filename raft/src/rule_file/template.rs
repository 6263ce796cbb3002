//! A parse-only check of Go `text/template` source, as `promtool check rules` applies it to an
//! alerting rule's labels and annotations.
//!
//! Prometheus parses each value after a prefix that declares `$labels`, `$externalLabels`,
//! `$externalURL` and `$value`, with its own template functions added to Go's builtins, and
//! refuses the rule if the parse fails. This module follows Go 1.19's `text/template/parse`
//! (the Go Debian built Prometheus 2.42 with) token by token: the lexer's rules for delimiters,
//! trim markers, comments, quoted strings, numbers and terminators, and the parser's rules
//! for actions, pipelines and declarations, variable scopes, control structures (`if`,
//! `range`, `with`, `else`, `else if`, `end`, `break`/`continue` only inside `range`),
//! `define`, `block` and `template` clauses, and undefined functions and variables.
//!
//! What it does not do (documented in docs/design/rules.md): it does not execute templates
//! (Prometheus's check does not either), it checks numbers only for the shape Go's lexer
//! accepts plus "has a digit" (Go's `strconv` refuses a few more, such as `1__0`), and it does
//! not check redefinitions of a `define`d name. Error texts are Sextant's, not Go's.

/// Go's builtins and Prometheus 2.42's template functions (each checked against promtool).
const FUNCTIONS: &[&str] = &[
    // Go text/template builtins.
    "and",
    "call",
    "html",
    "index",
    "slice",
    "js",
    "len",
    "not",
    "or",
    "print",
    "printf",
    "println",
    "urlquery",
    "eq",
    "ge",
    "gt",
    "le",
    "lt",
    "ne",
    // Prometheus (template/template.go).
    "query",
    "first",
    "label",
    "value",
    "strvalue",
    "args",
    "reReplaceAll",
    "safeHtml",
    "match",
    "title",
    "toUpper",
    "toLower",
    "graphLink",
    "tableLink",
    "sortByLabel",
    "humanize",
    "humanize1024",
    "humanizeDuration",
    "humanizePercentage",
    "humanizeTimestamp",
    "toTime",
    "pathPrefix",
    "externalURL",
    "parseDuration",
    "stripPort",
    "stripDomain",
];

/// The variables Prometheus declares before every alert template.
const PREDECLARED: &[&str] = &["$", "$labels", "$externalLabels", "$externalURL", "$value"];

/// Controls, parentheses and `define`/`block` bodies nest at most this deep, so that hostile
/// input cannot exhaust the stack (Go has no such limit; no real template comes near it).
const NESTING_MAX: usize = 64;

/// Template sources longer than this are refused without parsing (the rule's label and
/// annotation values are limited far below this anyway).
const TEMPLATE_BYTES_MAX: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Text,
    Left,
    Right,
    Space,
    Assign,
    Declare,
    Pipe,
    LParen,
    RParen,
    Str,
    /// A printable ASCII character with no other meaning, e.g. `,`.
    Char(char),
    CharConst,
    Number(String),
    Bool,
    Nil,
    Dot,
    Field,
    Variable(String),
    Ident(String),
    Keyword(&'static str),
    Eof,
}

const KEYWORDS: &[&str] = &[
    "block", "break", "continue", "define", "else", "end", "if", "range", "template", "with",
];

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn is_alphanumeric(c: char) -> bool {
    c == '_' || c.is_alphabetic() || c.is_numeric()
}

struct Lexer<'a> {
    src: &'a str,
    pos: usize,
    paren_depth: i32,
    toks: Vec<Tok>,
}

impl Lexer<'_> {
    fn rest(&self) -> &str {
        &self.src[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    /// `}}` or ` -}}` (a trim marker needs a space before it).
    fn at_right_delim(&self) -> Option<usize> {
        let rest = self.rest();
        if rest.starts_with("}}") {
            return Some(2);
        }
        let mut chars = rest.chars();
        match (chars.next(), chars.next()) {
            (Some(c), Some('-')) if is_space(c) && rest[c.len_utf8() + 1..].starts_with("}}") => {
                Some(c.len_utf8() + 3)
            }
            _ => None,
        }
    }

    /// Go's `atTerminator`: what may follow a field, variable or identifier.
    fn at_terminator(&self) -> bool {
        match self.peek() {
            None => true,
            Some(c) if is_space(c) || matches!(c, '.' | ',' | '|' | ':' | ')' | '(') => true,
            Some(_) => self.rest().starts_with("}}"),
        }
    }

    fn run(mut self) -> Result<Vec<Tok>, String> {
        loop {
            // Text up to the next `{{`.
            let Some(at) = self.rest().find("{{") else {
                if !self.rest().is_empty() {
                    self.toks.push(Tok::Text);
                }
                self.toks.push(Tok::Eof);
                return Ok(self.toks);
            };
            if at > 0 {
                self.toks.push(Tok::Text);
            }
            self.pos += at + 2;
            let mut chars = self.rest().chars();
            if let (Some('-'), Some(c)) = (chars.next(), chars.next()) {
                if is_space(c) {
                    self.pos += 1 + c.len_utf8();
                }
            }
            if self.rest().starts_with("/*") {
                let Some(end) = self.rest().find("*/") else {
                    return Err("unclosed comment".into());
                };
                self.pos += end + 2;
                let Some(len) = self.at_right_delim() else {
                    return Err("comment ends before closing delimiter".into());
                };
                self.pos += len;
                continue;
            }
            self.toks.push(Tok::Left);
            self.inside_action()?;
        }
    }

    fn inside_action(&mut self) -> Result<(), String> {
        loop {
            if let Some(len) = self.at_right_delim() {
                if self.paren_depth != 0 {
                    return Err("unclosed left paren".into());
                }
                self.pos += len;
                self.toks.push(Tok::Right);
                return Ok(());
            }
            let start = self.pos;
            let Some(c) = self.bump() else {
                return Err("unclosed action".into());
            };
            let tok = match c {
                c if is_space(c) => Tok::Space,
                '=' => Tok::Assign,
                ':' => {
                    if self.bump() != Some('=') {
                        return Err("expected :=".into());
                    }
                    Tok::Declare
                }
                '|' => Tok::Pipe,
                '"' => self.quoted('"', "unterminated quoted string", Tok::Str)?,
                '\'' => self.quoted('\'', "unterminated character constant", Tok::CharConst)?,
                '`' => {
                    let Some(end) = self.rest().find('`') else {
                        return Err("unterminated raw quoted string".into());
                    };
                    self.pos += end + 1;
                    Tok::Str
                }
                '$' => {
                    self.take_alphanumeric();
                    self.check_terminator()?;
                    Tok::Variable(self.src[start..self.pos].to_string())
                }
                '.' if self.peek().is_some_and(|c| c.is_ascii_digit()) => {
                    self.pos = start;
                    self.number()?
                }
                '.' => {
                    if self.at_terminator() {
                        Tok::Dot
                    } else {
                        self.take_alphanumeric();
                        self.check_terminator()?;
                        Tok::Field
                    }
                }
                '+' | '-' | '0'..='9' => {
                    self.pos = start;
                    self.number()?
                }
                c if is_alphanumeric(c) => {
                    self.take_alphanumeric();
                    self.check_terminator()?;
                    let word = &self.src[start..self.pos];
                    match word {
                        "true" | "false" => Tok::Bool,
                        "nil" => Tok::Nil,
                        _ => match KEYWORDS.iter().find(|k| **k == word) {
                            Some(keyword) => Tok::Keyword(keyword),
                            None => Tok::Ident(word.to_string()),
                        },
                    }
                }
                '(' => {
                    self.paren_depth += 1;
                    Tok::LParen
                }
                ')' => {
                    self.paren_depth -= 1;
                    if self.paren_depth < 0 {
                        return Err("unexpected right paren ')'".into());
                    }
                    Tok::RParen
                }
                c if c.is_ascii() && !c.is_ascii_control() => Tok::Char(c),
                c => return Err(format!("unrecognized character in action: {c:?}")),
            };
            self.toks.push(tok);
        }
    }

    fn take_alphanumeric(&mut self) {
        while self.peek().is_some_and(is_alphanumeric) {
            self.bump();
        }
    }

    fn check_terminator(&self) -> Result<(), String> {
        match self.at_terminator() {
            true => Ok(()),
            false => Err(format!("bad character {:?}", self.peek().unwrap_or(' '))),
        }
    }

    fn quoted(&mut self, quote: char, unterminated: &str, tok: Tok) -> Result<Tok, String> {
        loop {
            match self.bump() {
                Some('\\') => match self.bump() {
                    None | Some('\n') => return Err(unterminated.into()),
                    Some(_) => {}
                },
                None | Some('\n') => return Err(unterminated.into()),
                Some(c) if c == quote => return Ok(tok),
                Some(_) => {}
            }
        }
    }

    /// Go's `scanNumber`: sign, base prefix, digits with `_`, fraction, exponent, `i`.
    fn number(&mut self) -> Result<Tok, String> {
        let start = self.pos;
        if matches!(self.peek(), Some('+' | '-')) {
            self.bump();
        }
        let mut digits = "0123456789_";
        let mut exponent = "eE";
        if self.rest().starts_with('0') {
            let prefix = self.rest().get(1..2).unwrap_or("");
            let (d, e) = match prefix {
                "x" | "X" => ("0123456789abcdefABCDEF_", "pP"),
                "o" | "O" => ("01234567_", ""),
                "b" | "B" => ("01_", ""),
                _ => (digits, exponent),
            };
            if d != digits {
                self.pos += 2;
            }
            (digits, exponent) = (d, e);
        }
        let take = |lexer: &mut Self, set: &str| {
            while lexer.peek().is_some_and(|c| set.contains(c)) {
                lexer.bump();
            }
        };
        take(self, digits);
        if self.peek() == Some('.') {
            self.bump();
            take(self, digits);
        }
        if !exponent.is_empty() && self.peek().is_some_and(|c| exponent.contains(c)) {
            self.bump();
            if matches!(self.peek(), Some('+' | '-')) {
                self.bump();
            }
            take(self, "0123456789_");
        }
        if self.peek() == Some('i') {
            self.bump();
        }
        let text = &self.src[start..self.pos];
        if self.peek().is_some_and(is_alphanumeric) {
            return Err(format!("bad number syntax: {text:?}"));
        }
        // Go's parser hands the text to strconv; a number needs at least one digit.
        if !text.chars().any(|c| c.is_ascii_digit()) {
            return Err(format!("illegal number syntax: {text:?}"));
        }
        Ok(Tok::Number(text.to_string()))
    }
}

/// What a list ended with.
enum ListEnd {
    End,
    Else { chained_if: bool },
}

struct Parser {
    toks: Vec<Tok>,
    at: usize,
    vars: Vec<String>,
    range_depth: usize,
    nesting: usize,
}

impl Parser {
    fn enter(&mut self) -> Result<(), String> {
        self.nesting += 1;
        if self.nesting > NESTING_MAX {
            return Err(format!("nested more than {NESTING_MAX} deep"));
        }
        Ok(())
    }

    fn peek(&self) -> &Tok {
        &self.toks[self.at.min(self.toks.len() - 1)]
    }

    fn next(&mut self) -> Tok {
        let tok = self.peek().clone();
        self.at += 1;
        tok
    }

    fn peek_non_space(&mut self) -> Tok {
        while *self.peek() == Tok::Space {
            self.at += 1;
        }
        self.peek().clone()
    }

    fn next_non_space(&mut self) -> Tok {
        self.peek_non_space();
        self.next()
    }

    fn expect_right(&mut self, context: &str) -> Result<(), String> {
        match self.next_non_space() {
            Tok::Right => Ok(()),
            tok => Err(format!("unexpected {} in {context}", describe(&tok))),
        }
    }

    /// The whole template: text, actions and `define`s until EOF.
    fn parse(&mut self) -> Result<(), String> {
        loop {
            match self.peek().clone() {
                Tok::Eof => return Ok(()),
                Tok::Left => {
                    let save = self.at;
                    self.at += 1;
                    if self.peek_non_space() == Tok::Keyword("define") {
                        self.next();
                        self.definition()?;
                        continue;
                    }
                    self.at = save;
                }
                _ => {}
            }
            match self.text_or_action()? {
                None => {}
                Some(ListEnd::End) => return Err("unexpected {{end}}".into()),
                Some(ListEnd::Else { .. }) => return Err("unexpected {{else}}".into()),
            }
        }
    }

    fn definition(&mut self) -> Result<(), String> {
        match self.next_non_space() {
            Tok::Str => {}
            tok => return Err(format!("unexpected {} in define clause", describe(&tok))),
        }
        self.expect_right("define clause")?;
        self.new_scope_list()
    }

    /// A list in a fresh template (define, block): only `$` is declared.
    fn new_scope_list(&mut self) -> Result<(), String> {
        self.enter()?;
        let vars = std::mem::replace(&mut self.vars, vec!["$".into()]);
        let range_depth = std::mem::replace(&mut self.range_depth, 0);
        let end = self.item_list()?;
        self.vars = vars;
        self.range_depth = range_depth;
        self.nesting -= 1;
        match end {
            ListEnd::End => Ok(()),
            ListEnd::Else { .. } => Err("unexpected {{else}}".into()),
        }
    }

    /// Items until `{{end}}` or `{{else}}`.
    fn item_list(&mut self) -> Result<ListEnd, String> {
        loop {
            if *self.peek() == Tok::Eof {
                return Err("unexpected EOF".into());
            }
            if let Some(end) = self.text_or_action()? {
                return Ok(end);
            }
        }
    }

    fn text_or_action(&mut self) -> Result<Option<ListEnd>, String> {
        match self.next() {
            Tok::Text => Ok(None),
            Tok::Left => self.action(),
            tok => Err(format!("unexpected {} in input", describe(&tok))),
        }
    }

    fn action(&mut self) -> Result<Option<ListEnd>, String> {
        match self.peek_non_space() {
            Tok::Keyword("else") => {
                self.next();
                if self.peek_non_space() == Tok::Keyword("if") {
                    // `{{else if …}}`: the `if` is parsed by the caller as a nested control.
                    return Ok(Some(ListEnd::Else { chained_if: true }));
                }
                self.expect_right("else")?;
                Ok(Some(ListEnd::Else { chained_if: false }))
            }
            Tok::Keyword("end") => {
                self.next();
                self.expect_right("end")?;
                Ok(Some(ListEnd::End))
            }
            Tok::Keyword(keyword @ ("if" | "range" | "with")) => {
                self.next();
                self.control(keyword)?;
                Ok(None)
            }
            Tok::Keyword(keyword @ ("break" | "continue")) => {
                self.next();
                self.expect_right(&format!("{{{{{keyword}}}}}"))?;
                if self.range_depth == 0 {
                    return Err(format!("{{{{{keyword}}}}} outside {{{{range}}}}"));
                }
                Ok(None)
            }
            Tok::Keyword(keyword @ ("template" | "block")) => {
                self.next();
                let context = format!("{keyword} clause");
                match self.next_non_space() {
                    Tok::Str => {}
                    tok => return Err(format!("unexpected {} in {context}", describe(&tok))),
                }
                if self.peek_non_space() != Tok::Right {
                    self.pipeline(&context, false)?;
                } else {
                    self.next();
                }
                if keyword == "block" {
                    self.new_scope_list()?;
                }
                Ok(None)
            }
            _ => {
                self.pipeline("command", true)?;
                Ok(None)
            }
        }
    }

    /// `if`, `range` or `with`: pipeline, list, optional else (or else-if chain), end.
    fn control(&mut self, context: &str) -> Result<(), String> {
        self.enter()?;
        let vars = self.vars.len();
        self.pipeline(context, true)?;
        if context == "range" {
            self.range_depth += 1;
        }
        let end = self.item_list();
        if context == "range" {
            self.range_depth -= 1;
        }
        match end? {
            ListEnd::End => {}
            ListEnd::Else { chained_if: true } => {
                // `{{else if x}}…{{end}}` is `{{else}}{{if x}}…{{end}}{{end}}` with one end.
                self.next_non_space();
                self.control("if")?;
            }
            ListEnd::Else { chained_if: false } => match self.item_list()? {
                ListEnd::End => {}
                ListEnd::Else { .. } => return Err("expected end; found {{else}}".into()),
            },
        }
        self.vars.truncate(vars);
        self.nesting -= 1;
        Ok(())
    }

    /// Declarations, then commands separated by `|`, up to `}}` (or `)` when parenthesized).
    fn pipeline(&mut self, context: &str, declarations: bool) -> Result<(), String> {
        let parenthesized = context == "parenthesized pipeline";
        let mut declared = 0;
        while declarations {
            let Tok::Variable(name) = self.peek_non_space() else {
                break;
            };
            let save = self.at;
            self.next();
            match self.peek_non_space() {
                Tok::Assign | Tok::Declare => {
                    self.next();
                    self.vars.push(name);
                    break;
                }
                Tok::Char(',') => {
                    self.next();
                    self.vars.push(name);
                    declared += 1;
                    if context == "range" && declared < 2 {
                        match self.peek_non_space() {
                            Tok::Variable(_) | Tok::Right | Tok::RParen => continue,
                            _ => return Err("range can only initialize variables".into()),
                        }
                    }
                    return Err(format!("too many declarations in {context}"));
                }
                _ => {
                    self.at = save;
                    break;
                }
            }
        }
        let mut commands: Vec<Tok> = Vec::new();
        loop {
            match self.next_non_space() {
                Tok::Right if !parenthesized => break,
                Tok::RParen if parenthesized => break,
                Tok::Bool
                | Tok::CharConst
                | Tok::Dot
                | Tok::Field
                | Tok::Ident(_)
                | Tok::Number(_)
                | Tok::Nil
                | Tok::Str
                | Tok::Variable(_)
                | Tok::LParen => {
                    self.at -= 1;
                    commands.push(self.command()?);
                }
                tok => return Err(format!("unexpected {} in {context}", describe(&tok))),
            }
        }
        if commands.is_empty() {
            return Err(format!("missing value for {context}"));
        }
        // Go's checkPipeline: later stages must be able to take the previous value.
        for (stage, first) in commands.iter().enumerate().skip(1) {
            if matches!(
                first,
                Tok::Bool | Tok::Dot | Tok::Nil | Tok::Number(_) | Tok::Str | Tok::CharConst
            ) {
                return Err(format!(
                    "non executable command in pipeline stage {}",
                    stage + 1
                ));
            }
        }
        Ok(())
    }

    /// Operands up to `|`, `}}` or `)`; returns the first operand's kind.
    fn command(&mut self) -> Result<Tok, String> {
        let mut first = None;
        loop {
            self.peek_non_space();
            if let Some(operand) = self.operand()? {
                first.get_or_insert(operand);
            }
            match self.next() {
                Tok::Space => continue,
                Tok::Right | Tok::RParen => self.at -= 1,
                Tok::Pipe => {}
                tok => return Err(format!("unexpected {} in operand", describe(&tok))),
            }
            break;
        }
        first.ok_or_else(|| "empty command".to_string())
    }

    /// A term and any `.field` chain after it.
    fn operand(&mut self) -> Result<Option<Tok>, String> {
        let Some(term) = self.term()? else {
            return Ok(None);
        };
        if *self.peek() == Tok::Field {
            while *self.peek() == Tok::Field {
                self.next();
            }
            if matches!(
                term,
                Tok::Bool | Tok::Str | Tok::Number(_) | Tok::Nil | Tok::Dot | Tok::CharConst
            ) {
                return Err("unexpected . after term".into());
            }
            return Ok(Some(Tok::Field));
        }
        Ok(Some(term))
    }

    fn term(&mut self) -> Result<Option<Tok>, String> {
        let tok = self.next_non_space();
        match &tok {
            Tok::Ident(name) => {
                if !FUNCTIONS.contains(&name.as_str()) {
                    return Err(format!("function {name:?} not defined"));
                }
            }
            Tok::Variable(name) => {
                if !self.vars.iter().any(|v| v == name) {
                    return Err(format!("undefined variable {name:?}"));
                }
            }
            Tok::LParen => {
                self.enter()?;
                self.pipeline("parenthesized pipeline", false)?;
                self.nesting -= 1;
            }
            Tok::Dot
            | Tok::Nil
            | Tok::Field
            | Tok::Bool
            | Tok::CharConst
            | Tok::Number(_)
            | Tok::Str => {}
            _ => {
                self.at -= 1;
                return Ok(None);
            }
        }
        Ok(Some(tok))
    }
}

fn describe(tok: &Tok) -> String {
    match tok {
        Tok::Keyword(k) => format!("<{k}>"),
        Tok::Variable(v) | Tok::Ident(v) | Tok::Number(v) => format!("{v:?}"),
        Tok::Char(c) => format!("{c:?}"),
        Tok::Right => "\"}}\"".into(),
        Tok::Eof => "EOF".into(),
        other => format!("{other:?}"),
    }
}

/// Checks that `text` parses as a Prometheus alert template; the error says what is wrong.
pub fn check_alert_template(text: &str) -> Result<(), String> {
    if text.len() > TEMPLATE_BYTES_MAX {
        return Err(format!(
            "{} bytes, at most {TEMPLATE_BYTES_MAX} allowed",
            text.len()
        ));
    }
    // Fast path: no action at all (the common case for plain values).
    if !text.contains("{{") {
        return Ok(());
    }
    let toks = Lexer {
        src: text,
        pos: 0,
        paren_depth: 0,
        toks: Vec::new(),
    }
    .run()?;
    let mut parser = Parser {
        toks,
        at: 0,
        vars: PREDECLARED.iter().map(|v| v.to_string()).collect(),
        range_depth: 0,
        nesting: 0,
    };
    parser.parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Ok(())` parses; `Err(s)`: refused with an error containing s.
    fn check(text: &str, expected: Result<(), &str>) {
        match (check_alert_template(text), expected) {
            (Ok(()), Ok(())) => {}
            (Err(error), Err(needle)) => {
                assert!(
                    error.contains(needle),
                    "{text:?}: error {error:?} lacks {needle:?}"
                )
            }
            (got, want) => panic!("{text:?}: got {got:?}, want {want:?}"),
        }
    }

    // Goal: the accept/refuse verdicts of promtool 2.42's template check on the constructs
    // people write (each verdict below was observed with promtool; the rule-file table in
    // raft/tests/integration/rule_file.rs re-checks a sample against promtool itself).
    // Method: one table through `check`.
    #[test]
    fn templates() {
        check("plain text }} too", Ok(()));
        check(
            "{{ $labels.job }} {{ $value | humanize }} {{ printf \"%.2f\" $value }}",
            Ok(()),
        );
        check("{{ $labels.job\n }}", Ok(()));
        check("{{ .Labels.job }} {{ (.Labels).job }} {{ $ }} {{ .5 }} {{ nil }} {{ 'a' }} {{ `raw` }}", Ok(()));
        check(
            "{{ if eq 1 2 }}a{{ else if true }}b{{ else }}c{{ end }}",
            Ok(()),
        );
        check(
            "{{ range $i, $v := . }}{{ $v }}{{ break }}{{ else }}none{{ end }}",
            Ok(()),
        );
        check("{{ $x := 1 }}{{ $x }}{{ $x = 2 }}", Ok(()));
        check("{{/* hi */}}x{{- /* hi */ -}}{{- $value -}}", Ok(()));
        check(
            "{{ define \"x\" }}y{{ end }}{{ template \"x\" }}{{ template \"nosuch\" . }}",
            Ok(()),
        );
        check("{{ $value | }}", Ok(()));
        check("{{ $value 1 }}{{ 1 2 }}", Ok(()));
        check(
            "{{ query \"up\" | first | value | humanizeDuration }}",
            Ok(()),
        );
        check("{{ $labels.job ", Err("unclosed action"));
        check("{{}}", Err("missing value for command"));
        check("{{ nosuch 1 }}", Err("function \"nosuch\" not defined"));
        check("{{ é }}", Err("function \"é\" not defined"));
        check("{{ $nosuch }}", Err("undefined variable \"$nosuch\""));
        check(
            "{{ define \"x\" }}{{ $labels }}{{ end }}",
            Err("undefined variable \"$labels\""),
        );
        check(
            "{{ if true }}{{ $y := 1 }}{{ end }}{{ $y }}",
            Err("undefined variable \"$y\""),
        );
        check("{{ end }}", Err("unexpected {{end}}"));
        check("{{ else }}", Err("unexpected {{else}}"));
        check("{{ if true }}x", Err("unexpected EOF"));
        check("{{ if }}x{{ end }}", Err("missing value for if"));
        check("{{ break }}", Err("{{break}} outside {{range}}"));
        check(
            "{{ range . }}{{ else }}{{ continue }}{{ end }}",
            Err("{{continue}} outside {{range}}"),
        );
        check(
            "{{ with $value }}x{{ else with 1 }}y{{ end }}",
            Err("unexpected <with> in else"),
        );
        check("{{ $labels.job-1 }}", Err("bad character '-'"));
        check(
            "{{/* hi */ x}}",
            Err("comment ends before closing delimiter"),
        );
        check("{{/* hi ", Err("unclosed comment"));
        check("{{ \"abc }}", Err("unterminated quoted string"));
        check("{{ 'a }}", Err("unterminated character constant"));
        check("{{ `a }}", Err("unterminated raw quoted string"));
        check("{{ (1 }}", Err("unclosed left paren"));
        check("{{ 1) }}", Err("unexpected right paren"));
        check(
            &"{{ if 1 }}".repeat(NESTING_MAX + 1),
            Err("nested more than"),
        );
        check("{{ | $value }}", Err("unexpected Pipe in command"));
        check(
            "{{ $value | 1 }}",
            Err("non executable command in pipeline stage 2"),
        );
        check("{{ ! }}", Err("unexpected '!' in command"));
        check("{{ 1a }}", Err("bad number syntax"));
        check("{{-$value}}", Err("illegal number syntax"));
        check("{{ printf \"%s\" if }}", Err("unexpected <if> in operand"));
        check("{{ template $x }}", Err("in template clause"));
        check("{{ $a, $b := 1 }}", Err("too many declarations in command"));
        check(
            "{{ range $a, $b, $c := . }}{{end}}",
            Err("too many declarations in range"),
        );
        check("{{ \u{1} }}", Err("unrecognized character"));
    }
}
