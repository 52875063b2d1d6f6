//! `vars` expressions with lua-resty-expr (v1) semantics.
//!
//! Shape: `[]` (always true), `[expr, expr, ...]` (AND), or
//! `["AND" | "OR" | "!AND" | "!OR", sub, sub, ...]` (at least two subs), nestable.
//! A leaf is `[var, op, value]`, `[var, "!", op, value]` (negated) or the legacy
//! `[var, value]` (means `==`; like lua-resty-expr the value is lowercased).
//!
//! Request vars are strings (or absent), exactly like `ngx.var`, so:
//! * `==`/`~=` with a string compare strings; with a number, the var goes through
//!   Lua `tonumber` first (not a number: `==` false, `~=` true); with `null` they
//!   test absence; with a bool/array/object `==` is false and `~=` true.
//! * Absent var: `==` false, `~=` true, `>`/`<`/`>=`/`<=`/`~~`/`~*`/`in`/`ipmatch` false.
//! * `>`, `>=`, `<`, `<=`: both sides through `tonumber`, false if either is not numeric.
//! * `~~` / `~*`: unanchored regex search (case-insensitive for `~*`).
//! * `in`: value must be an array; true if one of its *string* elements equals the
//!   var (Lua compares `"1" == 1` as false, so number elements never match).
//! * `has`: lua-resty-expr only matches when the var is a table; request vars are
//!   strings, so `has` is always false (and `!has` always true).
//! * `ipmatch`: value is an address/CIDR or a list of them; var parsed as an IP.

use super::ip::IpSet;
use super::VarSource;
use regex::{Regex, RegexBuilder};
use serde_json::Value;
use std::net::IpAddr;

pub(crate) enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    NotAnd(Vec<Expr>),
    NotOr(Vec<Expr>),
    Leaf {
        var: Box<str>,
        cmp: Cmp,
        negate: bool,
    },
}

#[derive(Clone, Copy)]
pub(crate) enum NumOp {
    Gt,
    Ge,
    Lt,
    Le,
}

pub(crate) enum Cmp {
    EqStr(Box<str>),
    EqNum(f64),
    /// `== null`: true when the var is absent.
    EqNil,
    NeStr(Box<str>),
    NeNum(f64),
    /// `~= null`: true when the var is present.
    NeNil,
    /// Constant result regardless of the var (e.g. `==` against a bool, `has`).
    Const(bool),
    /// Numeric comparison; `None` when the right side is not a number (always false).
    Num(NumOp, Option<f64>),
    Regex(Regex),
    In(Vec<Box<str>>),
    IpMatch(IpSet),
}

/// Compiles the top-level `vars` value. `Ok(None)` means "always true".
pub(crate) fn compile_top(v: &Value) -> Result<Option<Expr>, String> {
    let arr = match v {
        Value::Null => return Ok(None),
        Value::Array(a) => a,
        _ => return Err("vars must be an array".into()),
    };
    if arr.is_empty() {
        return Ok(None);
    }
    if !arr[0].is_array() {
        let is_logic = arr[0].as_str().and_then(logic_op).is_some();
        if !is_logic {
            return Err("rule should be wrapped inside brackets".into());
        }
    }
    compile(v).map(Some)
}

fn logic_op(s: &str) -> Option<fn(Vec<Expr>) -> Expr> {
    let f: fn(Vec<Expr>) -> Expr = if s.eq_ignore_ascii_case("AND") {
        Expr::And
    } else if s.eq_ignore_ascii_case("OR") {
        Expr::Or
    } else if s.eq_ignore_ascii_case("!AND") {
        Expr::NotAnd
    } else if s.eq_ignore_ascii_case("!OR") {
        Expr::NotOr
    } else {
        return None;
    };
    Some(f)
}

fn compile(v: &Value) -> Result<Expr, String> {
    let Value::Array(rules) = v else {
        return Err(format!("expression must be an array, got {v}"));
    };
    if rules.is_empty() {
        return Err("rule too short".into());
    }
    if rules[0].is_array() {
        return rules
            .iter()
            .map(compile)
            .collect::<Result<_, _>>()
            .map(Expr::And);
    }
    if let Some(make) = rules[0].as_str().and_then(logic_op) {
        if rules.len() <= 2 {
            return Err(format!(
                "rule too short: logical operator {} needs at least two sub-expressions",
                rules[0]
            ));
        }
        let subs = rules[1..].iter().map(compile).collect::<Result<_, _>>()?;
        return Ok(make(subs));
    }
    compile_leaf(rules)
}

const OPS: &[&str] = &[
    "==", "~=", ">", ">=", "<", "<=", "~~", "~*", "in", "has", "ipmatch",
];

