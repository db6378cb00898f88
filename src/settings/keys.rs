//! Keys: the fields a settings struct reads (serde's derive knows them), the known key
//! nearest a misspelt one, and serde's messages in the words a user knows.

use serde::Deserialize;

/// The field names serde's derive passes to `deserialize_struct`.
pub fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    // The deserializer always fails once it has the names; the failure is the point.
    let _ = T::deserialize(FieldNames(&mut fields));
    fields
}

struct FieldNames<'a>(&'a mut &'static [&'static str]);

impl<'de> serde::Deserializer<'de> for FieldNames<'_> {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(serde::de::Error::custom("field names recorded"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// The known key nearest to a misspelt one, if near enough to be a typo: one edit for short
/// keys, two for longer ones (a transposition counts as one edit).
pub fn closest(key: &str, known: &[&'static str]) -> Option<&'static str> {
    let limit = if key.chars().count() <= 4 { 1 } else { 2 };
    known
        .iter()
        .map(|k| (strsim::osa_distance(key, k), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// serde names the expected type (`expected struct RawSet`); users know it as a mapping.
pub fn hide_raw_names(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find("struct Raw") {
        out.push_str(&rest[..start]);
        out.push_str("a mapping");
        let name = &rest[start + "struct ".len()..];
        let len = name
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(name.len());
        rest = &name[len..];
    }
    out.push_str(rest);
    out
}
