//! A table as a group's `invalidate` entry names it, read as PostgreSQL reads it: `name`,
//! `schema.name`, or either part quoted (`"Users"`, `app."Order Lines"`). An unquoted part with
//! an upper-case letter is refused, since PostgreSQL would fold it to another table's name.

/// A table as the config names it, each part as PostgreSQL has it (folded or quoted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    pub schema: Option<String>,
    pub name: String,
}

/// `"x"` with inner quotes doubled: an identifier PostgreSQL reads back exactly.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `'x'` with inner quotes doubled.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl TableName {
    pub fn parse(table: &str) -> Result<TableName, String> {
        let bad = |why: String| Err(format!("table {table:?}: {why}"));
        let mut parts = Vec::new();
        let mut rest = table;
        loop {
            let (part, after) = if let Some(quoted) = rest.strip_prefix('"') {
                // Up to the closing quote; `""` inside is one quote.
                let mut out = String::new();
                let mut chars = quoted.char_indices().peekable();
                let mut end = None;
                while let Some((i, c)) = chars.next() {
                    if c == '"' {
                        if chars.peek().map(|&(_, c)| c) == Some('"') {
                            chars.next();
                            out.push('"');
                        } else {
                            end = Some(i + 1);
                            break;
                        }
                    } else {
                        out.push(c);
                    }
                }
                let Some(end) = end else {
                    return bad("a quoted name has no closing quote".into());
                };
                if out.is_empty() || out.contains('\0') {
                    return bad("a quoted name is empty or has a NUL".into());
                }
                (out, &quoted[end..])
            } else {
                let len = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$'))
                    .unwrap_or(rest.len());
                let part = &rest[..len];
                if !part
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                {
                    return bad(
                        "expected a name (letters, digits, _), `schema.name`, or a quoted name"
                            .into(),
                    );
                }
                if part.bytes().any(|b| b.is_ascii_uppercase()) {
                    return bad(format!(
                        "PostgreSQL folds the unquoted name {part} to {}, another table's name; \
                         quote it for the table {part} (table = '\"{part}\"'), or write it in \
                         lower case",
                        part.to_ascii_lowercase()
                    ));
                }
                (part.to_owned(), &rest[len..])
            };
            if part.len() > 63 {
                return bad(format!("{part:?} is longer than PostgreSQL's 63 bytes"));
            }
            parts.push(part);
            match after.strip_prefix('.') {
                Some(next) if parts.len() < 2 => rest = next,
                Some(_) => return bad("at most two parts: schema.name".into()),
                None if after.is_empty() => break,
                None => return bad(format!("unexpected {after:?}")),
            }
        }
        let name = parts.pop().unwrap_or_default();
        Ok(TableName {
            schema: parts.pop(),
            name,
        })
    }

    /// The name in SQL, every part quoted.
    pub fn sql(&self) -> String {
        match &self.schema {
            Some(s) => format!("{}.{}", quote_ident(s), quote_ident(&self.name)),
            None => quote_ident(&self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_read_as_postgresql_reads_them() {
        let t = |s| TableName::parse(s).map(|t| t.sql());
        assert_eq!(t("users"), Ok("\"users\"".into()));
        assert_eq!(t("public.users"), Ok("\"public\".\"users\"".into()));
        assert_eq!(t("\"Users\""), Ok("\"Users\"".into()));
        assert_eq!(
            t("app.\"Order \"\"Lines\"\"\""),
            Ok("\"app\".\"Order \"\"Lines\"\"\"".into())
        );
        assert_eq!(t("_t1$"), Ok("\"_t1$\"".into()));
        let upper = TableName::parse("Users").unwrap_err();
        assert!(
            upper.contains("folds") && upper.contains("users"),
            "{upper}"
        );
        for bad in [
            "",
            "users; DROP TABLE x",
            "a.b.c",
            "1users",
            "us-ers",
            "\"unclosed",
            "\"\"",
            "users.",
            ".users",
            " users",
        ] {
            assert!(TableName::parse(bad).is_err(), "{bad}");
        }
        assert!(TableName::parse(&"a".repeat(64)).is_err());
    }
}