fn compile_leaf(e: &[Value]) -> Result<Expr, String> {
    let (var, op, rv, negate) = match e.len() {
        4 => {
            if e[1].as_str() != Some("!") {
                return Err(format!("bad 'not' expression {}", Value::from(e.to_vec())));
            }
            (&e[0], &e[2], Some(&e[3]), true)
        }
        3 => (&e[0], &e[1], Some(&e[2]), false),
        2 => (&e[0], &e[1], None, false),
        n => {
            return Err(format!(
                "invalid expression {}: expected 3 or 4 elements, got {n}",
                Value::from(e.to_vec())
            ))
        }
    };
    let var = var
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("variable name must be a non-empty string, got {var}"))?;

    // Operator (lowercased like lua-resty-expr).
    let op_lower = match op {
        Value::String(s) => s.to_ascii_lowercase(),
        Value::Number(n) if rv.is_none() => n.to_string(),
        _ => return Err(format!("operator must be a string, got {op}")),
    };
    let (op, owned_rv);
    let rv: &Value = match rv {
        Some(rv) => {
            op = op_lower;
            rv
        }
        None => {
            if OPS.contains(&op_lower.as_str()) {
                return Err(format!(
                    "operator {op_lower:?} on {var:?} is missing its value"
                ));
            }
            // Legacy two-element form `[var, value]`: `==` against the
            // (lowercased, stringified) value, exactly as lua-resty-expr does.
            owned_rv = Value::String(op_lower);
            op = "==".to_owned();
            &owned_rv
        }
    };
    if !OPS.contains(&op.as_str()) {
        return Err(format!("invalid operator '{op}'"));
    }

    let cmp = match op.as_str() {
        "==" => match rv {
            Value::String(s) => Cmp::EqStr(s.as_str().into()),
            Value::Number(n) => Cmp::EqNum(n.as_f64().unwrap_or(f64::NAN)),
            Value::Null => Cmp::EqNil,
            _ => Cmp::Const(false),
        },
        "~=" => match rv {
            Value::String(s) => Cmp::NeStr(s.as_str().into()),
            Value::Number(n) => Cmp::NeNum(n.as_f64().unwrap_or(f64::NAN)),
            Value::Null => Cmp::NeNil,
            _ => Cmp::Const(true),
        },
        ">" | ">=" | "<" | "<=" => {
            let nop = match op.as_str() {
                ">" => NumOp::Gt,
                ">=" => NumOp::Ge,
                "<" => NumOp::Lt,
                _ => NumOp::Le,
            };
            let r = match rv {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => lua_tonumber(s),
                _ => None,
            };
            Cmp::Num(nop, r)
        }
        "~~" | "~*" => {
            let pat = match rv {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return Err(format!("regex for {op:?} must be a string, got {rv}")),
            };
            let re = RegexBuilder::new(&pat)
                .case_insensitive(op == "~*")
                .build()
                .map_err(|err| format!("invalid regex {pat:?}: {err}"))?;
            Cmp::Regex(re)
        }
        "in" => match rv {
            Value::Array(items) => Cmp::In(
                items
                    .iter()
                    .filter_map(|v| v.as_str().map(Into::into))
                    .collect(),
            ),
            _ => Cmp::Const(false),
        },
        "has" => Cmp::Const(false),
        "ipmatch" => {
            let set = match rv {
                Value::String(s) => IpSet::parse([s.as_str()])?,
                Value::Array(items) => {
                    let mut strs = Vec::with_capacity(items.len());
                    for it in items {
                        strs.push(
                            it.as_str()
                                .ok_or_else(|| format!("ipmatch: invalid address {it}"))?,
                        );
                    }
                    IpSet::parse(strs)?
                }
                _ => return Err(format!("ipmatch value must be a string or array, got {rv}")),
            };
            Cmp::IpMatch(set)
        }
        _ => unreachable!("operator list checked above"),
    };
    Ok(Expr::Leaf {
        var: var.into(),
        cmp,
        negate,
    })
}

/// Lua 5.1 `tonumber` on a string: surrounding whitespace allowed, decimal or
/// exponent notation, `0x` hex; no `inf`/`nan`.
pub(crate) fn lua_tonumber(s: &str) -> Option<f64> {
    let t = s.trim_matches(|c: char| matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c'));
    if t.is_empty() {
        return None;
    }
    let (neg, body) = match t.as_bytes()[0] {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    if let Some(hex) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let v = hex.bytes().fold(0f64, |acc, b| {
            acc * 16.0 + f64::from((b as char).to_digit(16).unwrap_or(0))
        });
        return Some(if neg { -v } else { v });
    }
    if !t
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E'))
    {
        return None;
    }
    t.parse::<f64>().ok()
}

impl Expr {
    pub(crate) fn eval(&self, src: &dyn VarSource) -> bool {
        match self {
            Expr::And(v) => v.iter().all(|e| e.eval(src)),
            Expr::Or(v) => v.iter().any(|e| e.eval(src)),
            Expr::NotAnd(v) => !v.iter().all(|e| e.eval(src)),
            Expr::NotOr(v) => !v.iter().any(|e| e.eval(src)),
            Expr::Leaf { var, cmp, negate } => {
                let val = src.var(var);
                cmp.eval(val.as_deref()) != *negate
            }
        }
    }
}

impl Cmp {
    fn eval(&self, l: Option<&str>) -> bool {
        match self {
            Cmp::EqStr(r) => l == Some(&**r),
            Cmp::EqNum(r) => l.and_then(lua_tonumber).is_some_and(|v| v == *r),
            Cmp::EqNil => l.is_none(),
            Cmp::NeStr(r) => l != Some(&**r),
            Cmp::NeNum(r) => l.and_then(lua_tonumber).is_none_or(|v| v != *r),
            Cmp::NeNil => l.is_some(),
            Cmp::Const(b) => *b,
            Cmp::Num(op, r) => {
                let (Some(l), Some(r)) = (l.and_then(lua_tonumber), *r) else {
                    return false;
                };
                match op {
                    NumOp::Gt => l > r,
                    NumOp::Ge => l >= r,
                    NumOp::Lt => l < r,
                    NumOp::Le => l <= r,
                }
            }
            Cmp::Regex(re) => l.is_some_and(|l| re.is_match(l)),
            Cmp::In(items) => l.is_some_and(|l| items.iter().any(|i| &**i == l)),
            Cmp::IpMatch(set) => l
                .and_then(|l| l.trim().parse::<IpAddr>().ok())
                .is_some_and(|ip| set.contains(ip)),
        }
    }
}
