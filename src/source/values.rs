//! A group's value from its query's one column, whatever its type: `bytea` as is, text types
//! as UTF-8, `json`/`jsonb` as JSON text, integers, numerics, floats and booleans as their
//! text form (so `scores` answers `630`). Other types are refused, with the cast to use.
//!
//! tokio-postgres reads results in PostgreSQL's binary format; [`Raw`] takes the bytes of any
//! type, and [`to_bytes`] turns them into the value.

use bytes::Bytes;
use tokio_postgres::types::{FromSql, Type};

/// The column's bytes, whatever its type.
pub struct Raw<'a>(pub &'a [u8]);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// The `Content-Type` a column of this type answers with, or `None` when the type is not one
/// a value can be read from.
pub fn content_type(ty: &Type) -> Option<&'static str> {
    Some(match *ty {
        Type::BYTEA => "application/octet-stream",
        Type::JSON | Type::JSONB => "application/json",
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
            "text/plain; charset=utf-8"
        }
        Type::INT2
        | Type::INT4
        | Type::INT8
        | Type::NUMERIC
        | Type::FLOAT4
        | Type::FLOAT8
        | Type::BOOL => "text/plain; charset=utf-8",
        _ => return None,
    })
}

/// Why a column cannot be a group's value, with the cast that fixes it.
pub fn unsupported(ty: &Type) -> String {
    format!(
        "its query returns a column of type {ty}, which is not a value type (bytea, text, \
         varchar, json, jsonb, integers, numeric, float, boolean): cast it, e.g. `SELECT col::text`"
    )
}

fn bad(ty: &Type) -> String {
    format!("malformed {ty} value")
}

/// The value of a column of type `ty` whose binary form is `raw`.
pub fn to_bytes(ty: &Type, raw: &[u8]) -> Result<Bytes, String> {
    let text = |s: String| Ok(Bytes::from(s.into_bytes()));
    match *ty {
        Type::BYTEA
        | Type::TEXT
        | Type::VARCHAR
        | Type::BPCHAR
        | Type::NAME
        | Type::UNKNOWN
        | Type::JSON => Ok(Bytes::copy_from_slice(raw)),
        // jsonb's binary form is a version byte (1) and the JSON text.
        Type::JSONB => match raw.split_first() {
            Some((1, json)) => Ok(Bytes::copy_from_slice(json)),
            _ => Err(bad(ty)),
        },
        Type::INT2 => text(i16::from_be_bytes(raw.try_into().map_err(|_| bad(ty))?).to_string()),
        Type::INT4 => text(i32::from_be_bytes(raw.try_into().map_err(|_| bad(ty))?).to_string()),
        Type::INT8 => text(i64::from_be_bytes(raw.try_into().map_err(|_| bad(ty))?).to_string()),
        Type::FLOAT4 => text(f32::from_be_bytes(raw.try_into().map_err(|_| bad(ty))?).to_string()),
        Type::FLOAT8 => text(f64::from_be_bytes(raw.try_into().map_err(|_| bad(ty))?).to_string()),
        Type::BOOL => match raw {
            [0] => text("false".into()),
            [_] => text("true".into()),
            _ => Err(bad(ty)),
        },
        Type::NUMERIC => numeric(raw).map(|s| Bytes::from(s.into_bytes())),
        _ => Err(unsupported(ty)),
    }
}

/// PostgreSQL's binary `numeric` (ndigits, weight, sign, dscale, then base-10000 digits) as
/// its text form: `630`, `-1.50`, `0.0001`, `NaN`, `Infinity`.
fn numeric(raw: &[u8]) -> Result<String, String> {
    let word = |i: usize| -> Result<u16, String> {
        raw.get(i..i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "malformed numeric value".to_owned())
    };
    let (ndigits, weight, sign, dscale) = (
        word(0)? as usize,
        word(2)? as i16,
        word(4)?,
        word(6)? as usize,
    );
    match sign {
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        0x0000 | 0x4000 => {}
        _ => return Err("malformed numeric value".into()),
    }
    let digits = (0..ndigits)
        .map(|i| word(8 + 2 * i))
        .collect::<Result<Vec<_>, _>>()?;
    let digit = |pos: i32| -> u16 {
        // The base-10000 digit at `pos` (0: the units group, 1: tens of thousands, -1: first
        // fractional group ...).
        let index = i32::from(weight) - pos;
        usize::try_from(index)
            .ok()
            .and_then(|i| digits.get(i).copied())
            .unwrap_or(0)
    };
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        for pos in (0..=i32::from(weight)).rev() {
            if pos == i32::from(weight) {
                out.push_str(&digit(pos).to_string());
            } else {
                out.push_str(&format!("{:04}", digit(pos)));
            }
        }
    }
    if dscale > 0 {
        out.push('.');
        let mut frac = String::new();
        let groups = dscale.div_ceil(4) as i32;
        for k in 1..=groups {
            frac.push_str(&format!("{:04}", digit(-k)));
        }
        frac.truncate(dscale);
        out.push_str(&frac);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The binary form of a numeric: (weight, sign, dscale, digits).
    fn num(weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [digits.len() as u16, weight as u16, sign, dscale] {
            v.extend_from_slice(&w.to_be_bytes());
        }
        for d in digits {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    #[test]
    fn numerics_read_as_postgresql_prints_them() {
        assert_eq!(numeric(&num(0, 0, 0, &[630])).unwrap(), "630");
        assert_eq!(
            numeric(&num(1, 0, 3, &[1, 2345, 6780])).unwrap(),
            "12345.678"
        );
        assert_eq!(numeric(&num(0, 0x4000, 2, &[1, 5000])).unwrap(), "-1.50");
        assert_eq!(numeric(&num(-1, 0, 4, &[1])).unwrap(), "0.0001");
        assert_eq!(numeric(&num(0, 0, 0, &[])).unwrap(), "0");
        assert_eq!(numeric(&num(2, 0, 0, &[1])).unwrap(), "100000000");
        assert_eq!(numeric(&num(0, 0xC000, 0, &[])).unwrap(), "NaN");
        assert!(numeric(&[0, 1]).is_err());
    }

    #[test]
    fn values_of_every_supported_type() {
        assert_eq!(to_bytes(&Type::INT4, &630i32.to_be_bytes()).unwrap(), "630");
        assert_eq!(to_bytes(&Type::INT8, &(-5i64).to_be_bytes()).unwrap(), "-5");
        assert_eq!(to_bytes(&Type::BOOL, &[1]).unwrap(), "true");
        assert_eq!(
            to_bytes(&Type::FLOAT8, &1.5f64.to_be_bytes()).unwrap(),
            "1.5"
        );
        assert_eq!(
            to_bytes(&Type::JSONB, b"\x01{\"a\":1}").unwrap(),
            "{\"a\":1}"
        );
        assert_eq!(to_bytes(&Type::TEXT, "€".as_bytes()).unwrap(), "€");
        assert!(to_bytes(&Type::INT4, &[1, 2]).is_err());
        assert!(
            to_bytes(&Type::UUID, &[0; 16])
                .unwrap_err()
                .contains("cast it")
        );
        assert_eq!(content_type(&Type::JSONB), Some("application/json"));
        assert_eq!(content_type(&Type::UUID), None);
    }
}
